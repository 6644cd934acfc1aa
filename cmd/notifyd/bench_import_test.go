package main

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/notifyd/notifyd/migrations/pgtest"
)

// TestBenchImportSmall runs the benchmark on a small directory against the test
// server: DATABASE_URL names a database there, and bench-import must create (and
// drop) its own next to it.
func TestBenchImportSmall(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var stdout, stderr syncBuffer
	err := runBenchImport(ctx, []string{"--recipients", "2000", "--batch", "500", "--runs", "2"},
		envOf(map[string]string{"DATABASE_URL": dbURL}), &stdout, &stderr)
	out := stdout.String()
	if err != nil {
		t.Fatalf("bench-import: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^imported 2,000 recipients`),
		regexp.MustCompile(`(?m)^import\s+2,000\s+4\s+`),       // 4 batches of 500
		regexp.MustCompile(`(?m)^update\s+200\s+1\s+`),         // every 10th recipient
		regexp.MustCompile(`(?m)^all\s+now\s+2,000\s+2,000\s`), // count equals expected
		regexp.MustCompile(`(?m)^pro\s+mid-import\s+[\d,]+\s`),
		regexp.MustCompile(`(?m)^peak RSS \(VmHWM\) \d+ MiB`),
	} {
		if !want.MatchString(out) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}

	// The benchmark database is gone; no other database was touched.
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var left int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_database WHERE datname LIKE 'notifyd_bench_%'`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d notifyd_bench_ databases left behind", left)
	}
	var recipients int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM recipients`).Scan(&recipients); err != nil {
		t.Fatal(err)
	}
	if recipients != 0 {
		t.Errorf("the database of DATABASE_URL got %d recipients; bench-import must use its own", recipients)
	}
}
