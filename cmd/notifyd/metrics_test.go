package main

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape returns the value of each sample line of /metrics whose name and labels
// match pattern.
func (e *e2e) scrape(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(e.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics = %d", resp.StatusCode)
	}
	return string(raw)
}

func metricValue(t *testing.T, body, series string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no series %s in /metrics", series)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMetricsAgreeWithTheAPI(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil)
	e.seed(t, "m", 120, "pro")
	_, _, created := e.call(t, "POST", "/v1/broadcasts", "metrics-1", broadcastBody("measured"))
	e.call(t, "POST", "/v1/broadcasts", "metrics-1", broadcastBody("measured")) // a replay
	final := e.waitStatus(t, created["id"], "completed", time.Minute)
	// A notification's deliveries count in the totals too.
	_, _, note := e.call(t, "POST", "/v1/notifications", "metrics-note", map[string]any{
		"recipient": "m00001", "category": "security", "channels": []string{"email"},
		"email": map[string]any{"subject": "Code", "text": "1234"},
	})
	e.waitNotificationCompleted(t, note["id"])
	body := e.scrape(t)
	for _, ch := range []string{"email", "push"} {
		api := final["channels"].(map[string]any)[ch].(map[string]any)
		got := metricValue(t, body, fmt.Sprintf(`notifyd_deliveries{channel="%s",status="sent"}`, ch))
		notes := map[string]float64{"email": 1}[ch]
		if got != api["sent"].(float64)+notes || got != 120+notes {
			t.Fatalf("%s: /metrics says %v sent, the API %v (+%v of the notification)", ch, got, api["sent"], notes)
		}
	}
	if strings.Contains(body, "notifyd_broadcast_open_deliveries{") {
		t.Fatalf("open deliveries reported for a completed broadcast:\n%s", body)
	}
	if v := metricValue(t, body, `notifyd_idempotent_replays_total{request="POST /v1/broadcasts"}`); v != 1 {
		t.Fatalf("replays = %v, want 1", v)
	}
	if v := metricValue(t, body, `notifyd_provider_request_duration_seconds_count{channel="email",status="202"}`); v < 1 {
		t.Fatalf("no timed SendGrid request: %v", v)
	}
	if v := metricValue(t, body, `notifyd_http_request_duration_seconds_count{method="POST",route="/v1/broadcasts",status="202"}`); v != 2 {
		t.Fatalf("timed POST /v1/broadcasts = %v, want 2", v)
	}
	if v := metricValue(t, body, `notifyd_broadcasts{status="completed"}`); v != 1 {
		t.Fatalf("completed broadcasts = %v", v)
	}
	// The shared limiter's state per provider (rates from startE2E's env, paced at 95%).
	if v := metricValue(t, body, `notifyd_provider_rate_per_second{channel="email"}`); v <= 0 {
		t.Fatalf("email rate = %v", v)
	}
	if v := metricValue(t, body, `notifyd_provider_breaker_open{channel="email"}`); v != 0 {
		t.Fatalf("email breaker open = %v", v)
	}
	if v := metricValue(t, body, `notifyd_provider_backoff_seconds{channel="push"}`); v != 0 {
		t.Fatalf("push backoff = %v", v)
	}
}

func TestPprofIsOnlyOnItsOwnListener(t *testing.T) {
	t.Parallel()
	addr, stop, err := startPprof("127.0.0.1:0", newLogger("text", io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	resp, err := http.Get("http://" + addr + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("pprof index = %d", resp.StatusCode)
	}
	e := startE2E(t, nil)
	if resp, err := http.Get(e.base + "/debug/pprof/"); err != nil || resp.StatusCode != 404 {
		t.Fatalf("the API address serves pprof: %v %v", resp.StatusCode, err)
	}
}
