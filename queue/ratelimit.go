package queue

// Provider protection (design invariant 5): a global rate per provider shared by
// every worker process on the same database, a provider-wide backoff on 429 /
// Retry-After, and a circuit breaker for sustained failures.
//
// # The bucket
//
// Each rate-limited provider ("email", "push") has one row in provider_limits, and
// so has each broadcast with its own rate_per_second ("broadcast:<id>"). The row is
// a token bucket kept as GCRA: tat is the time at which every token granted so far
// has accrued, so the tokens available now are least(burst, rate*(now - tat)). A
// grant of n is ONE atomic statement (a locking CTE and an UPDATE) timed by the
// database's clock_timestamp(), so every process shares one clock:
//
//	base  = greatest(tat, now - burst/rate)     -- what the bucket holds, as a time
//	valid = base + n/(rate*ramp(base))          -- when n tokens have accrued
//
// If base <= now + horizon (the grants already reserved ahead of us are short),
// the caller reserves: tat = valid, and it sleeps until valid, then sends. The
// grants are exactly those of a token bucket served in order, one DB round trip
// each, with no retry storm while the bucket is empty. Otherwise nothing changes,
// and the caller sleeps until the queue ahead is short enough (plus jitter) and
// tries again. A batch of n messages (a SendGrid request of n personalizations)
// is one grant of n; a grant larger than the burst simply waits until all n
// tokens have accrued at the rate (Wait(1000) at 100/s lasts about 10 s).
//
// # Burst, batch size and pace
//
// A request of n messages reaches the provider at one instant, and some time
// after its grant (claim, rendering, HTTP) that varies from request to request.
// So the count in a sliding one-second window can exceed the rate by the burst,
// plus one batch (a window whose edges catch one request late and the next on
// time), plus rate x the spread of those delays. Burst and the largest batch are
// both 50 ms of the configured rate (burstFor), and the buckets refill at 95% of
// it (paceFactor): with a spread of up to ~100 ms the provider still sees at most
// the rate + 10%, e.g. 110 in any second at NOTIFYD_EMAIL_RATE=100 (measured on a
// loaded 2-CPU machine under -race: 105). MaxBatch returns the batch size and the
// deliver worker cuts its batches to it; at 20,000/s it is 1,000, SendGrid's own
// limit, so high rates keep full-size requests.
//
// # Priority
//
// Bulk callers (broadcast deliveries) only reserve while the queue ahead is under
// bulkHorizon (500 ms); transactional ones (broadcastID 0: notifications) up to
// priorityHorizon (2 s). So however many bulk workers wait, a notification stands
// behind at most ~500 ms of bulk grants.
//
// # Backoff and ramp
//
// Backoff(channel, d) sets blocked_until = greatest(blocked_until, now + d) and
// empties the bucket at that moment. Nobody is granted before blocked_until; a
// caller that had reserved and slept more than confirmAfter re-checks the row
// before returning and, if a block started meanwhile, takes again. After the
// block the rate restarts at 25% and doubles every second: ramp(t) =
// min(1, 0.25 * 2^(t - blocked_until)), i.e. 25% at the end of the block, 50% one
// second later, full after two seconds (about 36% of a full second's messages in
// the first second, 72% in the second). The factor is taken at the start of each
// grant's interval, so it errs on the slow side. A breaker closing ramps the same
// way from the moment it closes.
//
// # Circuit breaker
//
// RecordOutcome counts consecutive failed batches per provider in the same row
// (any success resets it). After failureThreshold (5) the breaker opens for
// probeMin (1 s); when that passes, one Wait call (whoever asks first, in any
// process) is granted as the probe and the breaker goes to probing, while the
// others stay blocked. The probe's success closes the breaker; its failure opens
// it again for twice as long (1, 2, 4, 8, 16, 30, 30... s). A probe that never
// reports (its worker died, or its broadcast was cancelled before the send) is
// replaced by another after probeTimeout (10 s).
//
// # Blocked callers
//
// A Wait blocked (backoff or breaker) for at most maxBlock (3 s) in total sleeps
// it out; a longer block returns ErrProviderBlocked{Until} at once, which the
// deliver worker turns into river.JobSnooze: the job comes back later and no
// attempt is counted, so an outage never fails a delivery by using up retries.
//
// # Delivery batches
//
// A delivery job carries up to notifier.BatchSize deliveries (1,000 emails),
// far more than MaxBatch at modest rates. The deliver worker cuts the job into
// parts of at most MaxBatch (and the broadcast's own burst) over its pending
// deliveries (deliveryParts), and each part is paced, then locked, claimed, sent
// and recorded on its own, so the send lock is never held while waiting for
// tokens and claim semantics are unchanged. A job that has paced parts for longer
// than SendTimeout snoozes (not an attempt) and continues in a later run.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/notifier"
)

const (
	// burstWindow sizes the burst and the largest batch: 50 ms of the rate.
	burstWindow = 50 * time.Millisecond
	// paceFactor: buckets refill at 95% of the configured rate. The 5% absorbs
	// the variable delay between a grant and its request reaching the provider
	// (scheduling, claim, HTTP): with it, a send late by up to ~100 ms still
	// keeps the provider's sliding one-second count within the rate + 10%.
	paceFactor = 0.95
	// unlimitedRate stands for "no rate" in a provider row that still needs
	// backoff and the breaker.
	unlimitedRate = 1e9
	// pruneEvery and pruneAfter drop the rows of broadcasts no longer sending.
	pruneEvery = 10 * time.Minute
	pruneAfter = 24 * time.Hour
)

// ErrProviderBlocked is returned by Wait when the provider is blocked (a 429's
// Retry-After, or an open circuit breaker) for longer than Wait sleeps. The
// caller should come back at Until; nothing was taken.
type ErrProviderBlocked struct {
	Channel string
	Until   time.Time
	// Reason is "backoff", "breaker_open" or "probing" (another caller's probe
	// is out).
	Reason string
}

func (e ErrProviderBlocked) Error() string {
	return fmt.Sprintf("provider %s is blocked (%s) until %s", e.Channel, e.Reason, e.Until.Format(time.RFC3339Nano))
}

// ProviderStatus is one provider's limiter state, for status pages and metrics.
type ProviderStatus struct {
	Channel string `json:"channel"`
	// Rate is the configured messages per second; 0 means unlimited (backoff
	// and the breaker still apply).
	Rate  float64 `json:"rate"`
	Burst float64 `json:"burst"`
	// Tokens is what the bucket holds now; negative when grants are reserved
	// ahead (-Tokens/Rate is how long the queue of reserved grants is).
	Tokens float64 `json:"tokens"`
	// RateFactor is the ramp after a block: 0 while blocked, 0.25..1 after.
	RateFactor   float64    `json:"rate_factor"`
	BlockedUntil *time.Time `json:"blocked_until,omitempty"`
	BackingOff   bool       `json:"backing_off"` // blocked by a 429 right now
	// Breaker is closed, open or probing.
	Breaker             string        `json:"breaker"`
	BreakerUntil        *time.Time    `json:"breaker_until,omitempty"`
	ProbeInterval       time.Duration `json:"probe_interval"`
	ConsecutiveFailures int           `json:"consecutive_failures"`
	Backoffs            int64         `json:"backoffs"` // 429s reported, ever
	Trips               int64         `json:"trips"`    // times the breaker opened from closed
	// Waiting is how many callers are inside Wait for this channel in this
	// process now.
	Waiting int64 `json:"waiting"`
}

type channelLimit struct {
	rate, burst float64 // as stored; unlimitedRate when unlimited
	configured  float64 // as given, 0 when unlimited
	unlimited   bool
	waiting     atomic.Int64
}

// PGLimiter is the Postgres-backed Limiter shared by every worker process.
type PGLimiter struct {
	pool     *pgxpool.Pool
	channels map[string]*channelLimit

	// Tunables; see the package comment. Tests shorten some of them.
	bulkHorizon, priorityHorizon time.Duration
	maxBlock, confirmAfter       time.Duration
	failureThreshold             int
	probeMin, probeMax           time.Duration
	probeTimeout                 time.Duration

	mu        sync.Mutex
	ensured   map[string]bool
	lastPrune time.Time

	// takes and takeTime count grant statements and their time (benchmarks).
	takes, takeNanos atomic.Int64
}

var _ Limiter = (*PGLimiter)(nil)

// NewPGLimiter returns a limiter over pool with a global rate in messages per
// second for each channel in rates ("email", "push"), shared by every process
// using the same database. A rate <= 0 means no rate limit, but the channel still
// gets the 429 backoff and the circuit breaker. Channels not in rates (the inbox)
// are not limited at all. Each channel's row is created, or its rate updated to
// this process's configuration, on first use.
func NewPGLimiter(pool *pgxpool.Pool, rates map[string]float64) *PGLimiter {
	l := &PGLimiter{
		pool:             pool,
		channels:         map[string]*channelLimit{},
		bulkHorizon:      500 * time.Millisecond,
		priorityHorizon:  2 * time.Second,
		maxBlock:         3 * time.Second,
		confirmAfter:     20 * time.Millisecond,
		failureThreshold: 5,
		probeMin:         time.Second,
		probeMax:         30 * time.Second,
		probeTimeout:     10 * time.Second,
		ensured:          map[string]bool{},
	}
	for ch, rate := range rates {
		c := &channelLimit{rate: rate * paceFactor, configured: rate, burst: float64(burstFor(rate))}
		if !(rate > 0) || math.IsInf(rate, 1) {
			c.unlimited, c.rate, c.configured = true, unlimitedRate, 0
			c.burst = unlimitedRate * burstWindow.Seconds()
		}
		l.channels[ch] = c
	}
	return l
}

// burstFor is the burst, and the largest batch, for a rate: 50 ms worth, at least 1.
func burstFor(rate float64) int {
	if !(rate > 0) {
		return math.MaxInt
	}
	b := rate * burstWindow.Seconds()
	if b >= math.MaxInt32 {
		return math.MaxInt32
	}
	return max(1, int(b))
}

// MaxBatch is the most messages that should go to channel's provider in one
// request: 50 ms of its rate, so that one request never makes the provider's
// sliding one-second count exceed the rate by more than about 10%
// (math.MaxInt when the channel has no rate).
func (l *PGLimiter) MaxBatch(channel string) int {
	c := l.channels[channel]
	if c == nil || c.unlimited {
		return math.MaxInt
	}
	return burstFor(c.configured)
}

func broadcastKey(id int64) string { return "broadcast:" + strconv.FormatInt(id, 10) }

// Wait returns when n messages may be sent to channel's provider: n tokens of
// the broadcast's own bucket (when perBroadcast is set), then n of the
// provider's. broadcastID 0 means a transactional notification, which goes ahead
// of bulk callers. It returns ErrProviderBlocked when the provider is blocked for
// longer than Wait sleeps, and ctx's error when ctx ends.
func (l *PGLimiter) Wait(ctx context.Context, channel string, n int, perBroadcast *float64, broadcastID int64) error {
	if n <= 0 {
		return nil
	}
	c := l.channels[channel]
	if c != nil {
		c.waiting.Add(1)
		defer c.waiting.Add(-1)
	}
	if perBroadcast != nil && *perBroadcast > 0 && broadcastID != 0 {
		burst := float64(burstFor(*perBroadcast))
		rate := *perBroadcast * paceFactor
		horizon := max(l.bulkHorizon, seconds(burst/rate))
		if err := l.take(ctx, channel, broadcastKey(broadcastID), float64(n), horizon, &bucket{rate, burst}); err != nil {
			return err
		}
	}
	if c == nil {
		return nil
	}
	if err := l.ensure(ctx, channel); err != nil {
		return err
	}
	horizon := l.bulkHorizon
	if broadcastID == 0 {
		horizon = l.priorityHorizon
	}
	horizon = max(horizon, seconds(c.burst/c.rate))
	return l.take(ctx, channel, channel, float64(n), horizon, nil)
}

type bucket struct{ rate, burst float64 }

// takeSQL grants n tokens of one row, or says how long to wait. $1 key, $2 n,
// $3 horizon (s), $4 probe timeout (s), $5/$6 rate and burst to set (a
// broadcast's row) or NULL (a provider's, as configured).
const takeSQL = `
WITH c AS (
	SELECT key, coalesce($5::float8, rate) AS rate, coalesce($6::float8, burst) AS burst,
		tat, blocked_until, ramp_from, breaker_state, breaker_until, probe_interval,
		clock_timestamp() AS now
	FROM provider_limits WHERE key = $1 FOR UPDATE
), s AS (
	SELECT c.*,
		CASE
			WHEN c.blocked_until > c.now THEN 'backoff'
			WHEN c.breaker_state = 'open' AND c.breaker_until > c.now THEN 'breaker_open'
			WHEN c.breaker_state = 'probing' AND c.breaker_until > c.now THEN 'probing'
		END AS block,
		c.breaker_state <> 'closed' AS probe,
		greatest(c.tat, c.now - make_interval(secs => c.burst / c.rate)) AS base
	FROM c
), d AS (
	SELECT s.*,
		s.block IS NULL AND (s.probe OR s.base <= s.now + make_interval(secs => $3::float8)) AS granted,
		s.base + make_interval(secs => $2::float8 / (s.rate * CASE
			WHEN s.ramp_from IS NULL OR s.base >= s.ramp_from + interval '2 seconds' THEN 1
			ELSE 0.25 * power(2, greatest(0, extract(epoch FROM s.base - s.ramp_from)::float8))
		END)) AS valid
	FROM s
), u AS (
	UPDATE provider_limits l SET
		rate = d.rate, burst = d.burst, tat = d.valid, updated_at = d.now,
		breaker_state = CASE WHEN d.probe THEN 'probing' ELSE l.breaker_state END,
		breaker_until = CASE WHEN d.probe THEN d.now + make_interval(secs => $4::float8) ELSE l.breaker_until END
	FROM d WHERE l.key = d.key AND d.granted
)
SELECT d.granted, d.granted AND d.probe, d.block, extract(epoch FROM CASE
		WHEN d.granted THEN d.valid - d.now
		WHEN d.block = 'backoff' THEN d.blocked_until - d.now
		WHEN d.block = 'breaker_open' THEN d.breaker_until - d.now
		WHEN d.block = 'probing' THEN least(d.breaker_until - d.now, make_interval(secs => greatest(d.probe_interval, 0.5)))
		ELSE d.base - d.now - make_interval(secs => $3::float8)
	END)::float8
FROM d`

type takeResult struct {
	granted, probe bool
	block          *string
	wait           time.Duration
}

func (l *PGLimiter) takeOnce(ctx context.Context, key string, n float64, horizon time.Duration, b *bucket) (takeResult, error) {
	var (
		r    takeResult
		secs float64
		rate *float64
		brst *float64
	)
	if b != nil {
		rate, brst = &b.rate, &b.burst
	}
	start := time.Now()
	err := l.pool.QueryRow(ctx, takeSQL, key, n, horizon.Seconds(), l.probeTimeout.Seconds(), rate, brst).
		Scan(&r.granted, &r.probe, &r.block, &secs)
	l.takes.Add(1)
	l.takeNanos.Add(int64(time.Since(start)))
	r.wait = seconds(secs)
	return r, err
}

// take loops until n tokens of key are granted and have accrued.
func (l *PGLimiter) take(ctx context.Context, channel, key string, n float64, horizon time.Duration, b *bucket) error {
	var blockedFor time.Duration
	for {
		r, err := l.takeOnce(ctx, key, n, horizon, b)
		if errors.Is(err, pgx.ErrNoRows) {
			// The row is not there: a broadcast's first grant, or a pruned row.
			if err := l.create(ctx, key, b); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("rate limit %s: %w", key, err)
		}
		switch {
		case r.granted:
			if r.wait <= 0 {
				return nil
			}
			if err := sleep(ctx, r.wait); err != nil {
				return err
			}
			if b != nil || r.probe || r.wait < l.confirmAfter {
				return nil
			}
			// A long reservation: if a 429 or the breaker blocked the provider
			// while we slept, the reservation is void; take again.
			var blocked bool
			err := l.pool.QueryRow(ctx, `SELECT coalesce(blocked_until > clock_timestamp(), false) OR breaker_state <> 'closed'
				FROM provider_limits WHERE key = $1`, key).Scan(&blocked)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("rate limit %s: %w", key, err)
			}
			if !blocked {
				return nil
			}
		case r.block != nil:
			if blockedFor+r.wait > l.maxBlock {
				return ErrProviderBlocked{Channel: channel, Until: time.Now().Add(r.wait), Reason: *r.block}
			}
			d := r.wait + jitter(r.wait)
			if err := sleep(ctx, d); err != nil {
				return err
			}
			blockedFor += d
		default:
			// Too many grants reserved ahead: come back when there is room,
			// spread over half the horizon so that waiting callers do not all
			// retry at each free slot (the queue ahead keeps the provider busy).
			if err := sleep(ctx, r.wait+rand.N(horizon/2+time.Millisecond)); err != nil {
				return err
			}
		}
	}
}

// ensure writes this process's configuration into a provider's row once.
func (l *PGLimiter) ensure(ctx context.Context, channel string) error {
	l.mu.Lock()
	done := l.ensured[channel]
	l.mu.Unlock()
	if done {
		return nil
	}
	c := l.channels[channel]
	_, err := l.pool.Exec(ctx, `INSERT INTO provider_limits (key, rate, burst) VALUES ($1, $2, $3)
		ON CONFLICT (key) DO UPDATE SET rate = excluded.rate, burst = excluded.burst`, channel, c.rate, c.burst)
	if err != nil {
		return fmt.Errorf("rate limit %s: %w", channel, err)
	}
	l.mu.Lock()
	l.ensured[channel] = true
	l.mu.Unlock()
	return nil
}

// create inserts a missing row: a provider's from the configuration, a
// broadcast's from b. Now and then it also drops broadcasts' rows long unused.
func (l *PGLimiter) create(ctx context.Context, key string, b *bucket) error {
	if b == nil {
		l.mu.Lock()
		delete(l.ensured, key)
		l.mu.Unlock()
		return l.ensure(ctx, key)
	}
	if _, err := l.pool.Exec(ctx, `INSERT INTO provider_limits (key, rate, burst) VALUES ($1, $2, $3)
		ON CONFLICT (key) DO NOTHING`, key, b.rate, b.burst); err != nil {
		return fmt.Errorf("rate limit %s: %w", key, err)
	}
	l.mu.Lock()
	prune := time.Since(l.lastPrune) > pruneEvery
	if prune {
		l.lastPrune = time.Now()
	}
	l.mu.Unlock()
	if prune {
		if _, err := l.pool.Exec(ctx, `DELETE FROM provider_limits
			WHERE key LIKE 'broadcast:%' AND updated_at < now() - $1::interval`, pruneAfter); err != nil {
			return fmt.Errorf("rate limit: pruning: %w", err)
		}
	}
	return nil
}

// Backoff blocks channel's provider for d across all processes (a 429 or its
// Retry-After): nothing is granted before now+d, then the rate ramps back up.
// A longer block already in place is kept.
func (l *PGLimiter) Backoff(ctx context.Context, channel string, d time.Duration) error {
	if l.channels[channel] == nil {
		return nil
	}
	if d <= 0 {
		d = time.Second
	}
	if err := l.ensure(ctx, channel); err != nil {
		return err
	}
	_, err := l.pool.Exec(ctx, `
		UPDATE provider_limits SET
			blocked_until = greatest(blocked_until, n.until),
			ramp_from = greatest(blocked_until, n.until),
			tat = greatest(tat, blocked_until, n.until),
			backoffs = backoffs + 1,
			updated_at = n.now
		FROM (SELECT clock_timestamp() AS now, clock_timestamp() + make_interval(secs => $2::float8) AS until) n
		WHERE key = $1`, channel, d.Seconds())
	if err != nil {
		return fmt.Errorf("rate limit %s: backoff: %w", channel, err)
	}
	return nil
}

// RecordOutcome feeds the circuit breaker with the outcome of one batch sent to
// channel's provider: ok when the provider accepted messages, not ok when the
// batch failed with a transient error (5xx, timeout, network). A rate limit
// (429) is not an outcome; report it with Backoff.
func (l *PGLimiter) RecordOutcome(ctx context.Context, channel string, ok bool) error {
	if l.channels[channel] == nil {
		return nil
	}
	if err := l.ensure(ctx, channel); err != nil {
		return err
	}
	var err error
	if ok {
		// Nothing is written in the common case (closed, no failures).
		_, err = l.pool.Exec(ctx, `
			UPDATE provider_limits SET
				consecutive_failures = 0,
				ramp_from = CASE WHEN breaker_state <> 'closed' THEN n.now ELSE ramp_from END,
				tat = CASE WHEN breaker_state <> 'closed' THEN greatest(tat, n.now) ELSE tat END,
				breaker_state = 'closed', breaker_until = NULL, probe_interval = 0
			FROM (SELECT clock_timestamp() AS now) n
			WHERE key = $1 AND (consecutive_failures > 0 OR breaker_state <> 'closed')`, channel)
	} else {
		// trip: closed and this failure reaches the threshold; reopen: the
		// probe failed.
		_, err = l.pool.Exec(ctx, `
			UPDATE provider_limits SET
				consecutive_failures = consecutive_failures + 1,
				breaker_state = CASE WHEN x.trip OR x.reopen THEN 'open' ELSE breaker_state END,
				probe_interval = CASE WHEN x.trip OR x.reopen THEN x.next_interval ELSE probe_interval END,
				breaker_until = CASE WHEN x.trip OR x.reopen THEN x.now + make_interval(secs => x.next_interval) ELSE breaker_until END,
				trips = trips + CASE WHEN x.trip THEN 1 ELSE 0 END
			FROM (
				SELECT clock_timestamp() AS now,
					l.breaker_state = 'closed' AND l.consecutive_failures + 1 >= $2 AS trip,
					l.breaker_state = 'probing' AS reopen,
					CASE WHEN l.breaker_state = 'probing' THEN least(greatest(l.probe_interval * 2, $3::float8), $4::float8)
						ELSE $3::float8 END AS next_interval
				FROM provider_limits l WHERE l.key = $1 FOR UPDATE
			) x
			WHERE key = $1`, channel, l.failureThreshold, l.probeMin.Seconds(), l.probeMax.Seconds())
	}
	if err != nil {
		return fmt.Errorf("rate limit %s: outcome: %w", channel, err)
	}
	return nil
}

// Status reports every configured provider's limiter state.
func (l *PGLimiter) Status(ctx context.Context) ([]ProviderStatus, error) {
	keys := make([]string, 0, len(l.channels))
	for ch := range l.channels {
		if err := l.ensure(ctx, ch); err != nil {
			return nil, err
		}
		keys = append(keys, ch)
	}
	slices.Sort(keys)
	rows, err := l.pool.Query(ctx, `
		SELECT key, burst, least(burst, rate * extract(epoch FROM n.now - tat)::float8),
			CASE WHEN blocked_until > n.now OR (breaker_state <> 'closed' AND breaker_until > n.now) THEN 0
				WHEN ramp_from IS NULL OR n.now >= ramp_from + interval '2 seconds' THEN 1
				ELSE 0.25 * power(2, greatest(0, extract(epoch FROM n.now - ramp_from)::float8)) END,
			blocked_until, coalesce(blocked_until > n.now, false), breaker_state, breaker_until,
			probe_interval, consecutive_failures, backoffs, trips
		FROM provider_limits, (SELECT clock_timestamp() AS now) n
		WHERE key = ANY($1) ORDER BY key`, keys)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ProviderStatus
	for rows.Next() {
		var s ProviderStatus
		var probe float64
		if err := rows.Scan(&s.Channel, &s.Burst, &s.Tokens, &s.RateFactor, &s.BlockedUntil, &s.BackingOff,
			&s.Breaker, &s.BreakerUntil, &probe, &s.ConsecutiveFailures, &s.Backoffs, &s.Trips); err != nil {
			return nil, err
		}
		c := l.channels[s.Channel]
		s.Rate, s.ProbeInterval, s.Waiting = c.configured, seconds(probe), c.waiting.Load()
		if c.unlimited {
			s.Burst, s.Tokens = 0, 0
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// deliveryParts cuts a broadcast's delivery batch into the parts the limiter
// lets go out in one provider request (MaxBatch, and the broadcast's own
// burst when it has a rate_per_second), from its deliveries still pending, and
// returns the broadcast's rate. Each part is a DeliveryBatch over a narrower id
// range, so it is claimed, sent and recorded on its own: claim semantics are
// unchanged (ClaimBatch claims the pending deliveries of the part's id range).
// A notification's batch, or any batch without a limiter, is one part.
func deliveryParts(ctx context.Context, db notifier.DB, lim Limiter, b notifier.DeliveryBatch) ([]notifier.DeliveryBatch, *float64, error) {
	if lim == nil || b.BroadcastID == 0 {
		return []notifier.DeliveryBatch{b}, nil, nil
	}
	var (
		rate *float64
		ids  []int64
	)
	// The batch's id range through the primary key; IS NOT DISTINCT FROM keeps
	// the planner off the unique index, as in notifier's ClaimBatch.
	err := db.QueryRow(ctx, `
		SELECT b.rate_per_second, ARRAY(
			SELECT d.id FROM deliveries d
			WHERE d.id BETWEEN $3 AND $4 AND d.broadcast_id IS NOT DISTINCT FROM b.id AND d.channel = $2 AND d.status = 'pending'
			ORDER BY d.id)
		FROM broadcasts b WHERE b.id = $1`, b.BroadcastID, b.Channel, b.FirstID, b.LastID).Scan(&rate, &ids)
	if errors.Is(err, pgx.ErrNoRows) {
		// The broadcast is gone: the claim will say so.
		return []notifier.DeliveryBatch{b}, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	size := lim.MaxBatch(b.Channel)
	if rate != nil && *rate > 0 {
		size = min(size, burstFor(*rate))
	}
	size = max(size, 1)
	if len(ids) <= size {
		// Nothing pending (a rerun after everything went out) waits for nothing.
		b.Count = len(ids)
		return []notifier.DeliveryBatch{b}, rate, nil
	}
	parts := make([]notifier.DeliveryBatch, 0, (len(ids)+size-1)/size)
	for start := 0; start < len(ids); start += size {
		end := min(start+size, len(ids))
		p := b
		p.FirstID, p.LastID, p.Count = ids[start], ids[end-1], end-start
		parts = append(parts, p)
	}
	return parts, rate, nil
}

func seconds(s float64) time.Duration {
	if s <= 0 || math.IsNaN(s) {
		return 0
	}
	if s > 1e6 {
		s = 1e6
	}
	return time.Duration(s * float64(time.Second))
}

// jitter spreads retries of callers that were told the same moment.
func jitter(d time.Duration) time.Duration {
	return rand.N(d/10 + 10*time.Millisecond)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
