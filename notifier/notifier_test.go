package notifier_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/migrations"
	"github.com/notifyd/notifyd/migrations/pgtest"
	"github.com/notifyd/notifyd/notifier"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// testBundle is what most API tests need: a server over a fresh database and keys.
type testBundle struct {
	pool     *pgxpool.Pool
	svc      *notifier.Service
	server   *httptest.Server
	sendKey  string
	adminKey string
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	pool := pgtest.NewPool(t)
	svc := notifier.NewService(pool, nil, &notifier.ServiceOpts{RequiredCategories: []string{"security"}})
	srv := httptest.NewServer(notifier.NewServer(svc, nil, &notifier.ServerOpts{
		Ready: func(ctx context.Context) error { return migrations.Check(ctx, pool) },
	}))
	t.Cleanup(srv.Close)
	b := &testBundle{pool: pool, svc: svc, server: srv}
	var err error
	if _, b.sendKey, err = svc.CreateAPIKey(context.Background(), "sender", []string{notifier.ScopeSend}); err != nil {
		t.Fatal(err)
	}
	if _, b.adminKey, err = svc.CreateAPIKey(context.Background(), "operator", []string{notifier.ScopeAdmin}); err != nil {
		t.Fatal(err)
	}
	return b
}

// response is a decoded API answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("response is not a JSON object: %v: %s", err, r.body)
	}
	return m
}

// problemFields returns the field names of a problem+json answer.
func (r response) problemFields(t *testing.T) []string {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q, want application/problem+json; body %s", ct, r.body)
	}
	var p struct {
		Status int `json:"status"`
		Errors []struct {
			Field string `json:"field"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatal(err)
	}
	if p.Status != r.status {
		t.Fatalf("problem status %d differs from HTTP status %d", p.Status, r.status)
	}
	var fields []string
	for _, e := range p.Errors {
		fields = append(fields, e.Field)
	}
	return fields
}

func (b *testBundle) do(t *testing.T, method, path, key string, body any) response {
	t.Helper()
	var reader io.Reader
	switch v := body.(type) {
	case nil:
	case string:
		reader = strings.NewReader(v)
	case []byte:
		reader = bytes.NewReader(v)
	default:
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		reader = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, b.server.URL+path, reader)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: raw}
}

func (b *testBundle) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if r := b.do(t, "GET", "/healthz", "", nil); r.status != 200 {
		t.Fatalf("healthz = %d", r.status)
	}
	if r := b.do(t, "GET", "/readyz", "", nil); r.status != 200 {
		t.Fatalf("readyz = %d %s", r.status, r.body)
	}
	// A schema behind this binary is not ready.
	if _, err := b.pool.Exec(context.Background(), "DELETE FROM notifyd_migrations WHERE version = (SELECT max(version) FROM notifyd_migrations)"); err != nil {
		t.Fatal(err)
	}
	if r := b.do(t, "GET", "/readyz", "", nil); r.status != 503 {
		t.Fatalf("readyz with an old schema = %d, want 503", r.status)
	}
}

func TestAuthAndScopes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	revoked, revokedSecret, err := b.svc.CreateAPIKey(ctx, "old", []string{notifier.ScopeSend})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.svc.RevokeAPIKey(ctx, revoked.ID); err != nil {
		t.Fatal(err)
	}
	tampered := b.sendKey[:len(b.sendKey)-2] + "xx"
	if tampered == b.sendKey {
		tampered = b.sendKey[:len(b.sendKey)-2] + "yy"
	}
	tests := []struct {
		name string
		key  string
		want int
	}{
		{"no key", "", 401},
		{"not a notifyd key", "hello", 401},
		{"tampered secret", tampered, 401},
		{"revoked key", revokedSecret, 401},
		{"admin key on /v1", b.adminKey, 403},
		{"send key", b.sendKey, 404}, // authorised; the recipient does not exist
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.do(t, "GET", "/v1/recipients/nobody", tt.key, nil)
			if r.status != tt.want {
				t.Fatalf("status = %d, want %d: %s", r.status, tt.want, r.body)
			}
			r.problemFields(t)
		})
	}
	if n := b.count(t, "SELECT count(*) FROM api_keys WHERE secret_hash::text LIKE '%' || $1 || '%'", b.sendKey); n != 0 {
		t.Fatal("a key secret is stored in clear")
	}
}

func TestAPIKeyNamesAreUniqueAmongActiveKeys(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	_, _, err := b.svc.CreateAPIKey(ctx, "sender", []string{notifier.ScopeSend})
	if notifier.ErrorCode(err) != notifier.ECONFLICT {
		t.Fatalf("duplicate name: %v, want conflict", err)
	}
	if _, err := b.svc.RevokeAPIKey(ctx, "sender"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.svc.CreateAPIKey(ctx, "sender", []string{notifier.ScopeSend}); err != nil {
		t.Fatalf("name of a revoked key should be reusable: %v", err)
	}
	if _, _, err := b.svc.CreateAPIKey(ctx, "x", []string{"root"}); notifier.ErrorCode(err) != notifier.EINVALID {
		t.Fatalf("unknown scope: %v, want invalid", err)
	}
}
