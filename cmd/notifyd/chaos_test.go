package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestChaosShort runs `notifyd chaos --short` for real: a freshly built notifyd
// (in a test, os.Executable is the test binary) as one API and three worker
// processes over a throwaway durable cluster of its own, the fakes failing at
// set rates, two workers SIGKILLed, one PostgreSQL crash restart, replay storms
// and a cancel; then every check of the invariants against the fakes' records.
// The long form and its figures are in docs/reliability.md.
func TestChaosShort(t *testing.T) {
	if testing.Short() {
		t.Skip("builds notifyd and runs it as child processes against its own PostgreSQL cluster for a few minutes")
	}
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "notifyd")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var out syncBuffer
	start := time.Now()
	err := runChaos(ctx, []string{"--binary", bin, "--short"}, envOf(nil), &out, &out)
	report := out.String()
	if err != nil {
		t.Fatalf("chaos after %s: %v\n%s", time.Since(start).Round(time.Second), err, report)
	}
	for _, want := range []string{
		"no invariant violated",
		"kill 1: SIGKILL worker-",
		"kill 2: SIGKILL worker-",
		"PostgreSQL is back (new postmaster)",
		"broadcasts in the database: 2",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("the report lacks %q:\n%s", want, report)
		}
	}
	if strings.Contains(report, "VIOLATION") {
		t.Errorf("the report has violations:\n%s", report)
	}
	// The figures, for the record (go test -v shows them).
	t.Logf("chaos --short took %s\n%s", time.Since(start).Round(time.Second), report)
}
