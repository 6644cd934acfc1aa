package queue

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/migrations/pgtest"
	"github.com/notifyd/notifyd/notifier"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// grant is one batch let through, when Wait returned (or the fake received it).
type grant struct {
	at time.Time
	n  int
}

type recorder struct {
	mu     sync.Mutex
	grants []grant
}

func (r *recorder) add(n int) {
	r.mu.Lock()
	r.grants = append(r.grants, grant{time.Now(), n})
	r.mu.Unlock()
}

func (r *recorder) list() []grant {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.grants)
	slices.SortFunc(out, func(a, b grant) int { return a.at.Compare(b.at) })
	return out
}

// maxWindow is the most messages in any sliding window [t, t+w) starting at a grant.
func maxWindow(gs []grant, w time.Duration) (most int, at time.Time) {
	sum, j := 0, 0
	for i := range gs {
		for j < len(gs) && gs[j].at.Sub(gs[i].at) < w {
			sum += gs[j].n
			j++
		}
		if sum > most {
			most, at = sum, gs[i].at
		}
		sum -= gs[i].n
	}
	return most, at
}

func total(gs []grant) int {
	n := 0
	for _, g := range gs {
		n += g.n
	}
	return n
}

func countBetween(gs []grant, from, to time.Time) int {
	n := 0
	for _, g := range gs {
		if !g.at.Before(from) && g.at.Before(to) {
			n += g.n
		}
	}
	return n
}

// hammer calls Wait from goroutines until ctx ends, recording each grant.
func hammer(t *testing.T, ctx context.Context, l *PGLimiter, goroutines int, channel string, n int, perBroadcast *float64, broadcastID int64, rec *recorder) *sync.WaitGroup {
	t.Helper()
	var wg sync.WaitGroup
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := l.Wait(ctx, channel, n, perBroadcast, broadcastID); err != nil {
					if ctx.Err() == nil {
						t.Errorf("Wait: %v", err)
					}
					return
				}
				rec.add(n)
			}
		}()
	}
	return &wg
}

// processPool is one more "process" on the database of url.
func processPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func TestPGLimiterSharedRateAcrossProcesses(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	rates := map[string]float64{"email": 100}
	limiters := []*PGLimiter{NewPGLimiter(processPool(t, url), rates), NewPGLimiter(processPool(t, url), rates)}
	const run = 4 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	recs := []*recorder{{}, {}}
	var wgs []*sync.WaitGroup
	for i, l := range limiters {
		wgs = append(wgs, hammer(t, ctx, l, 4, "email", 10, nil, 1, recs[i]))
	}
	for _, wg := range wgs {
		wg.Wait()
	}
	all := append(recs[0].list(), recs[1].list()...)
	slices.SortFunc(all, func(a, b grant) int { return a.at.Compare(b.at) })
	most, at := maxWindow(all, time.Second)
	got := total(all)
	t.Logf("granted %d in %s (process 1: %d, process 2: %d); busiest second: %d at %s",
		got, run, total(recs[0].list()), total(recs[1].list()), most, at.Format("15:04:05.000"))
	takes := limiters[0].takes.Load() + limiters[1].takes.Load()
	t.Logf("%d grant statements for %d grants (%.1f per grant)", takes, got/10, float64(takes)/float64(got/10))
	if most > 110 {
		t.Errorf("a sliding second held %d messages, want at most 110 at rate 100", most)
	}
	if got < 340 || got > 420 {
		t.Errorf("granted %d messages in %s at 100/s, want about 400", got, run)
	}
	for i, r := range recs {
		if n := total(r.list()); n < got/4 {
			t.Errorf("process %d got %d of %d: the bucket is not shared fairly", i+1, n, got)
		}
	}
}

func TestPGLimiterBackoffBlocksThenRampsUp(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	l := NewPGLimiter(pool, map[string]float64{"email": 100})
	ctx, cancel := context.WithTimeout(context.Background(), 5500*time.Millisecond)
	defer cancel()
	rec := &recorder{}
	wg := hammer(t, ctx, l, 4, "email", 5, nil, 1, rec)
	time.Sleep(time.Second)
	before := time.Now()
	if err := l.Backoff(ctx, "email", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	wg.Wait()
	gs := rec.list()

	// Grants already reserved may land right after the backoff (the same race
	// as a request in flight when the 429 arrives); none later, until it ends.
	if n := countBetween(gs, after.Add(50*time.Millisecond), before.Add(2*time.Second)); n != 0 {
		t.Errorf("%d messages granted during the 2 s backoff", n)
	}
	end := before.Add(2 * time.Second)
	first := countBetween(gs, end, end.Add(time.Second))
	second := countBetween(gs, end.Add(time.Second), end.Add(2*time.Second))
	prior := countBetween(gs, before.Add(-500*time.Millisecond), before)
	t.Logf("last half second before: %d; first second after the block: %d; second: %d", prior, first, second)
	if first < 10 || first > 55 {
		t.Errorf("first second after the block let %d through, want about 36 (25%% doubling each second)", first)
	}
	if second <= first || second > 90 {
		t.Errorf("second second after the block let %d through (first %d), want about 72", second, first)
	}
	if most, _ := maxWindow(gs, time.Second); most > 110 {
		t.Errorf("a sliding second held %d", most)
	}
}

func TestPGLimiterLongBackoffReturnsProviderBlocked(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	l := NewPGLimiter(pool, map[string]float64{"email": 100})
	ctx := context.Background()
	if err := l.Backoff(ctx, "email", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// A shorter backoff does not cut a longer one short.
	if err := l.Backoff(ctx, "email", time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := l.Wait(ctx, "email", 1, nil, 0)
	var blocked ErrProviderBlocked
	if !errors.As(err, &blocked) {
		t.Fatalf("Wait during a 10 s backoff = %v, want ErrProviderBlocked", err)
	}
	if time.Since(start) > 500*time.Millisecond {
		t.Errorf("Wait took %s to say the provider is blocked", time.Since(start))
	}
	if left := time.Until(blocked.Until); left < 9*time.Second || left > 10500*time.Millisecond || blocked.Reason != "backoff" || blocked.Channel != "email" {
		t.Errorf("blocked = %+v (%s left), want backoff on email for about 10 s", blocked, left)
	}
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || !st[0].BackingOff || st[0].RateFactor != 0 || st[0].BlockedUntil == nil || st[0].Backoffs != 2 {
		t.Errorf("status = %+v, want email backing off", st)
	}
}

func TestPGLimiterBreakerTripsProbesAndCloses(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	ctx := context.Background()
	l := NewPGLimiter(pool, map[string]float64{"push": 1000})
	l.maxBlock = 0 // report every block at once
	status := func() ProviderStatus {
		t.Helper()
		st, err := l.Status(ctx)
		if err != nil || len(st) != 1 {
			t.Fatalf("Status = %+v, %v", st, err)
		}
		return st[0]
	}
	for i := range 4 {
		if err := l.RecordOutcome(ctx, "push", false); err != nil {
			t.Fatal(err)
		}
		if err := l.Wait(ctx, "push", 1, nil, 0); err != nil {
			t.Fatalf("Wait after %d failures: %v", i+1, err)
		}
	}
	if err := l.RecordOutcome(ctx, "push", false); err != nil {
		t.Fatal(err)
	}
	if s := status(); s.Breaker != "open" || s.ConsecutiveFailures != 5 || s.Trips != 1 || s.ProbeInterval != time.Second {
		t.Fatalf("after 5 failures: %+v, want the breaker open for 1 s", s)
	}
	var blocked ErrProviderBlocked
	if err := l.Wait(ctx, "push", 1, nil, 0); !errors.As(err, &blocked) || blocked.Reason != "breaker_open" {
		t.Fatalf("Wait with the breaker open = %v", err)
	}

	// probeRound waits for the next probe and lets 8 callers race for it.
	probeRound := func(interval time.Duration) {
		t.Helper()
		if left := time.Until(blocked.Until); left < interval-300*time.Millisecond || left > interval+100*time.Millisecond {
			t.Fatalf("next probe in %s, want %s", left, interval)
		}
		time.Sleep(time.Until(blocked.Until) + 20*time.Millisecond)
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = l.Wait(ctx, "push", 10, nil, 0) }()
		}
		wg.Wait()
		probes := 0
		for _, err := range errs {
			var b ErrProviderBlocked
			switch {
			case err == nil:
				probes++
			case errors.As(err, &b) && b.Reason == "probing":
			default:
				t.Errorf("Wait while probing = %v", err)
			}
		}
		if probes != 1 {
			t.Fatalf("%d callers were let through as the probe, want exactly 1", probes)
		}
		if s := status(); s.Breaker != "probing" {
			t.Fatalf("after the probe: %+v", s)
		}
	}
	probeRound(time.Second)
	// The probe fails: open again for twice as long.
	if err := l.RecordOutcome(ctx, "push", false); err != nil {
		t.Fatal(err)
	}
	if s := status(); s.Breaker != "open" || s.ProbeInterval != 2*time.Second || s.Trips != 1 {
		t.Fatalf("after a failed probe: %+v, want open for 2 s", s)
	}
	if err := l.Wait(ctx, "push", 1, nil, 0); !errors.As(err, &blocked) || blocked.Reason != "breaker_open" {
		t.Fatalf("Wait with the breaker open = %v", err)
	}
	probeRound(2 * time.Second)

	// A probe that never reports is replaced after the probe timeout.
	l.probeTimeout = 300 * time.Millisecond
	if _, err := pool.Exec(ctx, `UPDATE provider_limits SET breaker_until = clock_timestamp() + interval '300 milliseconds' WHERE key = 'push'`); err != nil {
		t.Fatal(err)
	}
	if err := l.Wait(ctx, "push", 1, nil, 0); !errors.As(err, &blocked) || blocked.Reason != "probing" {
		t.Fatalf("Wait while probing = %v", err)
	}
	time.Sleep(350 * time.Millisecond)
	if err := l.Wait(ctx, "push", 1, nil, 0); err != nil {
		t.Fatalf("a lost probe was not replaced: %v", err)
	}

	// The probe succeeds: closed, counters reset, the rate ramps up from 25%.
	if err := l.RecordOutcome(ctx, "push", true); err != nil {
		t.Fatal(err)
	}
	if s := status(); s.Breaker != "closed" || s.ConsecutiveFailures != 0 || s.BreakerUntil != nil || s.RateFactor >= 0.5 {
		t.Fatalf("after a successful probe: %+v", s)
	}
	for range 3 {
		if err := l.Wait(ctx, "push", 10, nil, 0); err != nil {
			t.Fatalf("Wait with the breaker closed: %v", err)
		}
	}
}

func TestPGLimiterBreakerProbeWithinWait(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	ctx := context.Background()
	l := NewPGLimiter(pool, map[string]float64{"email": 100})
	for range 5 {
		if err := l.RecordOutcome(ctx, "email", false); err != nil {
			t.Fatal(err)
		}
	}
	// An open breaker with a 1 s probe interval is short enough to sleep out.
	start := time.Now()
	if err := l.Wait(ctx, "email", 1, nil, 1); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 900*time.Millisecond || d > 2*time.Second {
		t.Errorf("the probe was granted after %s, want about 1 s", d)
	}
}

func TestPGLimiterPerBroadcastCap(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	l := NewPGLimiter(pool, map[string]float64{"email": 1000})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	capped, free := &recorder{}, &recorder{}
	rate := 20.0
	wg1 := hammer(t, ctx, l, 4, "email", 1, &rate, 42, capped)
	wg2 := hammer(t, ctx, l, 2, "email", 10, nil, 43, free)
	wg1.Wait()
	wg2.Wait()
	c, f := capped.list(), free.list()
	most, _ := maxWindow(c, time.Second)
	t.Logf("capped broadcast: %d in 2 s (busiest second %d); uncapped broadcast: %d", total(c), most, total(f))
	if n := total(c); n < 30 || n > 45 {
		t.Errorf("broadcast at rate_per_second 20 got %d in 2 s, want about 40", n)
	}
	if most > 22 {
		t.Errorf("broadcast at rate_per_second 20 had %d in one second", most)
	}
	if n := total(f); n < 1000 {
		t.Errorf("another broadcast got only %d in 2 s on a 1000/s provider: the cap is not per broadcast", n)
	}
}

func TestPGLimiterTransactionalAheadOfBulk(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	l := NewPGLimiter(pool, map[string]float64{"email": 100})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	wg := hammer(t, ctx, l, 16, "email", 5, nil, 1, &recorder{})
	time.Sleep(time.Second) // the bulk callers saturate the bucket
	start := time.Now()
	if err := l.Wait(ctx, "email", 1, nil, 0); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	cancel()
	wg.Wait()
	t.Logf("a notification behind 16 saturating bulk callers waited %s", took)
	if took > 800*time.Millisecond {
		t.Errorf("a notification waited %s behind bulk deliveries, want under 800ms", took)
	}
}

func TestPGLimiterMaxBatchUnlimitedAndStatus(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		rate float64
		want int
	}{{100, 5}, {20000, 1000}, {10, 1}, {0.5, 1}, {0, math.MaxInt}} {
		l := NewPGLimiter(nil, map[string]float64{"email": c.rate})
		if got := l.MaxBatch("email"); got != c.want {
			t.Errorf("MaxBatch at %v/s = %d, want %d", c.rate, got, c.want)
		}
	}
	ctx := context.Background()
	// Channels without a rate (the inbox) never touch the database.
	if err := NewPGLimiter(nil, map[string]float64{"email": 100}).Wait(ctx, "inbox", 100000, nil, 1); err != nil {
		t.Fatal(err)
	}
	pool := pgtest.NewPool(t)
	l := NewPGLimiter(pool, map[string]float64{"email": 100, "push": 0})
	l.maxBlock = 0
	if l.MaxBatch("inbox") != math.MaxInt || l.MaxBatch("push") != math.MaxInt {
		t.Error("unlimited channels must not cut batches")
	}
	start := time.Now()
	for range 10 {
		if err := l.Wait(ctx, "push", 100000, nil, 1); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("an unlimited provider took %s for 10 grants", d)
	}
	// ... but still backs off.
	if err := l.Backoff(ctx, "push", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	var blocked ErrProviderBlocked
	if err := l.Wait(ctx, "push", 1, nil, 1); !errors.As(err, &blocked) {
		t.Fatalf("Wait on a backed-off unlimited provider = %v", err)
	}
	// Backoff and outcomes for an unlimited channel are no-ops.
	if err := l.Backoff(ctx, "inbox", time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.RecordOutcome(ctx, "inbox", false); err != nil {
		t.Fatal(err)
	}
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || st[0].Channel != "email" || st[0].Rate != 100 || st[0].Burst != 5 || st[0].Breaker != "closed" ||
		st[1].Channel != "push" || st[1].Rate != 0 || !st[1].BackingOff {
		t.Errorf("status = %+v", st)
	}
}

// fakeChannel is a provider that records when each request arrived.
type fakeChannel struct {
	mu       sync.Mutex
	requests []grant
	accepted map[int64]int
	// respond decides the answer to request number i (from 0): nil accepts.
	respond func(i int) error
}

func (f *fakeChannel) Name() string  { return notifier.ChannelEmail }
func (f *fakeChannel) MaxBatch() int { return 1000 }

func (f *fakeChannel) Send(_ context.Context, msgs []notifier.Message) []notifier.SendResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	var err error
	if f.respond != nil {
		err = f.respond(len(f.requests))
	}
	f.requests = append(f.requests, grant{time.Now(), len(msgs)})
	out := make([]notifier.SendResult, len(msgs))
	for i, m := range msgs {
		out[i] = notifier.SendResult{DeliveryID: m.DeliveryID, Err: err}
		if err == nil {
			out[i].ProviderID = fmt.Sprintf("fake-%d", m.DeliveryID)
			f.accepted[m.DeliveryID]++
		}
	}
	return out
}

func (f *fakeChannel) snapshot() ([]grant, map[int64]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests), cloneCounts(f.accepted)
}

func cloneCounts(m map[int64]int) map[int64]int {
	out := make(map[int64]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// startWorkers runs one worker "process" (pool, limiter, River client) on url.
func startWorkers(t *testing.T, url string, ch notifier.Channel, rates map[string]float64) *notifier.Service {
	t.Helper()
	return startQueue(t, url, ch, rates, Config{BulkWorkers: 4, TransactionalWorkers: 2})
}

// startQueue runs one worker "process" on url's database: its own pool, a
// PGLimiter at rates, ch as the email channel, and cfg's sizes and limits.
func startQueue(t *testing.T, url string, ch notifier.Channel, rates map[string]float64, cfg Config) *notifier.Service {
	t.Helper()
	pool := processPool(t, url)
	cfg.Pool = pool
	cfg.Channels = map[string]notifier.Channel{notifier.ChannelEmail: ch}
	cfg.Limiter = NewPGLimiter(pool, rates)
	_, svc := runQueue(t, cfg)
	return svc
}

// runQueue starts workers with cfg and a Service over cfg.Pool that enqueues
// through them, and stops them when the test ends.
func runQueue(t *testing.T, cfg Config) (*Queue, *notifier.Service) {
	t.Helper()
	cfg.Workers = true
	q, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	svc := notifier.NewService(cfg.Pool, nil, &notifier.ServiceOpts{Enqueuer: q})
	if err := q.Start(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := q.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return q, svc
}

// broadcastTo creates n recipients and an email broadcast to them.
func broadcastTo(t *testing.T, svc *notifier.Service, n int, rate *float64) int64 {
	t.Helper()
	ctx := context.Background()
	ins := make([]notifier.RecipientInput, n)
	ids := make([]string, n)
	for i := range ins {
		ids[i] = fmt.Sprintf("r%05d", i)
		ins[i] = notifier.RecipientInput{ID: ids[i], Email: ids[i] + "@example.com"}
	}
	if _, err := svc.PutRecipients(ctx, ins); err != nil {
		t.Fatal(err)
	}
	key, _, err := svc.CreateAPIKey(ctx, "test", []string{notifier.ScopeSend})
	if err != nil {
		t.Fatal(err)
	}
	b, err := svc.CreateBroadcast(ctx, key, notifier.BroadcastInput{
		Name: "paced", Category: "news", Recipients: ids, Channels: []string{notifier.ChannelEmail},
		Email: &notifier.EmailContent{Subject: "Hello", Text: "Hello {{.Recipient.ID}}"}, RatePerSecond: rate,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.ID
}

func waitCompleted(t *testing.T, svc *notifier.Service, id int64, within time.Duration) *notifier.Broadcast {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b, err := svc.FindBroadcastByID(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if b.Status == notifier.StatusCompleted || time.Now().After(deadline) {
			return b
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func checkOnce(t *testing.T, accepted map[int64]int, want int) {
	t.Helper()
	if len(accepted) != want {
		t.Errorf("the provider accepted %d distinct deliveries, want %d", len(accepted), want)
	}
	for id, n := range accepted {
		if n != 1 {
			t.Errorf("delivery %d accepted %d times", id, n)
		}
	}
}

// Two worker processes on one database share the provider's rate: the
// provider's receipts in any sliding second stay within rate + 10%, and every
// delivery arrives once.
func TestDeliverWorkersPacedAcrossProcesses(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	fake := &fakeChannel{accepted: map[int64]int{}}
	rates := map[string]float64{notifier.ChannelEmail: 200}
	svc := startWorkers(t, url, fake, rates)
	startWorkers(t, url, fake, rates)
	const n = 2000 // two delivery jobs of 1,000, ~10 s at 200/s
	id := broadcastTo(t, svc, n, nil)
	b := waitCompleted(t, svc, id, 60*time.Second)
	reqs, accepted := fake.snapshot()
	most, at := maxWindow(reqs, time.Second)
	t.Logf("%d requests, busiest second %d at %s; counts %+v", len(reqs), most, at.Format("15:04:05.000"), b.Counts)
	if b.Status != notifier.StatusCompleted || b.Counts.Sent != n {
		t.Fatalf("broadcast %s with counts %+v, want completed with %d sent", b.Status, b.Counts, n)
	}
	checkOnce(t, accepted, n)
	if most > 220 {
		t.Errorf("the provider received %d messages in one sliding second at rate 200", most)
	}
	for _, r := range reqs {
		if r.n > 10 {
			t.Errorf("a request carried %d messages, want at most MaxBatch (10 at 200/s)", r.n)
			break
		}
	}
}

// A 429 with Retry-After stops every worker from calling the provider until it
// passes (longer than Wait sleeps, so waiting jobs snooze), then everything is
// delivered once.
func TestDeliverWorkers429BacksOffTheWholeProvider(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	const retryAfter = 4 * time.Second
	fake := &fakeChannel{accepted: map[int64]int{}, respond: func(i int) error {
		if i == 3 {
			return &notifier.SendError{Class: notifier.RateLimited, StatusCode: 429, Reason: "sendgrid_429", RetryAfter: retryAfter}
		}
		return nil
	}}
	rates := map[string]float64{notifier.ChannelEmail: 1000}
	svc := startWorkers(t, url, fake, rates)
	startWorkers(t, url, fake, rates)
	const n = 2500 // three jobs working at once
	id := broadcastTo(t, svc, n, nil)
	b := waitCompleted(t, svc, id, 60*time.Second)
	reqs, accepted := fake.snapshot()
	if b.Status != notifier.StatusCompleted || b.Counts.Sent != n || b.Counts.Failed != 0 {
		t.Fatalf("broadcast %s with counts %+v, want completed with %d sent", b.Status, b.Counts, n)
	}
	checkOnce(t, accepted, n)
	limited := reqs[3].at
	// Requests already granted when the 429 came back may still arrive (as at a
	// real provider); nothing is granted after the backoff is recorded.
	var early []time.Duration
	for _, r := range reqs[4:] {
		if d := r.at.Sub(limited); d > 100*time.Millisecond && d < retryAfter {
			early = append(early, d)
		}
	}
	if len(early) > 0 {
		t.Errorf("%d requests reached the provider during its Retry-After, at %v after the 429", len(early), early)
	}
}

// A broadcast's rate_per_second caps it below the provider's rate.
func TestDeliverWorkersHonourBroadcastRate(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	fake := &fakeChannel{accepted: map[int64]int{}}
	svc := startWorkers(t, url, fake, map[string]float64{notifier.ChannelEmail: 10000})
	rate := 50.0
	const n = 150
	start := time.Now()
	id := broadcastTo(t, svc, n, &rate)
	b := waitCompleted(t, svc, id, 30*time.Second)
	reqs, accepted := fake.snapshot()
	if b.Status != notifier.StatusCompleted || b.Counts.Sent != n {
		t.Fatalf("broadcast %s with counts %+v", b.Status, b.Counts)
	}
	checkOnce(t, accepted, n)
	took := reqs[len(reqs)-1].at.Sub(start)
	most, _ := maxWindow(reqs, time.Second)
	t.Logf("%d at rate_per_second 50 took %s, busiest second %d", n, took, most)
	if took < 2500*time.Millisecond || most > 55 {
		t.Errorf("%d deliveries at 50/s went out in %s with %d in one second", n, took, most)
	}
}

// BenchmarkLimiterWait measures the limiter's own cost with grants of 500:
// at 1,000,000 messages/s (2,000 grants/s: the rate binds), and with a rate so
// high that only the database round trip bounds it (the limiter's ceiling).
// ns/take is the time of one grant statement, the limiter's whole overhead per
// grant when the bucket has tokens.
func BenchmarkLimiterWait(b *testing.B) {
	for _, bc := range []struct {
		name string
		rate float64
	}{{"rate=1M/batch=500", 1_000_000}, {"rate=unbound/batch=500", 1e12}} {
		b.Run(bc.name, func(b *testing.B) {
			pool := pgtest.NewPool(b)
			const batch = 500
			l := NewPGLimiter(pool, map[string]float64{"email": bc.rate})
			ctx := context.Background()
			if err := l.Wait(ctx, "email", 1, nil, 1); err != nil {
				b.Fatal(err)
			}
			l.takes.Store(0)
			l.takeNanos.Store(0)
			b.SetParallelism(4)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := l.Wait(ctx, "email", batch, nil, 1); err != nil {
						b.Error(err)
						return
					}
				}
			})
			elapsed := time.Since(start)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "grants/s")
			b.ReportMetric(float64(b.N*batch)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(float64(l.takeNanos.Load())/float64(l.takes.Load()), "ns/take")
			b.ReportMetric(float64(l.takes.Load())/float64(b.N), "takes/grant")
		})
	}
}
