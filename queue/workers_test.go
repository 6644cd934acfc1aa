package queue

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/notifyd/notifyd/migrations/pgtest"
	"github.com/notifyd/notifyd/notifier"
)

// sliceChannel is a provider that records which deliveries each request
// carried; answer decides, per request number (from 0) and delivery, the error
// to answer with (nil accepts).
type sliceChannel struct {
	mu       sync.Mutex
	requests [][]int64
	answer   func(request int, deliveryID int64) error
}

func (f *sliceChannel) Name() string  { return notifier.ChannelEmail }
func (f *sliceChannel) MaxBatch() int { return 1000 }

func (f *sliceChannel) Send(_ context.Context, msgs []notifier.Message) []notifier.SendResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := len(f.requests)
	ids := make([]int64, len(msgs))
	out := make([]notifier.SendResult, len(msgs))
	for j, m := range msgs {
		ids[j] = m.DeliveryID
		out[j] = notifier.SendResult{DeliveryID: m.DeliveryID, Err: f.answer(i, m.DeliveryID)}
		if out[j].Err == nil {
			out[j].ProviderID = fmt.Sprintf("fake-%d", m.DeliveryID)
		}
	}
	f.requests = append(f.requests, ids)
	return out
}

// received returns the requests so far and how often each delivery was accepted.
func (f *sliceChannel) received() ([][]int64, map[int64]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	accepted := map[int64]int{}
	for i, ids := range f.requests {
		for _, id := range ids {
			if f.answer(i, id) == nil {
				accepted[id]++
			}
		}
	}
	return slices.Clone(f.requests), accepted
}

// deliveryRow is a delivery as the tests read it back.
type deliveryRow struct {
	id       int64
	status   string
	reason   string
	attempts int
}

func deliveriesOf(t *testing.T, svc *notifier.Service, broadcastID int64) []deliveryRow {
	t.Helper()
	rows, err := svc.Pool().Query(context.Background(), `SELECT id, status, coalesce(reason, ''), attempts
		FROM deliveries WHERE broadcast_id = $1 ORDER BY id`, broadcastID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []deliveryRow
	for rows.Next() {
		var d deliveryRow
		if err := rows.Scan(&d.id, &d.status, &d.reason, &d.attempts); err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// deliverJobErrors counts the errors River recorded on deliver jobs: each one
// is a River attempt used.
func deliverJobErrors(t *testing.T, svc *notifier.Service) int {
	t.Helper()
	var n int
	err := svc.Pool().QueryRow(context.Background(), `SELECT coalesce(sum(coalesce(array_length(errors, 1), 0)), 0)
		FROM river_job WHERE kind = $1`, DeliverArgs{}.Kind()).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// startRetryWorkers runs one worker process with a limit of maxAttempts per
// delivery (0: the default) and an email rate over url's database.
func startRetryWorkers(t *testing.T, url string, ch notifier.Channel, rate float64, maxAttempts int) *notifier.Service {
	t.Helper()
	return startQueue(t, url, ch, map[string]float64{notifier.ChannelEmail: rate},
		Config{BulkWorkers: 2, TransactionalWorkers: 1, MaxDeliveryAttempts: maxAttempts})
}

func serverError() error {
	return &notifier.SendError{Class: notifier.Transient, StatusCode: 500, Reason: "sendgrid_500"}
}

// A slice answered 500 does not hold up the others: the job sends every other
// slice in the same run, then retries the failed slice alone, and River counts
// no attempt for it.
func TestDeliverWorkerFailingSliceDoesNotHoldUpTheOthers(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	// At 200/s a slice carries at most 10 messages: 100 deliveries are one job
	// of 10 slices.
	fake := &sliceChannel{answer: func(request int, _ int64) error {
		if request == 1 {
			return serverError()
		}
		return nil
	}}
	svc := startRetryWorkers(t, url, fake, 200, 0)
	const n = 100
	id := broadcastTo(t, svc, n, nil)
	b := waitCompleted(t, svc, id, 60*time.Second)
	if b.Status != notifier.StatusCompleted || b.Counts.Sent != n {
		t.Fatalf("broadcast %s with counts %+v, want completed with %d sent", b.Status, b.Counts, n)
	}
	reqs, accepted := fake.received()
	checkOnce(t, accepted, n)
	if len(reqs) != 11 {
		t.Fatalf("%d provider requests, want 10 slices + 1 retry", len(reqs))
	}
	failed := reqs[1]
	// Every other slice went out before the failed one was retried, and the
	// retry carried exactly the failed slice.
	if !slices.Equal(reqs[10], failed) {
		t.Errorf("last request carried %v, want the retry of the failed slice %v", reqs[10], failed)
	}
	retried := map[int64]bool{}
	for _, id := range failed {
		retried[id] = true
	}
	for _, d := range deliveriesOf(t, svc, id) {
		want := 1
		if retried[d.id] {
			want = 2
		}
		if d.status != notifier.DeliverySent || d.attempts != want {
			t.Errorf("delivery %d: %s after %d attempts, want sent after %d", d.id, d.status, d.attempts, want)
		}
	}
	if errs := deliverJobErrors(t, svc); errs != 0 {
		t.Errorf("River recorded %d errors on the deliver job, want 0: a delivery's retry is not a job attempt", errs)
	}
}

// A delivery that always fails transiently gives up after its own attempts
// (failed, "gave_up: ... after N attempts") while the rest of its job is sent
// once; the broadcast completes.
func TestDeliverWorkerDeliveryGivesUpAfterItsAttempts(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	const maxAttempts = 3
	var poisoned struct {
		mu sync.Mutex
		id int64 // the first delivery the provider sees
	}
	fake := &sliceChannel{answer: func(_ int, deliveryID int64) error {
		poisoned.mu.Lock()
		defer poisoned.mu.Unlock()
		if poisoned.id == 0 {
			poisoned.id = deliveryID
		}
		if deliveryID == poisoned.id {
			return serverError()
		}
		return nil
	}}
	svc := startRetryWorkers(t, url, fake, 1000, maxAttempts)
	const n = 20
	id := broadcastTo(t, svc, n, nil)
	b := waitCompleted(t, svc, id, 60*time.Second)
	if b.Status != notifier.StatusCompleted || b.Counts.Sent != n-1 || b.Counts.Failed != 1 {
		t.Fatalf("broadcast %s with counts %+v, want completed with %d sent and 1 failed", b.Status, b.Counts, n-1)
	}
	reqs, accepted := fake.received()
	checkOnce(t, accepted, n-1)
	calls := 0
	for _, ids := range reqs {
		calls += len(slices.DeleteFunc(slices.Clone(ids), func(id int64) bool { return id != poisoned.id }))
	}
	if calls != maxAttempts {
		t.Errorf("the failing delivery reached the provider %d times, want %d", calls, maxAttempts)
	}
	for _, d := range deliveriesOf(t, svc, id) {
		switch {
		case d.id == poisoned.id:
			want := fmt.Sprintf("gave_up: sendgrid_500 after %d attempts", maxAttempts)
			if d.status != notifier.DeliveryFailed || d.reason != want || d.attempts != maxAttempts {
				t.Errorf("failing delivery: %s %q after %d attempts, want failed %q", d.status, d.reason, d.attempts, want)
			}
		case d.status != notifier.DeliverySent || d.attempts != 1:
			t.Errorf("delivery %d: %s after %d attempts, want sent after 1", d.id, d.status, d.attempts)
		}
	}
	if errs := deliverJobErrors(t, svc); errs != 0 {
		t.Errorf("River recorded %d errors on the deliver job, want 0", errs)
	}
}

// A 429 does not use up an attempt: with 2 attempts per delivery, three 429s
// in a row still end with everything sent, each delivery after 1 attempt.
func TestDeliverWorker429DoesNotUseAttempts(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	fake := &sliceChannel{answer: func(request int, _ int64) error {
		if request < 3 {
			return &notifier.SendError{Class: notifier.RateLimited, StatusCode: 429, Reason: "sendgrid_429", RetryAfter: 500 * time.Millisecond}
		}
		return nil
	}}
	svc := startRetryWorkers(t, url, fake, 1000, 2)
	const n = 10
	id := broadcastTo(t, svc, n, nil)
	b := waitCompleted(t, svc, id, 60*time.Second)
	if b.Status != notifier.StatusCompleted || b.Counts.Sent != n {
		t.Fatalf("broadcast %s with counts %+v, want completed with %d sent", b.Status, b.Counts, n)
	}
	reqs, accepted := fake.received()
	checkOnce(t, accepted, n)
	if len(reqs) != 4 {
		t.Errorf("%d provider requests, want 3 answered 429 and 1 accepted", len(reqs))
	}
	for _, d := range deliveriesOf(t, svc, id) {
		if d.status != notifier.DeliverySent || d.attempts != 1 {
			t.Errorf("delivery %d: %s after %d attempts, want sent after 1 (429s are not attempts)", d.id, d.status, d.attempts)
		}
	}
}

func TestRetrySnooze(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		sum      notifier.RecordSummary
		floor    time.Duration
		min, max time.Duration
	}{
		{"nothing to retry", notifier.RecordSummary{}, 0, 0, 0},
		{"nothing to retry, continuing", notifier.RecordSummary{Sent: 5}, time.Second, time.Second, time.Second},
		{"first attempt", notifier.RecordSummary{Retry: 3, RetryAttempts: 1}, 0, 800 * time.Millisecond, 1200 * time.Millisecond},
		{"fourth attempt", notifier.RecordSummary{Retry: 3, RetryAttempts: 4}, time.Second, 6400 * time.Millisecond, 9600 * time.Millisecond},
		{"capped", notifier.RecordSummary{Retry: 1, RetryAttempts: 11}, 0, 48 * time.Second, 72 * time.Second},
		{"429 without Retry-After", notifier.RecordSummary{Retry: 3, RateLimited: true}, 0, time.Second, time.Second},
		{"429 waits its Retry-After", notifier.RecordSummary{Retry: 3, RetryAttempts: 1, RateLimited: true, RetryAfter: 5 * time.Second}, 0, 5 * time.Second, 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for range 20 {
				if d := retrySnooze(tt.sum, tt.floor); d < tt.min || d > tt.max {
					t.Fatalf("retrySnooze = %v, want %v to %v", d, tt.min, tt.max)
				}
			}
		})
	}
}

func TestTimingSettingsAreConsistent(t *testing.T) {
	t.Parallel()
	for _, send := range []time.Duration{time.Second, 10 * time.Second, DefaultSendTimeout, 5 * time.Minute} {
		job := jobTimeout(send)
		// A job starts slices for up to send, then one more provider call.
		if job < 2*send {
			t.Errorf("send timeout %v: job timeout %v cannot hold two provider calls", send, job)
		}
		// A record may finish up to 30 s after the job's timeout.
		if MinRescueAfter(send) < job+30*time.Second {
			t.Errorf("send timeout %v: rescue may start at %v, while the job may still be recording", send, MinRescueAfter(send))
		}
		// A claim is recorded within a provider call and a record.
		if sweepAfter(send) < send+30*time.Second {
			t.Errorf("send timeout %v: sweep after %v may catch a claim still being sent", send, sweepAfter(send))
		}
	}
	if DefaultRescueAfter < MinRescueAfter(DefaultSendTimeout) {
		t.Errorf("default rescue %v is below the minimum %v", DefaultRescueAfter, MinRescueAfter(DefaultSendTimeout))
	}
	if _, err := New(Config{SendTimeout: 10 * time.Second, RescueAfter: 30 * time.Second}); err == nil {
		t.Error("New accepted a rescue delay shorter than a job can run")
	}
}

// heldChannel holds the first request until released, telling atProvider when
// it arrives, and answers every message with answer (nil accepts).
type heldChannel struct {
	atProvider chan struct{}
	release    chan struct{}
	once       sync.Once
	answer     error
	// gateClosed, when set, gets whether the send gate closed within 5 s of
	// the release: whether another request could still have started.
	gateClosed chan bool
}

func (f *heldChannel) Name() string  { return notifier.ChannelEmail }
func (f *heldChannel) MaxBatch() int { return 1000 }

func (f *heldChannel) Send(ctx context.Context, msgs []notifier.Message) []notifier.SendResult {
	f.once.Do(func() {
		close(f.atProvider)
		<-f.release
		if f.gateClosed != nil {
			deadline := time.Now().Add(5 * time.Second)
			for notifier.SendGateOpen(ctx) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			f.gateClosed <- !notifier.SendGateOpen(ctx)
		}
	})
	out := make([]notifier.SendResult, len(msgs))
	for i, m := range msgs {
		out[i] = notifier.SendResult{DeliveryID: m.DeliveryID, Err: f.answer}
		if f.answer == nil {
			out[i].ProviderID = fmt.Sprintf("held-%d", m.DeliveryID)
		}
	}
	return out
}

// When the connection holding the send lock dies while the batch is at the
// provider (what a PostgreSQL restart does to every connection), the results
// are still recorded, under a new lock: the deliveries end as the provider
// said, not unknown. A cancel that ran meanwhile (nothing held it off) still
// stops them: what the record would put back to pending is cancelled. And the
// batch's send gate closes, so that it starts no further provider request.
func TestDeliverWorkerRecordsAfterLosingTheSendLockConnection(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		answer error
		cancel bool
		want   string
	}{
		{"sent", nil, false, notifier.DeliverySent},
		{"retry after a cancel", serverError(), true, notifier.DeliveryCancelled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url := pgtest.NewDatabase(t)
			ch := &heldChannel{atProvider: make(chan struct{}), release: make(chan struct{}), answer: tc.answer, gateClosed: make(chan bool, 1)}
			svc := startRetryWorkers(t, url, ch, 100000, 0)
			id := broadcastTo(t, svc, 20, nil)
			select {
			case <-ch.atProvider:
			case <-time.After(30 * time.Second):
				t.Fatal("no batch reached the provider")
			}
			terminateConnections(t, url)
			// Read and act through connections opened after the kill.
			after := notifier.NewService(processPool(t, url), nil, &notifier.ServiceOpts{})
			if tc.cancel {
				if _, err := after.CancelBroadcast(context.Background(), "test", id); err != nil {
					t.Fatal(err)
				}
			}
			close(ch.release)
			if !<-ch.gateClosed {
				t.Error("the send gate stayed open after the send lock's connection died")
			}

			deadline := time.Now().Add(30 * time.Second)
			for {
				var open int
				for _, d := range deliveriesOf(t, after, id) {
					if d.status == notifier.DeliverySending || d.status == notifier.DeliveryPending && !tc.cancel {
						open++
					}
				}
				if open == 0 || time.Now().After(deadline) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			time.Sleep(500 * time.Millisecond) // a cancelled broadcast has no completion to wait for
			for _, d := range deliveriesOf(t, after, id) {
				if d.status != tc.want {
					t.Errorf("delivery %d is %s (%s), want %s", d.id, d.status, d.reason, tc.want)
				}
			}
		})
	}
}

// terminateConnections ends every other connection to url's database, as a
// PostgreSQL restart would.
func terminateConnections(t *testing.T, url string) {
	t.Helper()
	killer, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer killer.Close(context.Background())
	var killed int
	if err := killer.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed == 0 {
		t.Fatal("no connection to terminate")
	}
}
