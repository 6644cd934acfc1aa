package notifier

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// Completion: when a broadcast is done, and what happens to claims whose worker
// died before recording them.

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
func (s *Service) SweepInterrupted(ctx context.Context, olderThan time.Duration) (int64, error) {
	rows, err := s.pool.Query(ctx, `
		UPDATE deliveries SET status = 'unknown', reason = 'interrupted', finished_at = now(),
			last_error = 'the worker stopped between claim and record'
		WHERE status = 'sending' AND claimed_at < now() - $1::interval
		RETURNING broadcast_id`, olderThan)
	if err != nil {
		return 0, err
	}
	broadcasts, err := pgx.CollectRows(rows, pgx.RowTo[*int64])
	if err != nil {
		return 0, err
	}
	seen := map[int64]bool{}
	for _, b := range broadcasts {
		if b != nil && !seen[*b] {
			seen[*b] = true
			if err := completeIfDone(ctx, s.pool, *b); err != nil {
				return 0, err
			}
		}
	}
	return int64(len(broadcasts)), nil
}

// completeIfDone marks a fully expanded broadcast completed once no delivery is
// pending or in flight.
func completeIfDone(ctx context.Context, q DB, id int64) error {
	_, err := q.Exec(ctx, `UPDATE broadcasts SET status = 'completed', completed_at = now(), updated_at = now()
		WHERE id = $1 AND status = 'sending' AND expanded
		AND NOT EXISTS (SELECT 1 FROM deliveries WHERE broadcast_id = $1 AND status IN ('pending', 'sending'))`, id)
	return err
}
