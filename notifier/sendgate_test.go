package notifier_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/notifyd/notifyd/migrations/pgtest"
	"github.com/notifyd/notifyd/notifier"
)

// The guard's gate stays open while the lock's connection lives, leaves the
// connection usable once stopped, and closes when the connection dies.
func TestSendLockGuardClosesWhenTheConnectionDies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	svc := notifier.NewService(pool, nil, &notifier.ServiceOpts{})

	lock, err := svc.AcquireSendLock(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	guarded, stop := lock.Guard(ctx)
	time.Sleep(50 * time.Millisecond) // let the watcher start waiting
	if !notifier.SendGateOpen(guarded) {
		t.Fatal("the gate is closed while the lock's connection lives")
	}
	stop()
	var one int
	if err := lock.Conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("the lock's connection after the guard stopped: %d, %v", one, err)
	}

	guarded, stop = lock.Guard(ctx)
	pid := lock.Conn.Conn().PgConn().PID()
	if _, err := pool.Exec(ctx, "SELECT pg_terminate_backend($1)", int32(pid)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); notifier.SendGateOpen(guarded); {
		if time.Now().After(deadline) {
			t.Fatal("the gate is still open 5 s after the lock's connection was terminated")
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	lock.Release(ctx)
}

// GateTransport lets a request through while its gate is open, and answers a
// closed gate's request itself, without the provider seeing it.
func TestGateTransportAnswersForAClosedGate(t *testing.T) {
	t.Parallel()
	var seen atomic.Int32
	provider := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(provider.Close)
	client := &http.Client{Transport: notifier.GateTransport(http.DefaultTransport.(*http.Transport).Clone())}

	for _, tc := range []struct {
		name       string
		ctx        context.Context
		wantStatus int
		wantSeen   int32
	}{
		{"no gate", context.Background(), http.StatusAccepted, 1},
		{"open gate", notifier.WithSendGate(context.Background(), func() bool { return true }), http.StatusAccepted, 2},
		{"closed gate", notifier.WithSendGate(context.Background(), func() bool { return false }), notifier.StatusNotSent, 2},
	} {
		req, err := http.NewRequestWithContext(tc.ctx, http.MethodPost, provider.URL, http.NoBody)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.wantStatus || seen.Load() != tc.wantSeen {
			t.Errorf("%s: status %d, provider saw %d requests; want %d and %d", tc.name, resp.StatusCode, seen.Load(), tc.wantStatus, tc.wantSeen)
		}
		if notSent := resp.Header.Get(notifier.NotSentHeader); (tc.wantStatus == notifier.StatusNotSent) != (notSent == "send_lock_lost") {
			t.Errorf("%s: %s = %q", tc.name, notifier.NotSentHeader, notSent)
		}
	}
}
