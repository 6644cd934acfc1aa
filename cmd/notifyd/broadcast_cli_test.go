package main

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/channels/email/sendgridfake"
	"github.com/notifyd/notifyd/notifier"
)

// cliEnv is the e2e environment of an operator named ada.
func cliEnv(e *e2e) map[string]string {
	env := maps.Clone(e.env)
	env["USER"] = "ada"
	return env
}

func auditOf(t *testing.T, e *e2e, id string) []string {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), `SELECT actor, action, detail FROM audit_log WHERE broadcast_id = $1 ORDER BY id`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var actor, action, detail string
		if err := rows.Scan(&actor, &action, &detail); err != nil {
			t.Fatal(err)
		}
		out = append(out, actor+" "+action+" "+detail)
	}
	return out
}

func wantContains(t *testing.T, what, got string, wants ...string) {
	t.Helper()
	t.Logf("%s:\n%s", what, got)
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Fatalf("%s does not contain %q:\n%s", what, w, got)
		}
	}
}

func TestBroadcastCLIStatusAndWatch(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil)
	env := cliEnv(e)
	e.seed(t, "s", 1200, "pro")
	status, _, out := e.call(t, "POST", "/v1/broadcasts", "cli-status-1", broadcastBody("cli status"))
	if status != 202 {
		t.Fatalf("create = %d %v", status, out)
	}
	id := fmt.Sprint(out["id"])
	e.waitStatus(t, id, "completed", 2*time.Minute)

	got, err := runCommand(t, env, "broadcast", "status", id)
	if err != nil {
		t.Fatalf("broadcast status: %v", err)
	}
	wantContains(t, "status output", got,
		fmt.Sprintf("broadcast %s \"cli status\": completed", id),
		"1,200 recipients",
		"[####################]  100%",
		"1,200/1,200",
		"2,400/2,400",
		"sent 1,200  failed 0  suppressed 0  pending 0  cancelled 0  unknown 0",
		"sent 2,400")
	for _, line := range strings.Split(got, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "email") || strings.HasPrefix(strings.TrimSpace(line), "push") {
			if !strings.Contains(line, "1,200/1,200") {
				t.Fatalf("channel line %q, want 1,200/1,200", line)
			}
		}
	}

	// --watch on a finished broadcast returns at once, however long the interval,
	// and (not a terminal) prints a line per tick then the summary.
	start := time.Now()
	got, err = runCommand(t, env, "broadcast", "status", id, "--watch", "--interval", "1h")
	if err != nil {
		t.Fatalf("status --watch: %v", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("status --watch of a completed broadcast took %v", d)
	}
	if strings.Contains(got, "\x1b[") {
		t.Fatalf("escape sequences written to a non-terminal:\n%q", got)
	}
	wantContains(t, "watch output", got, "broadcast "+id+" completed  email 100% 1,200/1,200  push 100% 1,200/1,200", "[####################]  100%")

	// Errors are one clean line and fail the command.
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"broadcast", "status", "987654"}, "broadcast 987654 not found"},
		{[]string{"broadcast", "pause", "987654"}, "broadcast 987654 not found"},
		{[]string{"broadcast", "status", "abc"}, "broadcast ID must be a positive number"},
		{[]string{"broadcast", "status"}, "usage: notifyd broadcast"},
		{[]string{"broadcast", "explode", id}, `unknown broadcast command "explode"`},
		{[]string{"broadcast", "cancel", id, "--watch"}, "--watch goes with status only"},
		{[]string{"broadcast", "resume", id}, "cannot resume a broadcast that is completed"},
	} {
		_, err := runCommand(t, env, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("%v: err = %v, want one line containing %q", tt.args, err, tt.want)
		}
	}
}

func TestBroadcastCLIPauseResumeCancel(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil)
	env := cliEnv(e)
	e.seed(t, "q", 40, "pro")
	ctx := context.Background()

	// A broadcast scheduled for later: pause and resume act on it deterministically.
	body := broadcastBody("cli control")
	body["send_at"] = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	status, _, out := e.call(t, "POST", "/v1/broadcasts", "cli-control-1", body)
	if status != 202 || out["status"] != "scheduled" {
		t.Fatalf("create = %d %v", status, out)
	}
	id := fmt.Sprint(out["id"])

	got, err := runCommand(t, env, "broadcast", "pause", id)
	if err != nil {
		t.Fatalf("pause: %v", err)
	}
	wantContains(t, "pause output", got, "paused broadcast "+id, "status paused: sent 0", "pending 0")
	got, err = runCommand(t, env, "broadcast", "pause", id)
	if err != nil {
		t.Fatalf("second pause: %v", err)
	}
	wantContains(t, "second pause output", got, "broadcast "+id+" is already paused: nothing changed")
	got, err = runCommand(t, env, "broadcast", "status", id)
	if err != nil {
		t.Fatal(err)
	}
	wantContains(t, "status of paused", got, "\"cli control\": paused (audience not expanded yet)", "email  [--------------------]  -  0/0")

	// The send time comes while it is paused; resume starts it from there, through
	// the CLI's insert-only queue client, and the serving workers deliver it.
	if _, err := e.pool.Exec(ctx, `UPDATE broadcasts SET send_at = now() - interval '1 second' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	got, err = runCommand(t, env, "broadcast", "resume", id)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	wantContains(t, "resume output", got, "resumed broadcast "+id+": status is now expanding")
	e.waitStatus(t, id, "completed", 2*time.Minute)
	if e.sendgrid.Count() != 40 || e.fcm.Count() != 40 {
		t.Fatalf("after resume the fakes got %d emails and %d pushes, want 40 each", e.sendgrid.Count(), e.fcm.Count())
	}

	// Another, cancelled from the CLI; resuming it then fails with one line.
	body2 := broadcastBody("cli cancel")
	body2["send_at"] = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	_, _, out2 := e.call(t, "POST", "/v1/broadcasts", "cli-control-2", body2)
	id2 := fmt.Sprint(out2["id"])
	got, err = runCommand(t, env, "broadcast", "cancel", id2)
	if err != nil {
		t.Fatalf("cancel: %v", err)
	}
	wantContains(t, "cancel output", got, "cancelled broadcast "+id2, "status cancelled: sent 0")
	_, err = runCommand(t, env, "broadcast", "resume", id2)
	if err == nil || err.Error() != "cannot resume a broadcast that is cancelled" {
		t.Fatalf("resume of a cancelled broadcast: err = %v", err)
	}
	got, err = runCommand(t, env, "broadcast", "status", id2, "--watch")
	if err != nil {
		t.Fatal(err)
	}
	wantContains(t, "watch of cancelled", got, "broadcast "+id2+" cancelled  email - 0/0", "\"cli cancel\": cancelled\n")

	if a := auditOf(t, e, id); strings.Join(a, "|") != "cli:ada pause from scheduled|cli:ada pause already paused|cli:ada resume from paused" {
		t.Fatalf("audit log of %s = %q", id, a)
	}
	if a := auditOf(t, e, id2); strings.Join(a, "|") != "cli:ada cancel from scheduled" {
		t.Fatalf("audit log of %s = %q", id2, a)
	}
}

// Mid-way through a real send: the CLI's counts are the database's, the status
// shows partial progress, and resume finishes with everyone sent exactly once.
func TestBroadcastCLIPauseMidwayAndResume(t *testing.T) {
	t.Parallel()
	// One batch (1,000 emails) at a time, each answered slowly.
	e := startE2E(t, map[string]string{"NOTIFYD_BULK_WORKERS": "1"})
	env := cliEnv(e)
	const n = 4000
	e.seed(t, "m", n, "pro")
	e.sendgrid.SetBehavior(sendgridfake.Behavior{Delay: 700 * time.Millisecond})
	body := broadcastBody("cli midway")
	body["channels"] = []string{"email"}
	_, _, created := e.call(t, "POST", "/v1/broadcasts", "cli-midway-1", body)
	id := fmt.Sprint(created["id"])
	e.waitReceived(t, 1)

	got, err := runCommand(t, env, "broadcast", "pause", id)
	if err != nil {
		t.Fatalf("pause: %v", err)
	}
	db := e.dbCounts(t, id)
	if db["sent"] == 0 || db["pending"] == 0 || db["sent"]+db["pending"] != n {
		t.Fatalf("deliveries after pause = %v; the test must pause mid-way", db)
	}
	wantContains(t, "pause output", got, "paused broadcast "+id,
		fmt.Sprintf("status paused: sent %s  failed 0  suppressed 0  pending %s  cancelled 0  unknown 0", thousands(int64(db["sent"])), thousands(int64(db["pending"]))))
	got, err = runCommand(t, env, "broadcast", "status", id)
	if err != nil {
		t.Fatal(err)
	}
	pct := fmt.Sprintf("%d%%", db["sent"]*100/n)
	wantContains(t, "status of paused", got, "\"cli midway\": paused\n", pct, fmt.Sprintf("%s/4,000", thousands(int64(db["sent"]))))
	if strings.Contains(got, "total") {
		t.Fatalf("one channel needs no total line:\n%s", got)
	}

	got, err = runCommand(t, env, "broadcast", "resume", id)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	wantContains(t, "resume output", got, "resumed broadcast "+id+": status is now sending")
	got, err = runCommand(t, env, "broadcast", "status", id, "--watch", "--interval", "100ms")
	if err != nil {
		t.Fatalf("status --watch: %v", err)
	}
	wantContains(t, "watch until completed", got, "email 100% 4,000/4,000", "\"cli midway\": completed\n")
	if e.sendgrid.Count() != n {
		t.Fatalf("the fake received %d emails, want %d", e.sendgrid.Count(), n)
	}
	if _, err := runCommand(t, env, "broadcast", "cancel", id); err == nil || err.Error() != "cannot cancel a broadcast that is completed" {
		t.Fatalf("cancel of a completed broadcast: err = %v", err)
	}
	if a := auditOf(t, e, id); strings.Join(a, "|") != "cli:ada pause from sending|cli:ada resume from paused" {
		t.Fatalf("audit log = %q", a)
	}
}

// On a terminal, --watch redraws in place: cursor up over the last frame, each
// line cleared before it is written. Ctrl-C (ctx done) ends it without error.
func TestBroadcastWatchRedrawsInPlace(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil)
	body := broadcastBody("watched")
	body["send_at"] = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	status, _, out := e.call(t, "POST", "/v1/broadcasts", "cli-watch-1", body)
	if status != 202 {
		t.Fatalf("create = %d %v", status, out)
	}
	id := int64(out["id"].(float64))
	svc := notifier.NewService(e.pool, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	var buf syncBuffer
	if err := watchBroadcast(ctx, svc, id, 100*time.Millisecond, &buf, true); err != nil {
		t.Fatalf("watch: %v", err)
	}
	got := buf.String()
	frames := strings.Count(got, fmt.Sprintf("broadcast %d \"watched\": scheduled, sends at ", id))
	if frames < 2 {
		t.Fatalf("%d frames drawn in 600ms at 100ms, want several:\n%q", frames, got)
	}
	up := regexp.MustCompile(`\x1b\[(\d+)A`).FindStringSubmatchIndex(got)
	if up == nil || !strings.Contains(got, "\r\x1b[2K") {
		t.Fatalf("no cursor-up and clear-line in:\n%q", got)
	}
	firstFrame := got[:up[0]]
	if n := strconv.Itoa(strings.Count(firstFrame, "\n")); got[up[2]:up[3]] != n || n != "5" {
		t.Fatalf("cursor up %s lines over a frame of %s (want 5: head, details, email, push, total):\n%q", got[up[2]:up[3]], n, got)
	}
	if strings.Contains(got, "\x1b[J") {
		t.Fatalf("frames of equal size need no clearing below:\n%q", got)
	}
}

func TestBroadcastProgressRendering(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		frac float64
		want string
	}{{0, "[----------]"}, {0.52, "[#####-----]"}, {1, "[##########]"}, {1.5, "[##########]"}} {
		if got := progressBar(tt.frac, 10); got != tt.want {
			t.Errorf("progressBar(%v) = %s, want %s", tt.frac, got, tt.want)
		}
	}
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 5200: "5,200", 1234567: "1,234,567", -1000: "-1,000"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %s, want %s", n, got, want)
		}
	}
	row := channelRow("email", notifier.ChannelCounts{Deliveries: 10000, Sent: 5000, Failed: 100, Suppressed: 100, Pending: 4800})
	if got := strings.Join(row[1:4], " "); got != "[##########----------] 52% 5,200/10,000" {
		t.Errorf("channel row = %q", got)
	}
}
