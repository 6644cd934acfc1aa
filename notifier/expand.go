package notifier

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// ExpandChunkSize is how many recipients one expansion transaction takes.
const ExpandChunkSize = 10000

// ExpandRanges is how many disjoint ranges of recipient ids a broadcast's audience
// is cut into and expanded in parallel: a chunk transaction is mostly
// PostgreSQL's CPU, so ranges use more than one core. On 2 cores, with delivery
// running alongside (notifyd bench, 300,000 recipients x 2 channels), 8 ranges
// expanded at 68,000 deliveries/s, 4 at 43,000-66,000/s, 2 at 50,000/s; beyond
// that, chunks mostly wait for each other to extend the index files (16 ranges,
// 1,000,000 recipients: 67,549/s, against 76,220/s for 8).
const ExpandRanges = 8

// BatchSize is how many deliveries of a channel one delivery job carries: the
// provider's batch shape (SendGrid 1,000 personalizations, FCM SendEach 500).
func BatchSize(channel string) int {
	if channel == ChannelPush {
		return 500
	}
	return 1000
}

// ExpandResult says where an expansion stands.
type ExpandResult struct {
	Done       bool // nothing left to expand (or the broadcast was stopped)
	Recipients int  // recipients expanded in this call
}

// expandConfig sizes an expansion; tests use small values.
type expandConfig struct {
	chunk  int // recipients per chunk transaction
	ranges int // ranges of recipient ids, expanded in parallel
}

// ExpandBroadcast writes the broadcast's audience, as of its cut-off, as delivery
// rows plus delivery jobs, until done or the budget is spent. The audience is cut
// into disjoint ranges of recipient ids (expand_ranges), expanded in parallel, one
// chunk per transaction; each chunk advances its range's cursor in the same
// transaction, so a crash or a second expander resumes without duplicates.
func (s *Service) ExpandBroadcast(ctx context.Context, id int64, budget time.Duration) (ExpandResult, error) {
	// Each range holds a connection while it writes a chunk: leave at least half
	// of the pool to the delivery workers.
	ranges := min(ExpandRanges, max(1, int(s.pool.Config().MaxConns)/2))
	return s.expand(ctx, id, budget, expandConfig{chunk: ExpandChunkSize, ranges: ranges})
}

// expansionState is what a chunk needs to know about its broadcast.
type expansionState struct {
	cursor       *string // expand_cursor of an expansion begun before expand_ranges
	filter       *Filter
	recipientIDs []string
	channels     []string
	category     string
	cutoff       time.Time
	dedupeKey    *string
}

// rangeOutcome is what the expansion of one range came to in one call.
type rangeOutcome struct {
	recipients int
	err        error
}

func (s *Service) expand(ctx context.Context, id int64, budget time.Duration, cfg expandConfig) (ExpandResult, error) {
	deadline := time.Now().Add(budget)
	st, open, stop, err := s.startExpansion(ctx, id, cfg)
	if err != nil || stop {
		return ExpandResult{Done: stop}, err
	}
	// One goroutine per open range; the first error stops the others.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	outcomes := make([]rangeOutcome, len(open))
	var wg sync.WaitGroup
	for i, lo := range open {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outcomes[i] = s.expandRange(rctx, id, st, lo, deadline, cfg.chunk)
			if outcomes[i].err != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	var res ExpandResult
	var errs []error
	for _, o := range outcomes {
		res.Recipients += o.recipients
		if o.err != nil && !errors.Is(o.err, context.Canceled) {
			errs = append(errs, o.err)
		}
	}
	if len(errs) > 0 {
		return res, errors.Join(errs...)
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	res.Done, err = s.finishExpansion(ctx, id)
	return res, err
}

// startExpansion reads the broadcast under its row lock, cuts its audience into
// ranges the first time, and returns the ranges still open (by their lower
// bound). stop: the broadcast is gone, stopped or already expanded.
func (s *Service) startExpansion(ctx context.Context, id int64, cfg expandConfig) (st *expansionState, open []string, stop bool, err error) {
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		st = &expansionState{}
		var status string
		var rawFilter []byte
		var isExpanded bool
		err := tx.QueryRow(ctx, `SELECT status, expand_cursor, filter, recipient_ids, channels, category, cutoff_at, dedupe_key, expanded
			FROM broadcasts WHERE id = $1 FOR UPDATE`, id).
			Scan(&status, &st.cursor, &rawFilter, &st.recipientIDs, &st.channels, &st.category, &st.cutoff, &st.dedupeKey, &isExpanded)
		if errors.Is(err, pgx.ErrNoRows) {
			stop = true
			return nil
		}
		if err != nil {
			return err
		}
		// Cancelled, paused or finished: stop. Resume re-enqueues the expansion.
		if isExpanded || !expansionActive(status) {
			stop = true
			return nil
		}
		if rawFilter != nil {
			var problems map[string]string
			if st.filter, problems = ParseFilter(rawFilter, "filter"); len(problems) > 0 {
				return errors.New("stored broadcast filter does not parse")
			}
		}
		var planned bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM expand_ranges WHERE broadcast_id = $1)`, id).Scan(&planned); err != nil {
			return err
		}
		if !planned {
			if err := s.planRanges(ctx, tx, id, st, cfg); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, `SELECT lo FROM expand_ranges WHERE broadcast_id = $1 AND NOT done ORDER BY lo`, id)
		if err != nil {
			return err
		}
		if open, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE broadcasts SET status = 'expanding', updated_at = now() WHERE id = $1 AND status = 'scheduled'`, id)
		return err
	})
	return st, open, stop, err
}

func expansionActive(status string) bool {
	return status == StatusScheduled || status == StatusExpanding || status == StatusSending
}

// planRanges cuts the id space into up to cfg.ranges ranges holding about as
// many recipients each, from a sample of the directory (or the explicit list).
// The bounds only balance the work: the ranges cover every id whatever the
// sample, from the empty string (exclusive) to the end.
func (s *Service) planRanges(ctx context.Context, tx pgx.Tx, id int64, st *expansionState, cfg expandConfig) error {
	if st.cursor != nil {
		// An expansion begun with the single cursor of earlier versions goes on
		// from it, as one range that has its audience so far.
		_, err := tx.Exec(ctx, `INSERT INTO expand_ranges (broadcast_id, lo, hi, cursor, recipients)
			SELECT id, '', NULL, expand_cursor, audience_size FROM broadcasts WHERE id = $1`, id)
		return err
	}
	var ids []string
	var total float64
	if st.recipientIDs != nil {
		ids, total = st.recipientIDs, float64(len(st.recipientIDs))
	} else {
		// Sample about 200 pages of the directory: enough for even bounds, and
		// cheap at any size.
		var pages float64
		if err := tx.QueryRow(ctx, `SELECT greatest(pg_relation_size('recipients') / current_setting('block_size')::int, 1)`).Scan(&pages); err != nil {
			return err
		}
		percent := min(100, 100*200/pages)
		rows, err := tx.Query(ctx, `SELECT id FROM recipients TABLESAMPLE SYSTEM ($1)`, percent)
		if err != nil {
			return err
		}
		if ids, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return err
		}
		total = float64(len(ids)) * 100 / percent
	}
	n := int(max(1, min(float64(cfg.ranges), total/float64(cfg.chunk))))
	fractions := make([]float64, 0, n-1)
	for k := 1; k < n; k++ {
		fractions = append(fractions, float64(k)/float64(n))
	}
	// The bounds are ordered by PostgreSQL (its collation is the one the cursors
	// compare with), and the same bound twice would make an empty range.
	_, err := tx.Exec(ctx, `
		WITH bounds AS (
			SELECT DISTINCT b FROM unnest((SELECT percentile_disc($2::float8[]) WITHIN GROUP (ORDER BY i) FROM unnest($3::text[]) i)) b
			WHERE b IS NOT NULL AND b <> ''),
		los AS (SELECT '' AS lo UNION ALL SELECT b FROM bounds)
		INSERT INTO expand_ranges (broadcast_id, lo, hi, cursor)
		SELECT $1, lo, lead(lo) OVER (ORDER BY lo), lo FROM los`, id, fractions, ids)
	return err
}

// expandRange expands one range a chunk at a time until it is done, the
// broadcast is stopped, or the deadline passes.
func (s *Service) expandRange(ctx context.Context, id int64, st *expansionState, lo string, deadline time.Time, chunk int) rangeOutcome {
	var out rangeOutcome
	for {
		n, done, stopped, err := s.expandChunk(ctx, id, st, lo, chunk)
		out.recipients += n
		if err != nil {
			out.err = err
			return out
		}
		if done || stopped || time.Now().After(deadline) {
			return out
		}
	}
}

// expandChunk writes the deliveries and delivery jobs of the next chunk of a
// range, and advances the range's cursor, in one transaction. It holds the
// broadcast row shared, so that chunks of several ranges run at once while
// cancel and pause (which update the row) wait for them, and chunks that start
// later see the new status and stop.
func (s *Service) expandChunk(ctx context.Context, id int64, st *expansionState, lo string, chunk int) (expanded int, done, stopped bool, err error) {
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var status string
		var isExpanded bool
		err := tx.QueryRow(ctx, `SELECT status, expanded FROM broadcasts WHERE id = $1 FOR SHARE`, id).Scan(&status, &isExpanded)
		if errors.Is(err, pgx.ErrNoRows) {
			stopped = true
			return nil
		}
		if err != nil {
			return err
		}
		if isExpanded || !expansionActive(status) {
			stopped = true
			return nil
		}
		var hi *string
		var cursor string
		err = tx.QueryRow(ctx, `SELECT hi, cursor, done FROM expand_ranges WHERE broadcast_id = $1 AND lo = $2 FOR UPDATE`, id, lo).
			Scan(&hi, &cursor, &done)
		if err != nil || done {
			return err
		}
		w, err := s.writeChunk(ctx, tx, id, st, cursor, hi, chunk)
		if err != nil {
			return err
		}
		expanded, done = w.recipients, w.recipients < chunk
		if w.last != nil {
			cursor = *w.last
		}
		if _, err := tx.Exec(ctx, `UPDATE expand_ranges SET cursor = $3, recipients = recipients + $4, done = $5
			WHERE broadcast_id = $1 AND lo = $2`, id, lo, cursor, expanded, done); err != nil {
			return err
		}
		if len(w.batches) == 0 {
			return nil
		}
		return s.opts.Enqueuer.EnqueueDeliveriesTx(ctx, tx, w.batches, false)
	})
	return expanded, done, stopped, err
}

// chunkWritten is what writeChunk did.
type chunkWritten struct {
	recipients int     // recipients read from the audience
	last       *string // the last of them (nil: none)
	batches    []DeliveryBatch
}

// writeChunk inserts one delivery per recipient and channel for the next chunk
// recipients of the audience after cursor (up to hi), in one statement on the
// server. Deliveries that cannot or must not be sent are written suppressed with
// the reason; with a dedupe key, a delivery whose (key, recipient, channel) is
// already claimed becomes a suppressed duplicate. The statement returns the ids
// it inserted and which of them to send; cutChunkBatches cuts those into
// delivery batches here, which costs PostgreSQL less than the window functions
// that did it on the server (about 15% of the statement).
func (s *Service) writeChunk(ctx context.Context, tx pgx.Tx, id int64, st *expansionState, cursor string, hi *string, chunk int) (chunkWritten, error) {
	args := &sqlArgs{}
	var where string
	if st.recipientIDs != nil {
		where = "r.id = ANY(" + args.add(st.recipientIDs) + "::text[])"
	} else {
		where = compileFilter(st.filter, args)
	}
	page := audiencePageSQL(where, st.cutoff, cursor, hi, chunk, args)
	broadcast := args.add(id) + "::bigint"
	channels := args.add(st.channels) + "::text[]"
	reason := suppressionSQL("a", args.add(st.cutoff)+"::timestamptz", args.add(st.category)+"::text",
		args.add(slices.Contains(s.opts.RequiredCategories, st.category))+"::boolean")
	// With a dedupe key, only the deliveries whose claim this statement took are
	// sent; the others are marked duplicates below (a statement cannot update the
	// rows its own CTE inserted).
	dedupe, sent, dups := "", "", "'{}'::bigint[]"
	if st.dedupeKey != nil {
		dedupe = `claimed AS (
			INSERT INTO dedupe_claims (dedupe_key, recipient_id, channel, delivery_id)
			SELECT ` + args.add(*st.dedupeKey) + `::text, recipient_id, channel, id FROM ins WHERE status = 'pending'
			ON CONFLICT DO NOTHING
			RETURNING delivery_id),`
		sent = " AND id IN (SELECT delivery_id FROM claimed)"
		dups = "ARRAY(SELECT id FROM ins WHERE status = 'pending' AND id NOT IN (SELECT delivery_id FROM claimed))"
	}
	// OFFSET 0 keeps the lateral subquery from being flattened, which would
	// evaluate the suppression CASE (and its subqueries) once for the status and
	// again for the reason. No ON CONFLICT: ranges are disjoint and a range's
	// chunks follow its cursor under its row lock, so a conflict cannot happen;
	// if one did, the unique index fails the chunk rather than skip it, and
	// checking every row for it cost a quarter of the statement. The kind of
	// a delivery to send is 1 + the index of its channel, of any other 0.
	q := `
		WITH a AS MATERIALIZED (` + page + `),
		ins AS (
			INSERT INTO deliveries (broadcast_id, recipient_id, channel, status, reason, address)
			SELECT ` + broadcast + `, a.id, ch.channel,
				CASE WHEN x.reason IS NULL THEN 'pending' ELSE 'suppressed' END, x.reason,
				CASE WHEN ch.channel = 'email' THEN a.email END
			FROM a
			CROSS JOIN unnest(` + channels + `) AS ch(channel)
			CROSS JOIN LATERAL (SELECT ` + reason + ` AS reason OFFSET 0) x
			RETURNING id, recipient_id, channel, status),
		` + dedupe + `
		inserted AS (
			SELECT array_agg(id) AS ids,
				array_agg(CASE WHEN status = 'pending'` + sent + ` THEN array_position(` + channels + `, channel) ELSE 0 END::int2) AS kinds
			FROM ins)
		SELECT (SELECT count(*) FROM a)::int, (SELECT max(id) FROM a), inserted.ids, inserted.kinds, ` + dups + `
		FROM inserted`
	var w chunkWritten
	var ids, duplicates []int64
	var kinds []int16
	err := tx.QueryRow(ctx, q, args.values...).Scan(&w.recipients, &w.last, &ids, &kinds, &duplicates)
	if err != nil {
		return w, err
	}
	if len(duplicates) > 0 {
		if _, err := tx.Exec(ctx, `UPDATE deliveries SET status = 'suppressed', reason = 'duplicate', finished_at = now()
			WHERE id = ANY($1)`, duplicates); err != nil {
			return w, err
		}
	}
	w.batches = cutChunkBatches(id, st.channels, ids, kinds)
	return w, nil
}

// cutChunkBatches cuts the deliveries one chunk inserted into delivery batches.
// ids are all of them, kinds[i] is 1 + the index in channels of a delivery to
// send and 0 for one not to (suppressed, duplicate). A batch holds up to its
// channel's size of deliveries to send, in ascending ids, and never spans a gap
// in the chunk's ids: chunks of other ranges insert at the same time and take
// ids from the same sequence, so every id in a batch's range must be one of this
// chunk's, or a delivery could be in two batches. (The sequence hands each
// connection a block of ids, see migration 007, so gaps are rare.)
func cutChunkBatches(broadcastID int64, channels []string, ids []int64, kinds []int16) []DeliveryBatch {
	if !slices.IsSorted(ids) {
		// RETURNING gives the insertion order, which is ascending within one
		// connection's block of ids; sort anyway rather than rely on it.
		order := make([]int, len(ids))
		for i := range order {
			order[i] = i
		}
		slices.SortFunc(order, func(a, b int) int { return cmp.Compare(ids[a], ids[b]) })
		sortedIDs, sortedKinds := make([]int64, len(ids)), make([]int16, len(ids))
		for i, j := range order {
			sortedIDs[i], sortedKinds[i] = ids[j], kinds[j]
		}
		ids, kinds = sortedIDs, sortedKinds
	}
	var out []DeliveryBatch
	open := make([]DeliveryBatch, len(channels)) // the batch being filled per channel; Count 0: none
	flush := func(k int) {
		if open[k].Count > 0 {
			out = append(out, open[k])
			open[k] = DeliveryBatch{}
		}
	}
	for i, id := range ids {
		if i > 0 && id != ids[i-1]+1 {
			for k := range open {
				flush(k)
			}
		}
		k := int(kinds[i]) - 1
		if k < 0 {
			continue
		}
		b := &open[k]
		if b.Count == 0 {
			*b = DeliveryBatch{BroadcastID: broadcastID, Channel: channels[k], FirstID: id}
		}
		b.LastID = id
		b.Count++
		if b.Count == BatchSize(channels[k]) {
			flush(k)
		}
	}
	for k := range open {
		flush(k)
	}
	slices.SortFunc(out, func(a, b DeliveryBatch) int {
		return cmp.Or(cmp.Compare(a.Channel, b.Channel), cmp.Compare(a.FirstID, b.FirstID))
	})
	return out
}

// finishExpansion brings the broadcast up to date with its ranges under its row
// lock: the audience size so far, and once every range is done, expanded (and
// completed if nothing is left to send). done: nothing is left to expand, or the
// broadcast was stopped.
func (s *Service) finishExpansion(ctx context.Context, id int64) (done bool, err error) {
	finished := false
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var status string
		var isExpanded bool
		err := tx.QueryRow(ctx, `SELECT status, expanded FROM broadcasts WHERE id = $1 FOR UPDATE`, id).Scan(&status, &isExpanded)
		if errors.Is(err, pgx.ErrNoRows) {
			done = true
			return nil
		}
		if err != nil {
			return err
		}
		if isExpanded {
			done = true
			return nil
		}
		var size int64
		var open bool
		if err := tx.QueryRow(ctx, `SELECT coalesce(sum(recipients), 0), coalesce(bool_or(NOT done), false)
			FROM expand_ranges WHERE broadcast_id = $1`, id).Scan(&size, &open); err != nil {
			return err
		}
		// A stopped broadcast keeps its state; resume expands the open ranges.
		done = !open || !expansionActive(status)
		finished = !open && expansionActive(status)
		_, err = tx.Exec(ctx, `UPDATE broadcasts SET audience_size = $2, updated_at = now(),
				status = CASE WHEN $3 THEN 'sending' ELSE status END,
				expanded = $3, expanded_at = CASE WHEN $3 THEN now() END
			WHERE id = $1`, id, size, finished)
		return err
	})
	if err != nil || !finished {
		return done, err
	}
	// After the commit, not inside it: a batch that records its last results
	// while this transaction is open looks at the broadcast as it was
	// (expanding) and leaves completion to us, so we must look after it has.
	return done, completeIfDone(ctx, s.pool, id)
}

// suppressionSQL is the reason a delivery to recipient row r on channel
// ch.channel must not be sent (NULL: send it): the same rules at expansion and in a
// dry run. The arguments name SQL parameters: the cut-off, the category, and
// whether the category is required (no opt-out). An address on the suppression
// list (bounced, spam report) is suppressed whatever the category.
func suppressionSQL(r, cutoff, category, required string) string {
	return `CASE
		WHEN ch.channel = 'email' AND ` + r + `.email IS NULL THEN 'no_address'
		WHEN ch.channel = 'push' AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.recipient_id = ` + r + `.id
			AND d.valid_from <= ` + cutoff + ` AND (d.valid_to IS NULL OR d.valid_to > ` + cutoff + `)) THEN 'no_device'
		WHEN NOT ` + required + ` AND EXISTS (SELECT 1 FROM preferences p WHERE p.recipient_id = ` + r + `.id
			AND p.categories -> ` + category + ` ->> ch.channel = 'false') THEN 'preference'
		WHEN ch.channel = 'email' AND EXISTS (SELECT 1 FROM suppressed_addresses s
			WHERE s.address_hash = ` + addressHashSQL(r+".email") + `) THEN 'suppressed_address'
		END`
}

// claimDedupe records (dedupe key, recipient, channel) for each delivery and marks
// the deliveries whose claim was already held as suppressed duplicates.
func claimDedupe(ctx context.Context, tx pgx.Tx, key string, ids []int64, recipients, channels []string) (map[int64]struct{}, error) {
	rows, err := tx.Query(ctx, `
		WITH claimed AS (
			INSERT INTO dedupe_claims (dedupe_key, recipient_id, channel, delivery_id)
			SELECT $1, r, c, d FROM unnest($2::bigint[], $3::text[], $4::text[]) AS u(d, r, c)
			ON CONFLICT DO NOTHING
			RETURNING delivery_id)
		UPDATE deliveries SET status = 'suppressed', reason = 'duplicate', finished_at = now()
		WHERE id = ANY($2) AND id NOT IN (SELECT delivery_id FROM claimed)
		RETURNING id`, key, ids, recipients, channels)
	if err != nil {
		return nil, err
	}
	dups := map[int64]struct{}{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		dups[id] = struct{}{}
	}
	return dups, rows.Err()
}

// cutBatches splits ascending delivery ids into batches of the channel's size.
func cutBatches(template DeliveryBatch, ids []int64) []DeliveryBatch {
	size := BatchSize(template.Channel)
	var out []DeliveryBatch
	for start := 0; start < len(ids); start += size {
		end := min(start+size, len(ids))
		b := template
		b.FirstID, b.LastID, b.Count = ids[start], ids[end-1], end-start
		out = append(out, b)
	}
	return out
}
