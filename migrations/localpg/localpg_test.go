package localpg

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// startTime connects to the cluster and returns when its postmaster started.
func startTime(ctx context.Context, t *testing.T, c *Cluster) time.Time {
	t.Helper()
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var at time.Time
	if err := conn.QueryRow(ctx, "SELECT pg_postmaster_start_time()").Scan(&at); err != nil {
		t.Fatalf("postmaster start time: %v", err)
	}
	return at
}

// TestRestartReturnsAndServesOnTheSamePort: Restart used to hang (the new
// postmaster kept pg_ctl's output pipe open); it must return promptly, in
// every mode, with a new server taking connections on the same port.
func TestRestartReturnsAndServesOnTheSamePort(t *testing.T) {
	t.Parallel()
	if _, err := FindBin(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "notifyd-localpg-test-")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Start(ctx, dir, Options{MaxConnections: 20})
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Destroy(); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	before := startTime(ctx, t, c)
	for _, mode := range []string{"fast", "immediate"} {
		restartCtx, cancelRestart := context.WithTimeout(ctx, time.Minute)
		err := c.Restart(restartCtx, mode)
		cancelRestart()
		if err != nil {
			t.Fatalf("restart -m %s: %v", mode, err)
		}
		after := startTime(ctx, t, c)
		if !after.After(before) {
			t.Fatalf("restart -m %s: postmaster start time %v, not after %v: the server did not restart", mode, after, before)
		}
		before = after
	}
}
