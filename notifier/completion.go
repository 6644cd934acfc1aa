package notifier

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// Completion: when a broadcast is done, and what happens to claims whose worker
// died before recording them. Both read delivery_counts (migration 008), the
// per-statement deltas of deliveries by (broadcast, channel, status) that
// triggers on deliveries write, rather than scanning deliveries.

// FinishBatch marks the broadcast completed if this batch was the last open work.
func (s *Service) FinishBatch(ctx context.Context, q DB, b DeliveryBatch) error {
	if b.BroadcastID == 0 {
		return nil
	}
	return completeIfDone(ctx, q, b.BroadcastID)
}

// SweepInterrupted marks deliveries claimed longer ago than olderThan and never
// recorded as unknown: their worker died between claim and record, so the
// provider may or may not have them. They are never resent (at most once).
//
// It looks only where a claim happened: each claim statement left a delta row
// (status 'sending', n > 0) with the id range of its deliveries and its time.
// Once the ranges of the claims older than the cut-off are swept, no delivery
// they claimed can still be in flight from them, so those rows, and every delta
// row that is not a claim, are folded into one row per (broadcast, channel,
// status). That keeps delivery_counts small for the readers.
func (s *Service) SweepInterrupted(ctx context.Context, olderThan time.Duration) (int64, error) {
	var swept int
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var before time.Time
		var claims, firsts, lasts []int64
		err := tx.QueryRow(ctx, `SELECT now() - $1::interval`, olderThan).Scan(&before)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT id, first_id, last_id FROM delivery_counts
			WHERE status = 'sending' AND n > 0 AND first_id IS NOT NULL AND at < $1 ORDER BY first_id`, before)
		if err != nil {
			return err
		}
		var first, last, id int64
		_, err = pgx.ForEachRow(rows, []any{&id, &first, &last}, func() error {
			claims = append(claims, id)
			if n := len(lasts); n > 0 && first <= lasts[n-1]+1 {
				lasts[n-1] = max(lasts[n-1], last) // merged: a row is read once
				return nil
			}
			firsts, lasts = append(firsts, first), append(lasts, last)
			return nil
		})
		if err != nil {
			return err
		}
		if len(firsts) > 0 {
			tag, err := tx.Exec(ctx, `
				UPDATE deliveries d SET status = 'unknown', reason = 'interrupted', finished_at = now(),
					last_error = 'the worker stopped between claim and record'
				FROM unnest($1::bigint[], $2::bigint[]) AS r(first_id, last_id)
				WHERE d.id BETWEEN r.first_id AND r.last_id AND d.status = 'sending' AND d.claimed_at < $3`, firsts, lasts, before)
			if err != nil {
				return err
			}
			swept = int(tag.RowsAffected())
		}
		return foldDeliveryCounts(ctx, tx, claims)
	})
	if err != nil {
		return 0, err
	}
	// Completes the broadcasts the sweep finished (no batch is left to record
	// their swept deliveries), and any other left sending with nothing open:
	// batches and the expansion complete their broadcast after their own
	// commits, so this is a safety net, not the rule.
	if _, err := s.pool.Exec(ctx, completeDoneSQL); err != nil {
		return 0, err
	}
	return int64(swept), nil
}

// foldDeliveryCounts replaces the delta rows of delivery_counts by their sum per
// (broadcast, channel, status), in one statement so readers see either. Claims
// (positive 'sending' rows with a range) stay for the sweep, except the ones
// given, which the sweep has just dealt with.
func foldDeliveryCounts(ctx context.Context, tx pgx.Tx, sweptClaims []int64) error {
	_, err := tx.Exec(ctx, `
		WITH folded AS (
			DELETE FROM delivery_counts
			WHERE NOT (status = 'sending' AND n > 0 AND first_id IS NOT NULL) OR id = ANY($1)
			RETURNING broadcast_id, channel, status, n)
		INSERT INTO delivery_counts (broadcast_id, channel, status, n)
		SELECT broadcast_id, channel, status, sum(n) FROM folded
		GROUP BY 1, 2, 3 HAVING sum(n) <> 0`, sweptClaims)
	return err
}

// completeDoneSQL marks fully expanded broadcasts completed once no delivery is
// pending or in flight (by delivery_counts).
const completeDoneSQL = `UPDATE broadcasts b SET status = 'completed', completed_at = now(), updated_at = now()
	WHERE b.status = 'sending' AND b.expanded
	AND (SELECT coalesce(sum(n), 0) FROM delivery_counts c WHERE c.broadcast_id = b.id AND c.status IN ('pending', 'sending')) = 0`

// completeIfDone applies completeDoneSQL to one broadcast.
func completeIfDone(ctx context.Context, q DB, id int64) error {
	_, err := q.Exec(ctx, completeDoneSQL+` AND b.id = $1`, id)
	return err
}

// deliveryCounts is a broadcast's (or, for id 0, all notifications')
// deliveries by channel and status, from delivery_counts.
func deliveryCounts(ctx context.Context, q DB, broadcastID int64) (map[string]ChannelCounts, error) {
	rows, err := q.Query(ctx, `SELECT channel, status, sum(n)::bigint FROM delivery_counts WHERE broadcast_id = $1
		GROUP BY channel, status HAVING sum(n) <> 0`, broadcastID)
	if err != nil {
		return nil, err
	}
	out := map[string]ChannelCounts{}
	var channel, status string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&channel, &status, &n}, func() error {
		c := out[channel]
		c.add(status, n)
		out[channel] = c
		return nil
	})
	return out, err
}
