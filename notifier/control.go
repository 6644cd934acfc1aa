package notifier

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Operator actions on a broadcast.
const (
	ActionCancel = "cancel"
	ActionPause  = "pause"
	ActionResume = "resume"
)

// ControlResult is what cancel, pause and resume answer: the broadcast's status
// and its counts once the action took effect.
type ControlResult struct {
	ID      int64         `json:"id"`
	Action  string        `json:"action"`
	Status  string        `json:"status"`
	Changed bool          `json:"changed"` // false when it was already so
	Counts  ControlCounts `json:"counts"`
}

// ControlCounts are the counts at the moment an action took effect. InFlight is
// deliveries claimed but never recorded (their worker died); they become unknown.
type ControlCounts struct {
	Sent       int64 `json:"sent"`
	InFlight   int64 `json:"in_flight"`
	Pending    int64 `json:"pending"`
	Cancelled  int64 `json:"cancelled"`
	Failed     int64 `json:"failed"`
	Suppressed int64 `json:"suppressed"`
	Unknown    int64 `json:"unknown"`
}

// CancelBroadcast stops a broadcast for good. It takes the broadcast's send lock
// exclusively, so it returns only after every provider call that had claimed its
// deliveries has finished and been recorded; then it marks the broadcast
// cancelled and every pending delivery cancelled, in one transaction. No claim
// can succeed afterwards, whatever the job queue re-runs.
func (s *Service) CancelBroadcast(ctx context.Context, actor string, id int64) (*ControlResult, error) {
	return s.control(ctx, actor, id, ActionCancel)
}

// PauseBroadcast stops new sends like cancel, but leaves pending deliveries
// pending for ResumeBroadcast.
func (s *Service) PauseBroadcast(ctx context.Context, actor string, id int64) (*ControlResult, error) {
	return s.control(ctx, actor, id, ActionPause)
}

// ResumeBroadcast continues a paused broadcast from each delivery's own state: it
// enqueues jobs for the deliveries still pending (and the rest of the expansion),
// so nothing already sent is sent again. A cancelled broadcast cannot resume.
func (s *Service) ResumeBroadcast(ctx context.Context, actor string, id int64) (*ControlResult, error) {
	return s.control(ctx, actor, id, ActionResume)
}

func (s *Service) control(ctx context.Context, actor string, id int64, action string) (*ControlResult, error) {
	res := &ControlResult{ID: id, Action: action}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		// Waits for in-flight batches (they hold it shared) and holds new ones off.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, $2)", int32(sendLockClass), int32(id)); err != nil {
			return err
		}
		var status string
		var expanded bool
		var sendAt *time.Time
		err := tx.QueryRow(ctx, `SELECT status, expanded, send_at FROM broadcasts WHERE id = $1 FOR UPDATE`, id).Scan(&status, &expanded, &sendAt)
		if errors.Is(err, pgx.ErrNoRows) {
			return Errorf(ENOTFOUND, "broadcast %d not found", id)
		}
		if err != nil {
			return err
		}
		next, err := nextStatus(action, status, expanded, sendAt)
		if err != nil {
			return err
		}
		res.Status, res.Changed = next, next != status
		if res.Changed {
			if err := s.applyControl(ctx, tx, id, action, next, expanded, sendAt); err != nil {
				return err
			}
		}
		if res.Counts, err = controlCounts(ctx, tx, id); err != nil {
			return err
		}
		detail := "from " + status
		if !res.Changed {
			detail = "already " + status
		}
		_, err = tx.Exec(ctx, `INSERT INTO audit_log (actor, action, broadcast_id, counts, detail) VALUES ($1, $2, $3, $4, $5)`,
			actor, action, id, res.Counts, detail)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.logger.InfoContext(ctx, "broadcast "+action, "broadcast_id", id, "actor", actor, "status", res.Status,
		"sent", res.Counts.Sent, "cancelled", res.Counts.Cancelled, "pending", res.Counts.Pending)
	return res, nil
}

// CancelPendingIfCancelled cancels those of ids that are pending if their
// broadcast is cancelled. A batch records under the broadcast's send lock, so a
// cancel waits for it and then cancels what the record put back to pending; a
// batch whose lock went with its connection (PostgreSQL restarted during the
// provider call) records later, under a new lock, and calls this after: a
// cancel that ran in between found its deliveries still sending.
func (s *Service) CancelPendingIfCancelled(ctx context.Context, q DB, broadcastID int64, ids []int64) error {
	_, err := q.Exec(ctx, `UPDATE deliveries SET status = 'cancelled', reason = 'cancelled', finished_at = now()
		WHERE id = ANY($2) AND status = 'pending' AND broadcast_id = $1
		  AND EXISTS (SELECT 1 FROM broadcasts WHERE id = $1 AND status = 'cancelled')`, broadcastID, ids)
	return err
}

// nextStatus is the state machine of operator actions.
func nextStatus(action, status string, expanded bool, sendAt *time.Time) (string, error) {
	active := []string{StatusScheduled, StatusExpanding, StatusSending}
	switch action {
	case ActionCancel:
		if status == StatusCancelled || status == StatusPaused || slices.Contains(active, status) {
			return StatusCancelled, nil
		}
	case ActionPause:
		if status == StatusPaused || slices.Contains(active, status) {
			return StatusPaused, nil
		}
	case ActionResume:
		if slices.Contains(active, status) {
			return status, nil
		}
		if status == StatusPaused {
			switch {
			case sendAt != nil && sendAt.After(time.Now()):
				return StatusScheduled, nil
			case !expanded:
				return StatusExpanding, nil
			}
			return StatusSending, nil
		}
	}
	return "", Errorf(ECONFLICT, "cannot %s a broadcast that is %s", action, status)
}

func (s *Service) applyControl(ctx context.Context, tx pgx.Tx, id int64, action, next string, expanded bool, sendAt *time.Time) error {
	if _, err := tx.Exec(ctx, `UPDATE broadcasts SET status = $2, updated_at = now(),
			cancelled_at = CASE WHEN $2 = 'cancelled' THEN now() ELSE cancelled_at END WHERE id = $1`, id, next); err != nil {
		return err
	}
	switch action {
	case ActionCancel:
		// Rare: reading all the broadcast's deliveries by its unique indexes
		// is fine; the counters spare it when nothing is pending.
		if pending, err := pendingCount(ctx, tx, id); err != nil || pending == 0 {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE deliveries SET status = 'cancelled', reason = 'cancelled', finished_at = now()
			WHERE broadcast_id = $1 AND status = 'pending' AND `+anyChannelSQL("channel"), id)
		return err
	case ActionResume:
		if !expanded {
			at := time.Now()
			if sendAt != nil && sendAt.After(at) {
				at = *sendAt
			}
			if err := s.opts.Enqueuer.EnqueueExpandTx(ctx, tx, id, at); err != nil {
				return err
			}
		}
		return s.enqueuePending(ctx, tx, id)
	}
	return nil
}

// enqueuePending puts new delivery jobs on the queue for a broadcast's pending
// deliveries. Older jobs for the same rows may still run: the claim lets each
// delivery through once.
func (s *Service) enqueuePending(ctx context.Context, tx pgx.Tx, id int64) error {
	pending, err := pendingCount(ctx, tx, id)
	if err != nil {
		return err
	}
	if pending > 0 {
		// One pass over the broadcast's deliveries (its unique indexes), all channels.
		rows, err := tx.Query(ctx, `SELECT channel, id FROM deliveries
			WHERE broadcast_id = $1 AND status = 'pending' AND `+anyChannelSQL("channel")+` ORDER BY channel, id`, id)
		if err != nil {
			return err
		}
		byChannel := map[string][]int64{}
		var channel string
		var did int64
		if _, err := pgx.ForEachRow(rows, []any{&channel, &did}, func() error {
			byChannel[channel] = append(byChannel[channel], did)
			return nil
		}); err != nil {
			return err
		}
		var batches []DeliveryBatch
		for _, ch := range channelNames {
			batches = append(batches, cutBatches(DeliveryBatch{BroadcastID: id, Channel: ch}, byChannel[ch])...)
		}
		if len(batches) > 0 {
			if err := s.opts.Enqueuer.EnqueueDeliveriesTx(ctx, tx, batches, false); err != nil {
				return err
			}
		}
	}
	return completeIfDone(ctx, tx, id)
}

// pendingCount is how many of a broadcast's deliveries are pending, from the
// counters.
func pendingCount(ctx context.Context, q DB, id int64) (int64, error) {
	var n int64
	err := q.QueryRow(ctx, `SELECT coalesce(sum(n), 0)::bigint FROM delivery_counts WHERE broadcast_id = $1 AND status = 'pending'`, id).Scan(&n)
	return n, err
}

func controlCounts(ctx context.Context, q DB, id int64) (ControlCounts, error) {
	byChannel, err := deliveryCounts(ctx, q, id)
	if err != nil {
		return ControlCounts{}, err
	}
	t := sumChannels(byChannel)
	return ControlCounts{Sent: t.Sent, InFlight: t.Sending, Pending: t.Pending, Cancelled: t.Cancelled,
		Failed: t.Failed, Suppressed: t.Suppressed, Unknown: t.Unknown}, nil
}

// AuditEntry is one operator action.
type AuditEntry struct {
	ID          int64         `json:"id"`
	At          time.Time     `json:"at"`
	Actor       string        `json:"actor"`
	Action      string        `json:"action"`
	BroadcastID *int64        `json:"broadcast_id,omitempty"`
	Counts      ControlCounts `json:"counts"`
	Detail      string        `json:"detail,omitempty"`
}

// AuditPage is one page of the audit log, newest first.
type AuditPage struct {
	Entries    []*AuditEntry `json:"entries"`
	NextCursor string        `json:"next_cursor,omitempty"`
}

// FindAuditEntries lists operator actions, optionally for one broadcast.
func (s *Service) FindAuditEntries(ctx context.Context, broadcastID int64, limit int, cursor string) (*AuditPage, error) {
	problems := map[string]string{}
	limit, err := pageLimit(limit)
	if err != nil {
		problems["limit"] = err.Error()
	}
	before := int64(1<<63 - 1)
	if cursor != "" {
		if before, err = decodeIDCursor(cursor); err != nil {
			problems["cursor"] = "is not a cursor from a previous page"
		}
	}
	if err := Invalid(problems); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT id, at, actor, action, broadcast_id, counts, detail FROM audit_log
		WHERE id < $1 AND ($2 = 0 OR broadcast_id = $2) ORDER BY id DESC LIMIT $3`, before, broadcastID, limit+1)
	if err != nil {
		return nil, err
	}
	entries, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*AuditEntry, error) {
		e := &AuditEntry{}
		return e, row.Scan(&e.ID, &e.At, &e.Actor, &e.Action, &e.BroadcastID, &e.Counts, &e.Detail)
	})
	if err != nil {
		return nil, err
	}
	page := &AuditPage{Entries: entries}
	if len(entries) > limit {
		page.Entries = entries[:limit]
		page.NextCursor = encodeIDCursor(entries[limit-1].ID)
	}
	if page.Entries == nil {
		page.Entries = []*AuditEntry{}
	}
	return page, nil
}
