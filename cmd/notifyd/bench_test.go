package main

import (
	"context"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/migrations/pgtest"
)

// runBenchForTest runs `notifyd bench` with args against a freshly built
// binary and a database of its own on the test server, fails the test if the
// run fails, and returns its report.
func runBenchForTest(t *testing.T, args ...string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds notifyd and runs it as child processes")
	}
	bin := buildNotifyd(t)
	serverURL := pgtest.NewDatabase(t) // bench creates (and drops) its own database on this server

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr syncBuffer
	argv := append([]string{"notifyd", "bench", "--binary", bin, "--stall", "1m"}, args...)
	err := run(ctx, argv, envOf(map[string]string{"DATABASE_URL": serverURL}), &stdout, &stderr)
	out := stdout.String()
	if err != nil {
		t.Fatalf("bench: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	return out
}

// TestBenchBroadcastSmall runs `notifyd bench` for real at a small size: child
// notifyd processes (a freshly built binary: in a test, os.Executable is the test
// binary), a database of its own on the test server, the fakes, the API, and the
// report's checks.
func TestBenchBroadcastSmall(t *testing.T) {
	out := runBenchForTest(t, "--recipients", "2000", "--channels", "email,push,inbox", "--workers", "2")
	for _, ch := range []string{"email", "push", "inbox"} {
		want := "check " + ch + ": sent 2,000 of 2,000 deliveries; received 2,000 (2,000 distinct, 0 duplicates): OK"
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	for _, want := range []string{"all deliveries sent once; no duplicates", "expansion ", "peak RSS notifyd[0] all", "peak RSS notifyd[1] worker"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "ERROR") {
		t.Errorf("report has errors:\n%s", out)
	}
}

// TestBenchCancelAfterExpansion runs `notifyd bench --cancel-after-expansion`
// with delivery paced slow enough that the broadcast is still sending when it is
// expanded: once every channel has sent, the bench cancels it, and its checks
// (every delivery ended, nothing received twice, no more received than recorded
// sent) must hold.
func TestBenchCancelAfterExpansion(t *testing.T) {
	// 3,000 recipients at 200/s per channel take 15 s to deliver: far longer
	// than the expansion, so the cancel meets most deliveries pending.
	out := runBenchForTest(t, "--recipients", "3000", "--channels", "email,push",
		"--cancel-after-expansion", "--email-rate", "200", "--push-rate", "200")
	// The RESULTS table pads its columns: compare words, not spacing.
	words := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{
		"expansion 6,000 deliveries in ",
		"email sent before cancel ", "push sent before cancel ", "last send finished ",
		"received after the cancel returned: ",
		"cancel POST took ", "answer: cancelled, sent ",
		"end to end created -> cancelled settled ",
		"peak RSS notifyd[0] all",
		"delivery paced at 200/s per channel: delivery goals not measured in this mode",
		"cancel held: every delivery ended, none received twice, the providers received no more than was recorded sent",
	} {
		if !strings.Contains(words, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	for _, ch := range []string{"email", "push"} {
		line := benchCheckLine(t, out, ch)
		// Every delivery ended (sent or cancelled: nothing is suppressed or failed here).
		for _, want := range []string{"= 3,000 of 3,000 deliveries, 0 pending or sending;", " 0 duplicates,", ": OK"} {
			if !strings.Contains(line, want) {
				t.Errorf("check line lacks %q: %s", want, line)
			}
		}
	}
	for _, unwanted := range []string{"ERROR", "email delivery ", "push delivery ", "created -> completed", "all deliveries sent once"} {
		if strings.Contains(words, unwanted) {
			t.Errorf("report of a cancelled run has %q:\n%s", unwanted, out)
		}
	}
}

// benchCheckLine returns the report's check line for channel.
func benchCheckLine(t *testing.T, out, channel string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "check "+channel+": ") {
			return line
		}
	}
	t.Fatalf("report has no check line for %s:\n%s", channel, out)
	return ""
}

// buildNotifyd builds the notifyd binary for bench to run as its children: in a
// test, os.Executable is the test binary.
func buildNotifyd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "notifyd")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// The flags that would make a meaningless run are refused before any setup.
func TestBenchFlagsRefuseNonsense(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--recipients", "0"}, "--recipients must be at least 1"},
		{[]string{"--channels", "email,fax"}, `"fax" is not email, push or inbox`},
		{[]string{"--channels", "push,push"}, "push is listed twice"},
		{[]string{"--push-rate", "0"}, "--push-rate must be above 0"},
		{[]string{"--email-rate", "-5"}, "--email-rate and --push-rate must be above 0"},
	} {
		_, err := parseBcFlags(tc.args, func(string) string { return "" }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("bench %v: error %v, want %q", tc.args, err, tc.want)
		}
	}
	o, err := parseBcFlags([]string{"--push-rate", "6000"}, func(string) string { return "" }, io.Discard)
	if err != nil || o.pushRate != 6000 || o.emailRate != 1_000_000 {
		t.Fatalf("--push-rate 6000: %+v, %v", o, err)
	}
}
