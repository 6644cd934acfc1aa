package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/notifyd/notifyd/migrations/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// syncBuffer is a bytes.Buffer safe for a running server and a polling test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func envOf(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// runCommand runs one notifyd command to completion.
func runCommand(t *testing.T, env map[string]string, args ...string) (stdout string, err error) {
	t.Helper()
	var out, errOut syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = run(ctx, append([]string{"notifyd"}, args...), envOf(env), &out, &errOut)
	return out.String(), err
}

func TestStartupErrorsAreOneClearLine(t *testing.T) {
	t.Parallel()
	emptyDB := pgtest.NewDatabase(t)
	conn, err := pgx.Connect(context.Background(), emptyDB)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(context.Background(), "DROP SCHEMA public CASCADE; CREATE SCHEMA public"); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())

	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"no database url", nil, []string{"serve"}, "DATABASE_URL is not set"},
		{"unreachable", map[string]string{"DATABASE_URL": "postgres://127.0.0.1:1/x?connect_timeout=2"}, []string{"serve"}, "cannot reach PostgreSQL at 127.0.0.1:1"},
		{"garbage url", map[string]string{"DATABASE_URL": "::not a url::"}, []string{"migrate"}, "DATABASE_URL is not a valid PostgreSQL URL"},
		{"not migrated", map[string]string{"DATABASE_URL": emptyDB}, []string{"serve"}, "run `notifyd migrate`"},
		{"not migrated apikey", map[string]string{"DATABASE_URL": emptyDB}, []string{"apikey", "list"}, "run `notifyd migrate`"},
		{"bad role", map[string]string{"NOTIFYD_ROLE": "boss"}, []string{"serve"}, "NOTIFYD_ROLE"},
		{"bad frequency cap", map[string]string{"NOTIFYD_FREQUENCY_CAPS": "marketing=lots"}, []string{"serve"}, "NOTIFYD_FREQUENCY_CAPS"},
		{"unknown command", nil, []string{"frobnicate"}, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runCommand(t, tt.env, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error spans lines: %q", err)
			}
		})
	}
}

func TestMigrateAPIKeyServeAndDrain(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	env := map[string]string{"DATABASE_URL": dbURL, "NOTIFYD_ADDR": "127.0.0.1:0", "NOTIFYD_ROLE": "api"}
	if _, err := runCommand(t, env, "migrate"); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	out, err := runCommand(t, env, "apikey", "create", "--name", "ci", "--scopes", "send,admin")
	if err != nil {
		t.Fatalf("apikey create: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	secret := lines[len(lines)-1]
	if !strings.HasPrefix(secret, "nfy_") || strings.Contains(secret, " ") {
		t.Fatalf("last line of apikey create = %q, want the secret alone", secret)
	}
	if list, err := runCommand(t, env, "apikey", "list"); err != nil || !strings.Contains(list, "ci") {
		t.Fatalf("apikey list = %q, %v", list, err)
	}

	base, stderr, stop := serveInProcess(t, env)

	putAda := func() *http.Request {
		req, _ := http.NewRequest("PUT", base+"/v1/recipients/ada", strings.NewReader(`{"email":"ada@example.com"}`))
		req.Header.Set("Authorization", "Bearer "+secret)
		return req
	}
	resp, err := http.DefaultClient.Do(putAda())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("PUT recipient with the new key = %d", resp.StatusCode)
	}

	if _, err := runCommand(t, env, "apikey", "revoke", "ci"); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	resp, err = http.DefaultClient.Do(putAda())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("revoked key = %d, want 401", resp.StatusCode)
	}

	// Structured access logs: JSON, with the request id and the route pattern,
	// never the address from the body.
	var logged bool
	for _, line := range strings.Split(stderr.String(), "\n") {
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) != nil || entry["msg"] != "http request" {
			continue
		}
		if entry["route"] == "/v1/recipients/{id}" && entry["request_id"] != nil && entry["status"] == float64(201) {
			logged = true
		}
	}
	if !logged {
		t.Fatalf("no JSON access log line with request_id for PUT /v1/recipients/{id}:\n%s", stderr.String())
	}
	if strings.Contains(stderr.String(), "ada@example.com") {
		t.Fatal("an email address reached the logs")
	}

	if err := stop(); err != nil {
		t.Fatalf("serve after shutdown: %v", err)
	}
}

// serveInProcess runs `notifyd serve` with env until stop, and returns its
// base URL once it is ready, and its log. stop cancels its context (what
// SIGTERM does through signal.NotifyContext) and returns what serve returned.
func serveInProcess(t *testing.T, env map[string]string) (base string, log *syncBuffer, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log = &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"notifyd", "serve"}, envOf(env), &syncBuffer{}, log) }()
	base = waitListening(t, log)
	waitReady(t, base)
	return base, log, func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return errors.New("serve did not stop within 30s")
		}
	}
}

// waitListening reads the bound address from the "listening" log line.
func waitListening(t *testing.T, stderr *syncBuffer) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(stderr.String(), "\n") {
			var entry struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "listening" {
				return "http://" + entry.Addr
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("server never logged its address; stderr:\n%s", stderr.String())
	return ""
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("never ready")
}
