package adminui

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/notifyd/notifyd/notifier"
)

// Cookie names. Both are HttpOnly, SameSite=Strict and scoped to /admin.
const (
	sessionCookie = "notifyd_admin"
	// loginCookie carries the sign-in form's CSRF token before there is a
	// session (a double-submit token: the form's hidden field must match it).
	loginCookie = "notifyd_admin_login"
	csrfField   = "csrf_token"
)

// session is a signed-in operator: the API key they signed in with. The key is
// read afresh on every request, so a revoked key's sessions stop at once.
type session struct {
	KeyID   string
	KeyName string
	// CSRF is the token every POST form of this session must carry.
	CSRF string
}

// newSecret returns 256 random bits, base64url encoded.
func newSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashSecret(secret string) []byte {
	h := sha256.Sum256([]byte("notifyd-admin-session:" + secret))
	return h[:]
}

// csrfToken derives a session's CSRF token from its secret: it needs no storage,
// and the stored hash does not reveal it.
func csrfToken(secret string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte("notifyd-admin-csrf"))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// tokensEqual compares two tokens in constant time; an empty token never matches.
func tokensEqual(given, want string) bool {
	if given == "" || want == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(given), []byte(want)) == 1
}

// isHTTPS reports whether the browser reached us over TLS, directly or through a
// proxy that says so.
func isHTTPS(r *http.Request) bool {
	return r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
}

func (h *handler) setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge time.Duration) {
	c := &http.Cookie{
		Name:     name,
		Value:    value,
		Path:     "/admin",
		HttpOnly: true,
		Secure:   isHTTPS(r),
		SameSite: http.SameSiteStrictMode,
	}
	if maxAge > 0 {
		c.MaxAge = int(maxAge / time.Second)
		c.Expires = time.Now().Add(maxAge)
	} else {
		c.MaxAge = -1
		c.Expires = time.Unix(1, 0)
	}
	http.SetCookie(w, c)
}

// createSession stores a new session for key and sets its cookie. Expired
// sessions are swept on the way: sign-ins are rare, so that is cheap enough.
func (h *handler) createSession(ctx context.Context, w http.ResponseWriter, r *http.Request, key *notifier.APIKey) error {
	secret := newSecret()
	// A sign-in always starts a new session: the browser's old one, if any, ends.
	var old []byte
	if c, err := r.Cookie(sessionCookie); err == nil && c.Value != "" {
		old = hashSecret(c.Value)
	}
	if _, err := h.pool.Exec(ctx, `DELETE FROM admin_sessions WHERE expires_at < now() OR id_hash = $1`, old); err != nil {
		return err
	}
	if _, err := h.pool.Exec(ctx, `INSERT INTO admin_sessions (id_hash, key_id, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))`,
		hashSecret(secret), key.ID, h.opts.SessionTTL.Seconds()); err != nil {
		return err
	}
	h.setCookie(w, r, sessionCookie, secret, h.opts.SessionTTL)
	h.setCookie(w, r, loginCookie, "", 0)
	return nil
}

// loadSession returns the request's session, or nil when there is none, it has
// expired, or its key has been revoked or lost the admin scope.
func (h *handler) loadSession(r *http.Request) (*session, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" || len(c.Value) > 100 {
		return nil, nil
	}
	s := &session{CSRF: csrfToken(c.Value)}
	err = h.pool.QueryRow(r.Context(), `SELECT k.id, k.name FROM admin_sessions s JOIN api_keys k ON k.id = s.key_id
		WHERE s.id_hash = $1 AND s.expires_at > now() AND k.revoked_at IS NULL AND $2 = ANY (k.scopes)`,
		hashSecret(c.Value), notifier.ScopeAdmin).Scan(&s.KeyID, &s.KeyName)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// deleteSession ends the request's session, if any, and clears the cookie.
func (h *handler) deleteSession(w http.ResponseWriter, r *http.Request) error {
	if c, err := r.Cookie(sessionCookie); err == nil && c.Value != "" {
		if _, err := h.pool.Exec(r.Context(), `DELETE FROM admin_sessions WHERE id_hash = $1`, hashSecret(c.Value)); err != nil {
			return err
		}
	}
	h.setCookie(w, r, sessionCookie, "", 0)
	return nil
}

// loginToken returns the sign-in form's CSRF token, setting its cookie when the
// browser has none yet.
func (h *handler) loginToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(loginCookie); err == nil && len(c.Value) >= 40 && len(c.Value) <= 100 {
		return c.Value
	}
	token := newSecret()
	h.setCookie(w, r, loginCookie, token, time.Hour)
	return token
}

// checkPost refuses a state-changing request that is cross-origin or lacks the
// expected CSRF token. want is the session's token (or the sign-in cookie's).
func (h *handler) checkPost(r *http.Request, want string) error {
	if err := h.crossOrigin.Check(r); err != nil {
		return err
	}
	if !tokensEqual(r.PostFormValue(csrfField), want) {
		return errors.New("missing or wrong CSRF token")
	}
	return nil
}
