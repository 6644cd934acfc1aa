package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/migrations/pgtest"
)

// TestDevSendsADemoBroadcastToTheFakes runs `notifyd dev` as a newcomer would
// (here on a test database rather than its own cluster) and sends the broadcast
// it suggests, with tracing to a fake OTLP collector as a newcomer trying it
// might.
func TestDevSendsADemoBroadcastToTheFakes(t *testing.T) {
	t.Parallel()
	collector := &otlpCollector{}
	otlp := httptest.NewServer(collector)
	t.Cleanup(otlp.Close)
	env := map[string]string{"DATABASE_URL": pgtest.NewDatabase(t), "NOTIFYD_ADDR": "127.0.0.1:0", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.URL}
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"notifyd", "dev"}, envOf(env), &stdout, &stderr) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("dev: %v", err)
			}
		}
	}
	defer stop()
	var base, key, sendgridPage string
	deadline := time.Now().Add(30 * time.Second)
	for base == "" || key == "" || sendgridPage == "" {
		if time.Now().After(deadline) {
			t.Fatalf("dev did not print its address, key and fakes in 30s:\n%s\n%s", stdout.String(), stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
		out := stdout.String()
		if m := regexp.MustCompile(`running at (http://\S+)`).FindStringSubmatch(out); m != nil {
			base = m[1]
		}
		if m := regexp.MustCompile(`export NOTIFYD_KEY=(\S+)`).FindStringSubmatch(out); m != nil {
			key = m[1]
		}
		if m := regexp.MustCompile(`fake SendGrid: what it received is at (\S+)`).FindStringSubmatch(out); m != nil {
			sendgridPage = m[1]
		}
	}
	waitReady(t, base)
	e := &e2e{base: base, key: key}
	status, _, created := e.call(t, "POST", "/v1/broadcasts", "demo-1", map[string]any{
		"name": "hello", "category": "news", "segment": "all", "channels": []string{"email", "push", "inbox"},
		"email": map[string]any{"subject": "Hello {{.Recipient.Attributes.name}}", "text": "Hi!"},
		"push":  map[string]any{"title": "Hello", "body": "Hi {{.Recipient.Attributes.name}}"},
		"inbox": map[string]any{"title": "Welcome, {{.Recipient.Attributes.name}}"},
	})
	if status != 202 {
		t.Fatalf("broadcast = %d %v", status, created)
	}
	final := e.waitStatus(t, created["id"], "completed", 30*time.Second)
	if c := final["counts"].(map[string]any); c["sent"] != float64(3*len(demoPeople)) {
		t.Fatalf("counts = %v, want every demo person on three channels", c)
	}
	resp, err := http.Get(strings.TrimSuffix(sendgridPage, "/") + "/messages?limit=100")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var received []struct {
		Subject string `json:"subject"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&received); err != nil {
		t.Fatal(err)
	}
	if len(received) != len(demoPeople) || !strings.HasPrefix(received[0].Subject, "Hello ") {
		t.Fatalf("the fake SendGrid page shows %d messages: %+v", len(received), received)
	}
	// Stopping dev flushes the spans it has not exported yet.
	stop()
	names := map[string]int{}
	for _, s := range collector.snapshot() {
		names[s.name]++
	}
	for _, name := range []string{"POST /v1/broadcasts", "notifyd.expand", "notifyd.send"} {
		if names[name] == 0 {
			t.Errorf("dev exported no %s span: %v", name, names)
		}
	}
}
