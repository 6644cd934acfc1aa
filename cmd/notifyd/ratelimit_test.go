package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/notifyd/notifyd/channels/email/sendgridfake"
)

// buildBinary builds notifyd once for t, for tests that need separate processes.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "notifyd")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startWorkerProcess runs `notifyd serve --role worker` as a separate OS process
// on the e2e's database and fakes.
func (e *e2e) startWorkerProcess(t *testing.T, bin string) {
	t.Helper()
	cmd := exec.Command(bin, "serve")
	cmd.Env = os.Environ()
	for k, v := range e.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(cmd.Env, "NOTIFYD_ROLE=worker")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("worker process stderr:\n%s", stderr.String())
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
}

// maxPerSecond is the largest number of times in any window [t, t+1s).
func maxPerSecond(times []time.Time) int {
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	best, start := 0, 0
	for end := range times {
		for times[end].Sub(times[start]) >= time.Second {
			start++
		}
		best = max(best, end-start+1)
	}
	return best
}

func (e *e2e) emailsOnce(t *testing.T, want int) []time.Time {
	t.Helper()
	seen := map[string]bool{}
	var times []time.Time
	for _, m := range e.sendgrid.Messages() {
		if seen[m.To] {
			t.Fatalf("%s received twice", m.To)
		}
		seen[m.To] = true
		times = append(times, m.ReceivedAt)
	}
	if len(seen) != want {
		t.Fatalf("%d people received an email, want %d", len(seen), want)
	}
	return times
}

func TestEmailRateHoldsAcrossTwoWorkerProcesses(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	// One batch at a time per process, so both processes take jobs.
	e := startE2E(t, map[string]string{"NOTIFYD_EMAIL_RATE": "100", "NOTIFYD_BULK_WORKERS": "1"})
	e.startWorkerProcess(t, bin)
	const n = 3000
	e.seed(t, "rl", n, "pro")
	body := broadcastBody("paced")
	body["channels"] = []string{"email"}
	_, _, created := e.call(t, "POST", "/v1/broadcasts", "paced-1", body)
	e.waitStatus(t, created["id"], "completed", 3*time.Minute)
	times := e.emailsOnce(t, n)
	if busiest := maxPerSecond(times); busiest > 110 {
		t.Fatalf("the fake received %d emails in one second; the rate is 100/s", busiest)
	}
	var workers int
	_ = e.pool.QueryRow(context.Background(), `SELECT count(DISTINCT attempted_by[1]) FROM river_job WHERE kind = 'notifyd.deliver'`).Scan(&workers)
	if workers < 2 {
		t.Fatalf("deliveries were worked by %d process(es), want both", workers)
	}
}

func TestRateLimitStormSlowsTheWholeProvider(t *testing.T) {
	t.Parallel()
	e := startE2E(t, map[string]string{"NOTIFYD_EMAIL_RATE": "2000"})
	const n = 3000
	e.seed(t, "st", n, "pro")
	storm := time.Now().Add(3 * time.Second)
	e.sendgrid.SetBehavior(sendgridfake.Behavior{RateLimitRate: 1, RetryAfter: 2 * time.Second})
	go func() {
		time.Sleep(time.Until(storm))
		e.sendgrid.SetBehavior(sendgridfake.Behavior{})
	}()
	body := broadcastBody("stormy")
	body["channels"] = []string{"email"}
	_, _, created := e.call(t, "POST", "/v1/broadcasts", "storm-1", body)
	final := e.waitStatus(t, created["id"], "completed", 3*time.Minute)
	if c := final["counts"].(map[string]any); c["sent"] != float64(n) || c["failed"] != float64(0) {
		t.Fatalf("counts = %v", c)
	}
	e.emailsOnce(t, n)
	// After each 429, no request reached the fake before its Retry-After passed.
	// Slices granted tokens before the 429 came back are still on their way (lock,
	// claim, render), so the first 500 ms after it are not counted.
	reqs := e.sendgrid.Requests()
	storms := 0
	for _, r := range reqs {
		if r.Status == 429 {
			storms++
		}
	}
	if storms == 0 {
		t.Fatal("the fake never answered 429: the test proved nothing")
	}
	for i, r := range reqs {
		if r.Status != 429 {
			continue
		}
		for _, later := range reqs[i+1:] {
			if later.Start.After(r.End.Add(500*time.Millisecond)) && later.Start.Before(r.End.Add(2*time.Second)) {
				t.Fatalf("a request started %v after a 429 that asked for 2s", later.Start.Sub(r.End))
			}
		}
	}
}

func TestBreakerWaitsOutAProviderOutage(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil)
	const n = 2000
	e.seed(t, "br", n, "pro")
	e.sendgrid.SetBehavior(sendgridfake.Behavior{Status503Until: time.Now().Add(20 * time.Second)})
	body := broadcastBody("outage")
	body["channels"] = []string{"email"}
	_, _, created := e.call(t, "POST", "/v1/broadcasts", "outage-1", body)
	final := e.waitStatus(t, created["id"], "completed", 4*time.Minute)
	if c := final["counts"].(map[string]any); c["sent"] != float64(n) || c["failed"] != float64(0) {
		t.Fatalf("counts = %v, want all %d sent and none failed", c, n)
	}
	e.emailsOnce(t, n)
}

// Not parallel: it measures a 2 s latency, so it runs before the parallel tests
// load the machine (the race detector alone slows everything several times).
func TestNotificationOvertakesABroadcastBacklog(t *testing.T) {
	e := startE2E(t, map[string]string{"NOTIFYD_EMAIL_RATE": "2000"})
	const n = 100000
	e.seed(t, "bk", n, "pro")
	body := broadcastBody("backlog")
	body["channels"] = []string{"email"}
	_, _, created := e.call(t, "POST", "/v1/broadcasts", "backlog-1", body)
	// Wait until the whole audience is pending behind the rate limit.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, _, b := e.call(t, "GET", fmt.Sprintf("/v1/broadcasts/%v", created["id"]), "", nil)
		if b["expanded"] == true && b["counts"].(map[string]any)["pending"].(float64) > 50000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the backlog never built up: %v", b["counts"])
		}
		time.Sleep(100 * time.Millisecond)
	}
	start := time.Now()
	status, _, note := e.call(t, "POST", "/v1/notifications", "urgent-1", map[string]any{
		"recipient": "bk00007", "category": "security", "channels": []string{"email"},
		"email": map[string]any{"subject": "Your sign-in code", "text": "123456"},
	})
	if status != 202 {
		t.Fatalf("notification = %d %v", status, note)
	}
	for {
		for _, m := range e.sendgrid.Messages() {
			if m.Subject == "Your sign-in code" {
				if took := m.ReceivedAt.Sub(start); took > 2*time.Second {
					t.Fatalf("the notification took %v behind the backlog, want under 2s", took)
				}
				return
			}
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("the notification did not arrive within 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFrequencyCapSuppressesOverTheCap(t *testing.T) {
	t.Parallel()
	e := startE2E(t, map[string]string{"NOTIFYD_FREQUENCY_CAPS": "marketing=2/24h"})
	const n = 10
	e.seed(t, "fc", n, "pro")
	send := func(key, category string) map[string]any {
		t.Helper()
		body := broadcastBody(key)
		body["category"] = category
		body["channels"] = []string{"email"}
		_, _, created := e.call(t, "POST", "/v1/broadcasts", key, body)
		return e.waitStatus(t, created["id"], "completed", time.Minute)["counts"].(map[string]any)
	}
	if c := send("promo-1", "marketing"); c["sent"] != float64(n) {
		t.Fatalf("promo-1 counts = %v, want all sent (under the cap)", c)
	}
	// A notification in the category counts too: fc00000 reaches the cap with it.
	_, _, note := e.call(t, "POST", "/v1/notifications", "offer-1", map[string]any{
		"recipient": "fc00000", "category": "marketing", "channels": []string{"email"},
		"email": map[string]any{"subject": "An offer", "text": "Just for you"},
	})
	e.waitNotificationCompleted(t, note["id"])
	if c := send("promo-2", "marketing"); c["sent"] != float64(n-1) || c["suppressed"] != float64(1) {
		t.Fatalf("promo-2 counts = %v, want fc00000 suppressed by the cap and the others sent", c)
	}
	if c := send("promo-3", "marketing"); c["sent"] != float64(0) || c["suppressed"] != float64(n) {
		t.Fatalf("third marketing broadcast counts = %v, want all suppressed by the cap", c)
	}
	// Another category is not capped.
	if c := send("news-1", "news"); c["sent"] != float64(n) {
		t.Fatalf("news counts = %v", c)
	}
	var reasons int
	_ = e.pool.QueryRow(context.Background(), `SELECT count(*) FROM deliveries WHERE reason = 'frequency_cap'`).Scan(&reasons)
	if reasons != n+1 {
		t.Fatalf("%d deliveries carry reason frequency_cap, want %d", reasons, n+1)
	}
	if got := e.sendgrid.Count(); got != 3*n {
		t.Fatalf("the fake received %d emails, want %d", got, 3*n)
	}
}
