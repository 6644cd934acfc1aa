package notifier

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/migrations/pgtest"
)

// recordingEnqueuer writes delivery batches to a table inside the caller's
// transaction, so the batches of a rolled-back chunk vanish with it. The failAt-th
// call fails: a crash in the middle of a chunk, after its deliveries were written.
type recordingEnqueuer struct {
	calls  atomic.Int64
	failAt int64 // 0: never
}

func (e *recordingEnqueuer) EnqueueExpandTx(context.Context, pgx.Tx, int64, time.Time) error {
	return nil
}

func (e *recordingEnqueuer) EnqueueDeliveriesTx(ctx context.Context, tx pgx.Tx, batches []DeliveryBatch, _ bool) error {
	if n := e.calls.Add(1); e.failAt > 0 && n == e.failAt {
		return errors.New("simulated crash")
	}
	for _, b := range batches {
		if _, err := tx.Exec(ctx, `INSERT INTO test_batches (broadcast_id, channel, first_id, last_id, n) VALUES ($1, $2, $3, $4, $5)`,
			b.BroadcastID, b.Channel, b.FirstID, b.LastID, b.Count); err != nil {
			return err
		}
	}
	return nil
}

type expandBundle struct {
	pool *pgxpool.Pool
	svc  *Service
	enq  *recordingEnqueuer
}

// setupExpand returns a service over a fresh database with n recipients r00001..:
// every third is on plan "pro"; every 11th has no email, every 7th no device,
// every 13th opted out of push for "news", every 17th has a suppressed address.
func setupExpand(t *testing.T, n int) *expandBundle {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	enq := &recordingEnqueuer{}
	b := &expandBundle{pool: pool, enq: enq, svc: NewService(pool, nil, &ServiceOpts{Enqueuer: enq, RequiredCategories: []string{"security"}})}
	for _, q := range []string{
		`CREATE TABLE test_batches (broadcast_id bigint, channel text, first_id bigint, last_id bigint, n int)`,
		`INSERT INTO recipients (id, email, attributes)
			SELECT 'r' || lpad(i::text, 5, '0'), CASE WHEN i % 11 <> 0 THEN 'u' || i || '@example.com' END,
				jsonb_build_object('plan', CASE WHEN i % 3 = 0 THEN 'pro' ELSE 'free' END)
			FROM generate_series(1, ` + fmt.Sprint(n) + `) i`,
		`INSERT INTO devices (recipient_id, token, platform)
			SELECT id, 'tok-' || id, 'android' FROM recipients WHERE substr(id, 2)::int % 7 <> 0`,
		`INSERT INTO preferences (recipient_id, categories)
			SELECT id, '{"news": {"push": false}}' FROM recipients WHERE substr(id, 2)::int % 13 = 0`,
		`INSERT INTO suppressed_addresses (address_hash, reason, source)
			SELECT ` + addressHashSQL("email") + `, 'bounced', 'test' FROM recipients
			WHERE substr(id, 2)::int % 17 = 0 AND email IS NOT NULL`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// broadcast inserts a broadcast to expand, cut off now, with the given extra
// columns (filter, recipient_ids, dedupe_key, category).
func (b *expandBundle) broadcast(t *testing.T, category string, filter *string, recipients []string, dedupeKey *string) int64 {
	t.Helper()
	var id int64
	err := b.pool.QueryRow(context.Background(), `INSERT INTO broadcasts
		(name, category, filter, recipient_ids, channels, content, cutoff_at, dedupe_key, status, created_by)
		VALUES ('t', $1, $2::jsonb, $3, '{email,push}', '{}', clock_timestamp(), $4, 'scheduled', 'test') RETURNING id`,
		category, filter, recipients, dedupeKey).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// expandAll runs expansions (each with no budget, so one chunk per range per
// call, as a series of jobs would) until done.
func (b *expandBundle) expandAll(t *testing.T, svc *Service, id int64, cfg expandConfig) {
	t.Helper()
	if err := expandUntilDone(svc, id, cfg); err != nil {
		t.Fatal(err)
	}
}

func expandUntilDone(svc *Service, id int64, cfg expandConfig) error {
	for i := 0; i < 10000; i++ {
		res, err := svc.expand(context.Background(), id, 0, cfg)
		if err != nil || res.Done {
			return err
		}
	}
	return errors.New("expansion does not finish")
}

// wantAudience is the audience by the query counts and dry runs use (not the
// paged one expansion uses).
func (b *expandBundle) wantAudience(t *testing.T, id int64) []string {
	t.Helper()
	ctx := context.Background()
	var raw []byte
	var ids []string
	var cutoff time.Time
	if err := b.pool.QueryRow(ctx, `SELECT filter, recipient_ids, cutoff_at FROM broadcasts WHERE id = $1`, id).Scan(&raw, &ids, &cutoff); err != nil {
		t.Fatal(err)
	}
	var f *Filter
	if raw != nil {
		f, _ = ParseFilter(raw, "filter")
	}
	args := &sqlArgs{}
	relation, where := audienceSQL(f, &cutoff, args)
	if ids != nil {
		where = "r.id = ANY(" + args.add(ids) + "::text[])"
	}
	rows, err := b.pool.Query(ctx, "SELECT r.id FROM "+relation+" AS r WHERE "+where+" ORDER BY 1", args.values...)
	if err != nil {
		t.Fatal(err)
	}
	want, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return want
}

// checkExpanded checks a finished expansion: one delivery per audience member and
// channel and no other, audience_size, and every pending delivery in exactly one
// recorded batch of at most the channel's size.
func (b *expandBundle) checkExpanded(t *testing.T, id int64) {
	t.Helper()
	ctx := context.Background()
	want := b.wantAudience(t, id)
	var wrong, size, uncovered, oversized int
	var expanded bool
	var status string
	err := b.pool.QueryRow(ctx, `
		SELECT
			(SELECT count(*) FROM (
				SELECT w, ch, count(d.id) FROM unnest($2::text[]) w CROSS JOIN unnest('{email,push}'::text[]) ch
				LEFT JOIN deliveries d ON d.broadcast_id = $1 AND d.recipient_id = w AND d.channel = ch
				GROUP BY 1, 2 HAVING count(d.id) <> 1) x)
			+ (SELECT count(*) FROM deliveries WHERE broadcast_id = $1 AND recipient_id <> ALL($2)),
			(SELECT audience_size FROM broadcasts WHERE id = $1),
			(SELECT expanded FROM broadcasts WHERE id = $1),
			(SELECT status FROM broadcasts WHERE id = $1),
			(SELECT count(*) FROM deliveries d WHERE d.broadcast_id = $1 AND d.status = 'pending'
				AND (SELECT count(*) FROM test_batches b WHERE b.broadcast_id = $1 AND b.channel = d.channel
					AND d.id BETWEEN b.first_id AND b.last_id) <> 1),
			(SELECT count(*) FROM test_batches b WHERE b.broadcast_id = $1
				AND (b.n > CASE b.channel WHEN 'push' THEN 500 ELSE 1000 END OR b.n <> (SELECT count(*) FROM deliveries d
					WHERE d.broadcast_id = $1 AND d.channel = b.channel AND d.id BETWEEN b.first_id AND b.last_id AND d.status = 'pending')))`,
		id, want).Scan(&wrong, &size, &expanded, &status, &uncovered, &oversized)
	if err != nil {
		t.Fatal(err)
	}
	if wrong != 0 || size != len(want) || !expanded || (status != StatusSending && status != StatusCompleted) || uncovered != 0 || oversized != 0 {
		t.Fatalf("broadcast %d: %d (recipient, channel) pairs without exactly one delivery or outside the audience, audience_size %d (want %d), expanded %v, status %s, %d pending deliveries not in exactly one batch, %d batches too large or miscounted",
			id, wrong, size, len(want), expanded, status, uncovered, oversized)
	}
}

func TestExpandWritesEachDeliveryOnceAsOfTheCutoff(t *testing.T) {
	t.Parallel()
	pro := `{"attr": "plan", "op": "eq", "value": "pro"}`
	tests := []struct {
		name       string
		n          int
		filter     *string
		recipients []string
		cfg        expandConfig
	}{
		{name: "everyone, 4 ranges of small chunks", n: 600, cfg: expandConfig{chunk: 7, ranges: 4}},
		{name: "everyone, one range", n: 300, cfg: expandConfig{chunk: 50, ranges: 1}},
		{name: "everyone, fewer recipients than a chunk", n: 30, cfg: expandConfig{chunk: 50, ranges: 4}},
		{name: "segment, 3 ranges", n: 600, filter: &pro, cfg: expandConfig{chunk: 9, ranges: 3}},
		{name: "explicit list, 4 ranges", n: 200, cfg: expandConfig{chunk: 5, ranges: 4},
			recipients: []string{"r00150", "r00003", "r00077", "nobody", "r00199", "r00010", "r00011", "r00012", "r00100", "r00101",
				"r00102", "r00103", "r00104", "r00105", "r00106", "r00107", "r00108", "r00109", "r00110", "r00111", "r00112", "r00004"}},
		{name: "empty audience", n: 0, cfg: expandConfig{chunk: 5, ranges: 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setupExpand(t, tt.n)
			id := b.broadcast(t, "news", tt.filter, tt.recipients, nil)
			// After the cut-off: a new recipient, a changed plan, an erasure.
			for _, q := range []string{
				`INSERT INTO recipients (id, email, attributes) VALUES ('r00000', 'late@example.com', '{"plan": "pro"}')`,
				`UPDATE recipients SET attributes = '{"plan": "pro"}' WHERE id IN ('r00001', 'r00004')`,
				`UPDATE recipients SET attributes = '{"plan": "free"}' WHERE id IN ('r00003', 'r00006')`,
				`UPDATE recipients SET erased = true, email = NULL WHERE id = 'r00012'`,
			} {
				if _, err := b.pool.Exec(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
			b.expandAll(t, b.svc, id, tt.cfg)
			b.checkExpanded(t, id)
			if tt.n > 0 && tt.recipients == nil {
				var late, erased int
				if err := b.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE recipient_id = 'r00000'), count(*) FILTER (WHERE recipient_id = 'r00012')
					FROM deliveries WHERE broadcast_id = $1`, id).Scan(&late, &erased); err != nil {
					t.Fatal(err)
				}
				// r00012 (plan pro) was erased after the cut-off: still in the audience.
				if late != 0 || erased != 2 {
					t.Fatalf("recipient created after the cut-off has %d deliveries (want 0); erased after it %d (want 2)", late, erased)
				}
			}
		})
	}
}

func TestExpandSuppressionReasons(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupExpand(t, 300)
	key := "tos-2026"
	first := b.broadcast(t, "news", nil, nil, &key)
	b.expandAll(t, b.svc, first, expandConfig{chunk: 11, ranges: 3})
	b.checkExpanded(t, first)
	security := b.broadcast(t, "security", nil, []string{"r00013", "r00026", "r00017", "r00022", "r00007"}, nil)
	b.expandAll(t, b.svc, security, expandConfig{chunk: 2, ranges: 2})
	b.checkExpanded(t, security)

	tests := []struct {
		broadcast          int64
		recipient, channel string
		status, reason     string
	}{
		{first, "r00001", "email", DeliveryPending, ""},
		{first, "r00001", "push", DeliveryPending, ""},
		{first, "r00022", "email", DeliverySuppressed, "no_address"},
		{first, "r00007", "push", DeliverySuppressed, "no_device"},
		{first, "r00013", "push", DeliverySuppressed, "preference"},
		{first, "r00013", "email", DeliveryPending, ""},
		{first, "r00017", "email", DeliverySuppressed, "suppressed_address"},
		{security, "r00013", "push", DeliveryPending, ""}, // a required category ignores opt-outs
		{security, "r00026", "push", DeliveryPending, ""},
		{security, "r00017", "email", DeliverySuppressed, "suppressed_address"},
		{security, "r00022", "email", DeliverySuppressed, "no_address"},
		{security, "r00007", "push", DeliverySuppressed, "no_device"},
	}
	for _, tt := range tests {
		var status string
		var reason *string
		err := b.pool.QueryRow(ctx, `SELECT status, reason FROM deliveries WHERE broadcast_id = $1 AND recipient_id = $2 AND channel = $3`,
			tt.broadcast, tt.recipient, tt.channel).Scan(&status, &reason)
		if err != nil {
			t.Fatalf("%s %s of broadcast %d: %v", tt.recipient, tt.channel, tt.broadcast, err)
		}
		if got := deref(reason); status != tt.status || got != tt.reason {
			t.Errorf("%s %s of broadcast %d: %s (%s), want %s (%s)", tt.recipient, tt.channel, tt.broadcast, status, got, tt.status, tt.reason)
		}
	}

	// The same dedupe key again: what the first broadcast was to send is a
	// duplicate now; the rest is suppressed for its own reason again.
	second := b.broadcast(t, "news", nil, nil, &key)
	b.expandAll(t, b.svc, second, expandConfig{chunk: 13, ranges: 4})
	b.checkExpanded(t, second)
	var firstPending, pending, duplicates, claims int
	err := b.pool.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM deliveries WHERE broadcast_id = $1 AND status = 'pending'),
			(SELECT count(*) FROM deliveries WHERE broadcast_id = $2 AND status = 'pending'),
			(SELECT count(*) FROM deliveries WHERE broadcast_id = $2 AND reason = 'duplicate'),
			(SELECT count(*) FROM dedupe_claims c JOIN deliveries d ON d.id = c.delivery_id AND d.broadcast_id = $1)`,
		first, second).Scan(&firstPending, &pending, &duplicates, &claims)
	if err != nil {
		t.Fatal(err)
	}
	if firstPending == 0 || claims != firstPending || pending != 0 || duplicates != firstPending {
		t.Fatalf("first broadcast: %d pending, %d claims; second: %d pending, %d duplicates (want 0 and %d)",
			firstPending, claims, pending, duplicates, firstPending)
	}
}

func TestExpandResumesAfterCrashAndAlongsideAnotherExpander(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupExpand(t, 500)
	id := b.broadcast(t, "news", nil, nil, nil)
	cfg := expandConfig{chunk: 6, ranges: 4}
	// The fifth chunk fails after writing its deliveries: its transaction, with
	// the range's cursor, is rolled back, and the other ranges stop.
	b.enq.failAt = 5
	if _, err := b.svc.expand(ctx, id, time.Minute, cfg); err == nil {
		t.Fatal("expansion with a failing chunk did not fail")
	}
	var written int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM deliveries WHERE broadcast_id = $1`, id).Scan(&written); err != nil {
		t.Fatal(err)
	}
	if written == 0 || written >= 1000 {
		t.Fatalf("%d deliveries written before the crash, want some but not all", written)
	}
	// Two expanders resume at once, each one chunk per range and call.
	other := NewService(b.pool, nil, &ServiceOpts{Enqueuer: &recordingEnqueuer{}, RequiredCategories: []string{"security"}})
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, svc := range []*Service{b.svc, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = expandUntilDone(svc, id, cfg)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	b.checkExpanded(t, id)
}

func TestExpandStopsOnPauseAndCancel(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupExpand(t, 400)
	cfg := expandConfig{chunk: 10, ranges: 4}
	count := func(id int64, status string) int {
		t.Helper()
		var n int
		if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM deliveries WHERE broadcast_id = $1 AND status LIKE $2`, id, status).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	paused := b.broadcast(t, "news", nil, nil, nil)
	if res, err := b.svc.expand(ctx, paused, 0, cfg); err != nil || res.Done || res.Recipients != 40 {
		t.Fatalf("first call = %+v, %v; want 4 chunks of 10, not done", res, err)
	}
	if _, err := b.svc.PauseBroadcast(ctx, "test", paused); err != nil {
		t.Fatal(err)
	}
	if res, err := b.svc.expand(ctx, paused, time.Minute, cfg); err != nil || !res.Done || res.Recipients != 0 {
		t.Fatalf("expansion of a paused broadcast = %+v, %v; want done with nothing", res, err)
	}
	if n := count(paused, "%"); n != 80 {
		t.Fatalf("paused broadcast has %d deliveries, want 80", n)
	}
	if _, err := b.svc.ResumeBroadcast(ctx, "test", paused); err != nil {
		t.Fatal(err)
	}
	b.expandAll(t, b.svc, paused, cfg)
	want := b.wantAudience(t, paused)
	if n := count(paused, "%"); n != 2*len(want) {
		t.Fatalf("resumed broadcast has %d deliveries, want %d", n, 2*len(want))
	}

	cancelled := b.broadcast(t, "news", nil, nil, nil)
	if _, err := b.svc.expand(ctx, cancelled, 0, cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := b.svc.CancelBroadcast(ctx, "test", cancelled); err != nil {
		t.Fatal(err)
	}
	if res, err := b.svc.expand(ctx, cancelled, time.Minute, cfg); err != nil || !res.Done || res.Recipients != 0 {
		t.Fatalf("expansion of a cancelled broadcast = %+v, %v; want done with nothing", res, err)
	}
	var size int
	if err := b.pool.QueryRow(ctx, `SELECT audience_size FROM broadcasts WHERE id = $1`, cancelled).Scan(&size); err != nil {
		t.Fatal(err)
	}
	if all, open := count(cancelled, "%"), count(cancelled, "pending"); all != 80 || open != 0 || size != 40 {
		t.Fatalf("cancelled broadcast: %d deliveries (want 80), %d pending (want 0), audience_size %d (want 40)", all, open, size)
	}
}

func TestExpandGoesOnFromTheCursorOfAnEarlierVersion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupExpand(t, 100)
	id := b.broadcast(t, "news", nil, nil, nil)
	// Expanded up to r00040 by a version with one cursor per broadcast (and sent).
	for _, q := range []string{
		`UPDATE broadcasts SET status = 'expanding', expand_cursor = 'r00040', audience_size = 40 WHERE id = $1`,
		`INSERT INTO deliveries (broadcast_id, recipient_id, channel, status)
			SELECT $1, id, ch, 'sent' FROM recipients, unnest('{email,push}'::text[]) ch WHERE id <= 'r00040'`,
	} {
		if _, err := b.pool.Exec(ctx, q, id); err != nil {
			t.Fatal(err)
		}
	}
	b.expandAll(t, b.svc, id, expandConfig{chunk: 7, ranges: 4})
	b.checkExpanded(t, id)
	var ranges int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM expand_ranges WHERE broadcast_id = $1`, id).Scan(&ranges); err != nil {
		t.Fatal(err)
	}
	if ranges != 1 {
		t.Fatalf("%d ranges, want the one that goes on from the cursor", ranges)
	}
}

func TestCutChunkBatches(t *testing.T) {
	t.Parallel()
	seq := func(from, n int64) []int64 {
		out := make([]int64, n)
		for i := range out {
			out[i] = from + int64(i)
		}
		return out
	}
	repeat := func(kind int16, n int) []int16 {
		out := make([]int16, n)
		for i := range out {
			out[i] = kind
		}
		return out
	}
	batch := func(channel string, first, last int64, count int) DeliveryBatch {
		return DeliveryBatch{BroadcastID: 7, Channel: channel, FirstID: first, LastID: last, Count: count}
	}
	tests := []struct {
		name     string
		channels []string
		ids      []int64
		kinds    []int16
		want     []DeliveryBatch
	}{
		{"nothing inserted", []string{"email"}, nil, nil, nil},
		{"nothing to send", []string{"email"}, []int64{1, 2}, []int16{0, 0}, nil},
		{"email cut at 1,000", []string{"email"}, seq(1, 2500), repeat(1, 2500),
			[]DeliveryBatch{batch("email", 1, 1000, 1000), batch("email", 1001, 2000, 1000), batch("email", 2001, 2500, 500)}},
		{"push cut at 500", []string{"push"}, seq(10, 700), repeat(1, 700),
			[]DeliveryBatch{batch("push", 10, 509, 500), batch("push", 510, 709, 200)}},
		{"suppressed ids stay inside a batch's range", []string{"email"}, []int64{1, 2, 3, 4}, []int16{1, 0, 0, 1},
			[]DeliveryBatch{batch("email", 1, 4, 2)}},
		{"channels interleaved, ordered by channel then id", []string{"push", "email"}, []int64{1, 2, 3, 4}, []int16{2, 1, 2, 1},
			[]DeliveryBatch{batch("email", 1, 3, 2), batch("push", 2, 4, 2)}},
		{"a gap in the ids (another connection's block) ends every batch", []string{"email", "push"},
			[]int64{1, 2, 3, 50, 51, 52}, []int16{1, 2, 1, 1, 2, 0},
			[]DeliveryBatch{batch("email", 1, 3, 2), batch("email", 50, 50, 1), batch("push", 2, 2, 1), batch("push", 51, 51, 1)}},
		{"out of order input is sorted with its kinds", []string{"email", "push"},
			[]int64{52, 50, 3, 1, 2, 51}, []int16{0, 1, 1, 1, 2, 2},
			[]DeliveryBatch{batch("email", 1, 3, 2), batch("email", 50, 50, 1), batch("push", 2, 2, 1), batch("push", 51, 51, 1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := cutChunkBatches(7, tt.channels, tt.ids, tt.kinds)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("cutChunkBatches = %v\nwant %v", got, tt.want)
			}
		})
	}
}
