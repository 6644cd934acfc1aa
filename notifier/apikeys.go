package notifier

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Scopes an API key can hold.
const (
	ScopeSend  = "send"  // /v1
	ScopeAdmin = "admin" // /admin
)

// APIKey is a key's public record; the secret is shown once, at creation.
type APIKey struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Scopes     []string   `json:"scopes"`
	CreatedAt  time.Time  `json:"created_at"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
}

// HasScope reports whether the key holds scope.
func (k *APIKey) HasScope(scope string) bool { return slices.Contains(k.Scopes, scope) }

// keyPrefix starts every secret so leaked keys are easy to find in code and logs.
const keyPrefix = "nfy_"

// CreateAPIKey stores a new key and returns it with its secret, which is not
// stored (only its SHA-256: keys are 256 random bits, so no slow hash is needed).
func (s *Service) CreateAPIKey(ctx context.Context, name string, scopes []string) (*APIKey, string, error) {
	problems := map[string]string{}
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 100 {
		problems["name"] = "must be 1 to 100 characters"
	}
	if len(scopes) == 0 {
		problems["scopes"] = "at least one of send, admin"
	}
	for _, sc := range scopes {
		if sc != ScopeSend && sc != ScopeAdmin {
			problems["scopes"] = "unknown scope " + sc + "; use send, admin"
		}
	}
	if err := Invalid(problems); err != nil {
		return nil, "", err
	}
	idBytes := make([]byte, 8)
	secretBytes := make([]byte, 32)
	_, _ = rand.Read(idBytes)
	_, _ = rand.Read(secretBytes)
	id := "k" + hex.EncodeToString(idBytes)
	secret := keyPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(secretBytes)
	hash := sha256.Sum256([]byte(secret))
	scopes = slices.Compact(slices.Sorted(slices.Values(scopes)))
	key := &APIKey{ID: id, Name: name, Scopes: scopes}
	err := s.pool.QueryRow(ctx, `INSERT INTO api_keys (id, name, secret_hash, scopes) VALUES ($1, $2, $3, $4)
		RETURNING created_at`, id, name, hash[:], scopes).Scan(&key.CreatedAt)
	if isUniqueViolation(err) {
		return nil, "", &Error{Code: ECONFLICT, Message: "an active key with this name exists", Fields: map[string]string{"name": "already used by an active key"}}
	}
	if err != nil {
		return nil, "", err
	}
	return key, secret, nil
}

// FindAPIKeys lists all keys, newest first.
func (s *Service) FindAPIKeys(ctx context.Context) ([]*APIKey, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, name, scopes, created_at, revoked_at, last_used_at FROM api_keys ORDER BY created_at DESC, id`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (*APIKey, error) {
		k := &APIKey{}
		return k, row.Scan(&k.ID, &k.Name, &k.Scopes, &k.CreatedAt, &k.RevokedAt, &k.LastUsedAt)
	})
}

// RevokeAPIKey revokes the key with this id or active name.
func (s *Service) RevokeAPIKey(ctx context.Context, idOrName string) (*APIKey, error) {
	k := &APIKey{}
	err := s.pool.QueryRow(ctx, `UPDATE api_keys SET revoked_at = now()
		WHERE (id = $1 OR name = $1) AND revoked_at IS NULL
		RETURNING id, name, scopes, created_at, revoked_at, last_used_at`, idOrName).
		Scan(&k.ID, &k.Name, &k.Scopes, &k.CreatedAt, &k.RevokedAt, &k.LastUsedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, Errorf(ENOTFOUND, "no active API key %q", idOrName)
	}
	return k, err
}

// Authenticate returns the active key for secret, or EUNAUTHORIZED.
func (s *Service) Authenticate(ctx context.Context, secret string) (*APIKey, error) {
	unauthorized := Errorf(EUNAUTHORIZED, "missing or invalid API key")
	rest, ok := strings.CutPrefix(secret, keyPrefix)
	if !ok {
		return nil, unauthorized
	}
	id, _, ok := strings.Cut(rest, "_")
	if !ok || len(id) != 17 {
		return nil, unauthorized
	}
	k := &APIKey{}
	var stored []byte
	err := s.pool.QueryRow(ctx, `SELECT id, name, scopes, created_at, last_used_at, secret_hash
		FROM api_keys WHERE id = $1 AND revoked_at IS NULL`, id).
		Scan(&k.ID, &k.Name, &k.Scopes, &k.CreatedAt, &k.LastUsedAt, &stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, unauthorized
	}
	if err != nil {
		return nil, err
	}
	given := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(given[:], stored) != 1 {
		return nil, unauthorized
	}
	// Touch last_used_at at most once a minute: a write per request would cost more
	// than the request.
	if k.LastUsedAt == nil || time.Since(*k.LastUsedAt) > time.Minute {
		_, _ = s.pool.Exec(ctx, `UPDATE api_keys SET last_used_at = now() WHERE id = $1`, k.ID)
	}
	return k, nil
}

type apiKeyContextKey struct{}

// APIKeyFrom returns the authenticated key of a request's context.
func APIKeyFrom(ctx context.Context) *APIKey {
	k, _ := ctx.Value(apiKeyContextKey{}).(*APIKey)
	return k
}

// requireScope authenticates the bearer key and checks it holds scope.
func requireScope(svc *Service, scope string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			auth := r.Header.Get("Authorization")
			token, ok := strings.CutPrefix(auth, "Bearer ")
			if !ok {
				w.Header().Set("WWW-Authenticate", `Bearer realm="notifyd"`)
				writeError(w, r, svc.logger, Errorf(EUNAUTHORIZED, "an Authorization: Bearer <API key> header is required"))
				return
			}
			key, err := svc.Authenticate(r.Context(), strings.TrimSpace(token))
			if err != nil {
				w.Header().Set("WWW-Authenticate", `Bearer realm="notifyd", error="invalid_token"`)
				writeError(w, r, svc.logger, err)
				return
			}
			if !key.HasScope(scope) {
				writeError(w, r, svc.logger, Errorf(EFORBIDDEN, "this API key lacks the %q scope", scope))
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), apiKeyContextKey{}, key)))
		})
	}
}
