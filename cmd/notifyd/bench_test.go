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

// TestBenchBroadcastSmall runs `notifyd bench` for real at a small size: child
// notifyd processes (a freshly built binary: in a test, os.Executable is the test
// binary), a database of its own on the test server, the fakes, the API, and the
// report's checks.
func TestBenchBroadcastSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds notifyd and runs it as child processes")
	}
	bin := filepath.Join(t.TempDir(), "notifyd")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	serverURL := pgtest.NewDatabase(t) // bench creates (and drops) its own database on this server

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr syncBuffer
	err := run(ctx, []string{"notifyd", "bench", "--recipients", "2000", "--channels", "email,push,inbox",
		"--workers", "2", "--binary", bin, "--stall", "1m"},
		envOf(map[string]string{"DATABASE_URL": serverURL}), &stdout, &stderr)
	out := stdout.String()
	if err != nil {
		t.Fatalf("bench: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
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
