package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/notifyd/notifyd/channels/email/sendgridfake"
	"github.com/notifyd/notifyd/channels/push/fcmfake"
)

// requestStarts lists when each provider request began, from both fakes.
func (e *e2e) requestStarts() []time.Time {
	var starts []time.Time
	for _, r := range e.sendgrid.Requests() {
		starts = append(starts, r.Start)
	}
	for _, r := range e.fcm.Requests() {
		starts = append(starts, r.Start)
	}
	return starts
}

func (e *e2e) waitReceived(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for e.sendgrid.Count()+e.fcm.Count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("fakes received %d messages, waited for %d", e.sendgrid.Count()+e.fcm.Count(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rerunAllJobs forces every way River can run a delivery job again: JobRetry
// from a client (as an operator tool would), and rows put back to available as
// the rescuer, a snooze or an errored cancelled job would.
func (e *e2e) rerunAllJobs(t *testing.T) int {
	t.Helper()
	ctx := context.Background()
	client, err := river.NewClient(riverpgxv5.New(e.pool), &river.Config{})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := e.pool.Query(ctx, `SELECT id FROM river_job WHERE kind = 'notifyd.deliver'`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if i%2 == 0 {
			if _, err := client.JobRetry(ctx, id); err != nil {
				t.Fatalf("JobRetry %d: %v", id, err)
			}
		}
	}
	if _, err := e.pool.Exec(ctx, `UPDATE river_job SET state = 'available', scheduled_at = now(), finalized_at = NULL,
		max_attempts = attempt + 5 WHERE kind = 'notifyd.deliver' AND state <> 'running'`); err != nil {
		t.Fatal(err)
	}
	return len(ids)
}

func (e *e2e) dbCounts(t *testing.T, id any) map[string]int {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), `SELECT status, count(*) FROM deliveries WHERE broadcast_id = $1 GROUP BY status`, id)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			t.Fatal(err)
		}
		out[s] = n
	}
	return out
}

// Three worker processes (this one and two separate OS processes), a slowed
// provider, 20,000 recipients on two channels, cancelled mid-way.
func TestCancelStopsSendingThroughEveryRerunPath(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	e := startE2E(t, map[string]string{"NOTIFYD_BULK_WORKERS": "4"})
	e.startWorkerProcess(t, bin)
	e.startWorkerProcess(t, bin)
	const n = 20000
	e.seed(t, "x", n, "pro")
	e.sendgrid.SetBehavior(sendgridfake.Behavior{Delay: 400 * time.Millisecond})
	e.fcm.SetBehavior(fcmfake.Behavior{Delay: 20 * time.Millisecond})

	_, _, created := e.call(t, "POST", "/v1/broadcasts", "cancel-1", broadcastBody("to cancel"))
	id := created["id"]
	e.waitReceived(t, 5000)

	status, _, res := e.call(t, "POST", fmt.Sprintf("/admin/v1/broadcasts/%v/cancel", id), "", nil)
	cancelReturned := time.Now()
	if status != 200 || res["status"] != "cancelled" {
		t.Fatalf("cancel = %d %v", status, res)
	}
	for _, start := range e.requestStarts() {
		if start.After(cancelReturned) {
			t.Fatalf("a provider request started %v after cancel returned", start.Sub(cancelReturned))
		}
	}
	counts := res["counts"].(map[string]any)
	received := e.sendgrid.Count() + e.fcm.Count()
	if int(counts["sent"].(float64)) != received {
		t.Fatalf("cancel says %v sent, the fakes received %d", counts["sent"], received)
	}
	if counts["cancelled"].(float64) == 0 {
		t.Fatalf("nothing was cancelled: %v (the test must cancel mid-way)", counts)
	}

	var workers int
	_ = e.pool.QueryRow(context.Background(), `SELECT count(DISTINCT attempted_by[1]) FROM river_job WHERE kind = 'notifyd.deliver' AND attempted_by IS NOT NULL`).Scan(&workers)
	if workers < 3 {
		t.Fatalf("deliveries were worked by %d processes, want 3", workers)
	}

	// Every way River can run the jobs again: nothing more is sent.
	if jobs := e.rerunAllJobs(t); jobs == 0 {
		t.Fatal("no delivery jobs to re-run")
	}
	time.Sleep(3 * time.Second)
	if got := e.sendgrid.Count() + e.fcm.Count(); got != received {
		t.Fatalf("after re-running every job the fakes received %d, want still %d", got, received)
	}
	// Cancel also stopped the expansion, so the audience written so far is what
	// must add up: every delivery of it is sent, cancelled, failed, unknown or
	// suppressed, two per expanded recipient.
	db := e.dbCounts(t, id)
	_, _, after := e.call(t, "GET", fmt.Sprintf("/v1/broadcasts/%v", id), "", nil)
	expanded := int(after["counts"].(map[string]any)["recipients"].(float64))
	total := db["sent"] + db["cancelled"] + db["failed"] + db["unknown"] + db["suppressed"]
	if total != 2*expanded || db["pending"] != 0 || db["sending"] != 0 || expanded == 0 || expanded > n {
		t.Fatalf("deliveries by status = %v for %d expanded recipients; want all %d accounted for", db, expanded, 2*expanded)
	}
	if db["sent"] != received {
		t.Fatalf("sent %d in the database, %d at the fakes", db["sent"], received)
	}
	addresses := map[string]bool{}
	for _, m := range e.sendgrid.Messages() {
		if addresses[m.To] {
			t.Fatalf("%s received twice", m.To)
		}
		addresses[m.To] = true
	}

	// Cancel is final and idempotent.
	if status, _, _ := e.call(t, "POST", fmt.Sprintf("/admin/v1/broadcasts/%v/resume", id), "", nil); status != 409 {
		t.Fatalf("resume of a cancelled broadcast = %d, want 409", status)
	}
	if status, _, again := e.call(t, "POST", fmt.Sprintf("/admin/v1/broadcasts/%v/cancel", id), "", nil); status != 200 || again["changed"] != false {
		t.Fatalf("second cancel = %d %v", status, again)
	}
	_, _, audit := e.call(t, "GET", fmt.Sprintf("/admin/v1/audit?broadcast=%v", id), "", nil)
	entries := audit["entries"].([]any)
	if len(entries) != 2 {
		t.Fatalf("audit entries = %v, want 2 cancels", entries)
	}
	first := entries[1].(map[string]any)
	if first["actor"] != "e2e" || first["action"] != "cancel" || first["counts"].(map[string]any)["sent"] != counts["sent"] {
		t.Fatalf("audit entry = %v", first)
	}
	// The send scope cannot cancel.
	if status, _, _ := e.callWith(t, e.sendOnlyKey(t), "POST", fmt.Sprintf("/admin/v1/broadcasts/%v/cancel", id)); status != 403 {
		t.Fatalf("cancel with a send-only key = %d, want 403", status)
	}
}

func TestPauseAndResumeSendEveryoneExactlyOnce(t *testing.T) {
	t.Parallel()
	e := startE2E(t, map[string]string{"NOTIFYD_BULK_WORKERS": "2"})
	const n = 6000
	e.seed(t, "p", n, "pro")
	e.sendgrid.SetBehavior(sendgridfake.Behavior{Delay: 300 * time.Millisecond})
	body := broadcastBody("pausable")
	body["channels"] = []string{"email"}
	_, _, created := e.call(t, "POST", "/v1/broadcasts", "pause-1", body)
	id := created["id"]
	e.waitReceived(t, 1000)

	status, _, res := e.call(t, "POST", fmt.Sprintf("/admin/v1/broadcasts/%v/pause", id), "", nil)
	paused := time.Now()
	if status != 200 || res["status"] != "paused" {
		t.Fatalf("pause = %d %v", status, res)
	}
	atPause := e.sendgrid.Count()
	e.rerunAllJobs(t)
	time.Sleep(2 * time.Second)
	if got := e.sendgrid.Count(); got != atPause {
		t.Fatalf("sent %d while paused", got-atPause)
	}
	for _, start := range e.requestStarts() {
		if start.After(paused) {
			t.Fatal("a provider request started after pause returned")
		}
	}
	if status, _, res := e.call(t, "POST", fmt.Sprintf("/admin/v1/broadcasts/%v/resume", id), "", nil); status != 200 || res["status"] != "sending" {
		t.Fatalf("resume = %d %v", status, res)
	}
	final := e.waitStatus(t, id, "completed", 2*time.Minute)
	if c := final["counts"].(map[string]any); c["sent"] != float64(n) {
		t.Fatalf("counts = %v, want %d sent", c, n)
	}
	seen := map[string]bool{}
	for _, m := range e.sendgrid.Messages() {
		if seen[m.To] {
			t.Fatalf("%s received twice", m.To)
		}
		seen[m.To] = true
	}
	if len(seen) != n {
		t.Fatalf("%d people received, want %d", len(seen), n)
	}
}
