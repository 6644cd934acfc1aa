package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/riverqueue/river"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/notifyd/notifyd/notifier"
	"github.com/notifyd/notifyd/notifier/telemetry"
)

// expandWorker expands a broadcast a slice at a time; a long audience continues
// in a follow-up job so that no job runs long (and a rescued one redoes little).
type expandWorker struct {
	river.WorkerDefaults[ExpandArgs]
	q *Queue
}

func (w *expandWorker) Work(ctx context.Context, job *river.Job[ExpandArgs]) (err error) {
	// The delivery jobs written during expansion, and the follow-up expansion,
	// carry this span as their parent.
	ctx, span := w.q.startJobSpan(ctx, "notifyd.expand", job.JobRow)
	defer func() { endJobSpan(span, err) }()
	if span.IsRecording() {
		span.SetAttributes(attribute.Int64("broadcast_id", job.Args.BroadcastID))
	}
	res, err := w.q.svc.ExpandBroadcast(ctx, job.Args.BroadcastID, 20*time.Second)
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("recipients", res.Recipients), attribute.Bool("done", res.Done))
	}
	if err != nil {
		return fmt.Errorf("expand broadcast %d: %w", job.Args.BroadcastID, err)
	}
	w.q.cfg.Logger.InfoContext(ctx, "expanded", "broadcast_id", job.Args.BroadcastID, "recipients", res.Recipients, "done", res.Done)
	if !res.Done {
		_, err := w.q.client.Insert(ctx, job.Args, &river.InsertOpts{Queue: QueueExpand, Metadata: telemetry.InjectTraceMetadata(ctx)})
		return err
	}
	return nil
}

// deliverWorker sends one batch: pace, lock, claim, send, record.
type deliverWorker struct {
	river.WorkerDefaults[DeliverArgs]
	q *Queue
}

func (w *deliverWorker) Timeout(*river.Job[DeliverArgs]) time.Duration {
	return jobTimeout(w.q.cfg.SendTimeout)
}

// Work delivers the job's batch. With a limiter the batch goes out in slices
// (deliveryParts), each paced, claimed, sent and recorded on its own. A slice
// with transient failures does not stop the others: its deliveries go back to
// pending (or give up, each at its own MaxDeliveryAttempts, see RecordResults)
// and, once every slice has had its turn, the job snoozes for a backoff and
// comes back for what is pending. A snooze is not a River attempt; River's
// attempts are left for what is not a delivery's fault (the database, a crash).
//
// The job terminates: every run either sends a delivery, fails it, or uses one
// of its attempts. The exceptions are a provider that answers 429 or is
// blocked (backoff, open breaker), which wait without using attempts, as an
// outage must not fail deliveries; a cancel or pause stops those too.
func (w *deliverWorker) Work(ctx context.Context, job *river.Job[DeliverArgs]) (err error) {
	b := job.Args.DeliveryBatch
	ctx, span := w.q.startJobSpan(ctx, "notifyd.deliver", job.JobRow)
	var total notifier.RecordSummary // over the slices
	if span.IsRecording() {
		span.SetAttributes(batchAttributes(b)...)
	}
	defer func() {
		if span.IsRecording() {
			span.SetAttributes(summaryAttributes(total)...)
		}
		endJobSpan(span, err)
	}()
	channel := w.q.cfg.Channels[b.Channel]
	if channel == nil {
		return fmt.Errorf("channel %q is not configured in this worker", b.Channel)
	}
	// With a limiter, a batch goes out in parts of at most MaxBatch messages,
	// each paced, claimed, sent and recorded on its own (ratelimit.go).
	parts, perBroadcast, err := deliveryParts(ctx, w.q.svc.Pool(), w.q.cfg.Limiter, b)
	if err != nil {
		return fmt.Errorf("plan batch: %w", err)
	}
	started := time.Now()
	for i, part := range parts {
		if i > 0 && time.Since(started) > w.q.cfg.SendTimeout {
			// A long paced batch continues in a later run, well inside the job's
			// timeout; what is left is still pending. Not an attempt.
			return river.JobSnooze(retrySnooze(total, time.Second))
		}
		partCtx, slice := ctx, trace.Span(nil)
		if len(parts) > 1 && span.IsRecording() {
			// A paced batch goes out in slices: one span each.
			partCtx, slice = telemetry.StartSpan(ctx, "notifyd.deliver.slice", trace.SpanKindInternal)
			slice.SetAttributes(batchAttributes(part)...)
		}
		sum, err := w.deliverPart(partCtx, channel, part, perBroadcast)
		total.Add(sum)
		if slice != nil {
			slice.SetAttributes(summaryAttributes(sum)...)
			endJobSpan(slice, err)
		}
		if err != nil {
			// The provider is blocked (a snooze) or the database failed: the
			// remaining slices are still pending and go out in a later run.
			return err
		}
	}
	if total.Retry > 0 {
		w.q.cfg.Logger.InfoContext(ctx, "deliveries back to pending for a retry", "broadcast_id", b.BroadcastID,
			"notification_id", b.NotificationID, "channel", b.Channel, "retry", total.Retry,
			"attempts", total.RetryAttempts, "rate_limited", total.RateLimited, "error", total.LastError)
		return river.JobSnooze(retrySnooze(total, 0))
	}
	return nil
}

// retrySnooze is how long a job waits before retrying what its run put back to
// pending: the backoff of the most-tried of those deliveries (retry.go), and at
// least the provider's Retry-After after a 429. Without retries it is floor.
func retrySnooze(sum notifier.RecordSummary, floor time.Duration) time.Duration {
	d := floor
	if sum.RetryAttempts > 0 {
		d = max(d, retryDelay(sum.RetryAttempts))
	}
	if sum.RateLimited {
		d = max(d, sum.RetryAfter, time.Second)
	}
	return d
}

// batchAttributes and summaryAttributes describe a delivery slice on its span.
func batchAttributes(b notifier.DeliveryBatch) []attribute.KeyValue {
	attrs := []attribute.KeyValue{attribute.String("channel", b.Channel), attribute.Int("count", b.Count),
		attribute.Int64("first_id", b.FirstID), attribute.Int64("last_id", b.LastID)}
	if b.BroadcastID != 0 {
		attrs = append(attrs, attribute.Int64("broadcast_id", b.BroadcastID))
	}
	if b.NotificationID != 0 {
		attrs = append(attrs, attribute.Int64("notification_id", b.NotificationID))
	}
	return attrs
}

func summaryAttributes(sum notifier.RecordSummary) []attribute.KeyValue {
	return []attribute.KeyValue{attribute.Int("sent", sum.Sent), attribute.Int("failed", sum.Failed),
		attribute.Int("unknown", sum.Unknown), attribute.Int("retry", sum.Retry)}
}

// deliverPart paces, claims, sends and records one slice; the summary counts
// what was recorded (zero when nothing was sent).
func (w *deliverWorker) deliverPart(ctx context.Context, channel notifier.Channel, b notifier.DeliveryBatch, perBroadcast *float64) (notifier.RecordSummary, error) {
	var none notifier.RecordSummary
	svc, log, lim := w.q.svc, w.q.cfg.Logger, w.q.cfg.Limiter
	// Pace before taking the send lock: a batch waiting for its turn must not
	// hold up a cancel.
	if lim != nil {
		waitCtx, waitSpan := telemetry.StartSpan(ctx, "notifyd.ratelimit.wait", trace.SpanKindInternal)
		if waitSpan.IsRecording() {
			waitSpan.SetAttributes(attribute.String("channel", b.Channel), attribute.Int("count", b.Count))
		}
		err := lim.Wait(waitCtx, b.Channel, b.Count, perBroadcast, b.BroadcastID)
		var blocked ErrProviderBlocked
		if errors.As(err, &blocked) {
			// The provider is backing off or its breaker is open: come back
			// then. A snooze is not an attempt, so an outage fails nothing.
			err = river.JobSnooze(max(time.Until(blocked.Until), time.Second))
		}
		endJobSpan(waitSpan, err)
		if err != nil {
			return none, err
		}
	}
	var conn notifier.DB = svc.Pool()
	var lock *notifier.SendLock
	if b.BroadcastID != 0 {
		var err error
		if lock, err = svc.AcquireSendLock(ctx, b.BroadcastID); err != nil {
			return none, err
		}
		defer lock.Release(ctx)
		conn = lock.Conn
	}
	claim, err := svc.ClaimBatch(ctx, conn, b)
	if err != nil {
		return none, fmt.Errorf("claim: %w", err)
	}
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attribute.Int("claimed", len(claim.Messages)), attribute.Bool("stopped", claim.Stopped))
	}
	if claim.Stopped || len(claim.Messages) == 0 {
		return none, svc.FinishBatch(ctx, conn, b)
	}
	sendCtx, cancel := context.WithTimeout(ctx, w.q.cfg.SendTimeout)
	stopGuard := func() {}
	if lock != nil {
		// If the lock's connection dies while the batch is at the provider, a
		// cancel no longer waits for it: no further request may start.
		sendCtx, stopGuard = lock.Guard(sendCtx)
	}
	sendCtx, sendSpan := telemetry.StartSpan(sendCtx, "notifyd.send", trace.SpanKindInternal)
	if sendSpan.IsRecording() {
		sendSpan.SetAttributes(attribute.String("channel", b.Channel), attribute.Int("messages", len(claim.Messages)))
	}
	results := channel.Send(sendCtx, claim.Messages)
	sendSpan.End()
	stopGuard()
	cancel()
	// Record even if the job's context ended (shutdown): what the provider said
	// must not be lost.
	recordCtx, cancelRecord := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancelRecord()
	recordOpts := notifier.RecordOpts{MaxAttempts: w.q.cfg.MaxDeliveryAttempts}
	sum, err := svc.RecordResults(recordCtx, conn, results, recordOpts)
	if err != nil && lock != nil && lock.Conn.Conn().IsClosed() {
		// The send lock's connection died while the batch was at the provider
		// (PostgreSQL restarted, say), and the lock with it. What the provider
		// said is still ours to record, under a new lock: the sweep turns these
		// claims unknown only well after (2 x the send timeout + 30 s), and
		// both write only deliveries still 'sending', so whichever comes first
		// decides and nothing is counted twice.
		log.WarnContext(ctx, "send lock connection lost during the provider call; recording on a new connection",
			"broadcast_id", b.BroadcastID, "channel", b.Channel, "error", err)
		conn = svc.Pool()
		sum, err = recordUnderNewLock(recordCtx, svc, b.BroadcastID, results, recordOpts)
	}
	if err != nil {
		return none, err
	}
	if err := svc.FinishBatch(recordCtx, conn, b); err != nil {
		return sum, err
	}
	log.DebugContext(ctx, "batch delivered", "broadcast_id", b.BroadcastID, "notification_id", b.NotificationID,
		"channel", b.Channel, "sent", sum.Sent, "failed", sum.Failed, "unknown", sum.Unknown, "retry", sum.Retry)
	if lim != nil {
		// Tell the limiter how the provider is doing; the results are already
		// recorded, so a failure here is only logged.
		var err error
		switch {
		case sum.RateLimited:
			err = lim.Backoff(recordCtx, b.Channel, max(sum.RetryAfter, time.Second))
		case sum.Sent > 0:
			err = lim.RecordOutcome(recordCtx, b.Channel, true)
		case sum.Retry > 0 || sum.Unknown > 0:
			err = lim.RecordOutcome(recordCtx, b.Channel, false)
		}
		if err != nil {
			log.WarnContext(ctx, "rate limiter update failed", "channel", b.Channel, "error", err)
		}
	}
	// Deliveries back to pending are the job's to retry once its other slices
	// have gone out (Work); they are not an error of this slice.
	return sum, nil
}

// recordUnderNewLock takes the broadcast's send lock on a new connection and
// records results there, then cancels what the record put back to pending if a
// cancel ran while the batch held no lock. It tries until it succeeds or ctx
// ends, waiting a little longer each time: PostgreSQL may still be restarting.
// The results are recorded once: a second record would find no row still
// 'sending' and sum up nothing.
func recordUnderNewLock(ctx context.Context, svc *notifier.Service, broadcastID int64, results []notifier.SendResult, opts notifier.RecordOpts) (notifier.RecordSummary, error) {
	ids := make([]int64, len(results))
	for i, r := range results {
		ids[i] = r.DeliveryID
	}
	var sum notifier.RecordSummary
	recorded := false
	attempt := func() error {
		lock, err := svc.AcquireSendLock(ctx, broadcastID)
		if err != nil {
			return err
		}
		defer lock.Release(ctx)
		if !recorded {
			if sum, err = svc.RecordResults(ctx, lock.Conn, results, opts); err != nil {
				return err
			}
			recorded = true
		}
		return svc.CancelPendingIfCancelled(ctx, lock.Conn, broadcastID, ids)
	}
	wait := 100 * time.Millisecond
	for {
		err := attempt()
		if err == nil {
			return sum, nil
		}
		select {
		case <-ctx.Done():
			return sum, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// maintenanceWorker sweeps interrupted claims and expired idempotency keys.
type maintenanceWorker struct {
	river.WorkerDefaults[MaintenanceArgs]
	q *Queue
}

func (w *maintenanceWorker) Work(ctx context.Context, job *river.Job[MaintenanceArgs]) error {
	svc, log := w.q.svc, w.q.cfg.Logger
	swept, err := svc.SweepInterrupted(ctx, sweepAfter(w.q.cfg.SendTimeout))
	if err != nil {
		return err
	}
	if swept > 0 {
		log.WarnContext(ctx, "deliveries interrupted between claim and record marked unknown", "count", swept)
	}
	if _, err := svc.DeleteExpiredIdempotencyKeys(ctx); err != nil {
		return err
	}
	if w.q.cfg.InboxRetention > 0 {
		deleted, err := svc.DeleteOldInboxItems(ctx, w.q.cfg.InboxRetention)
		if err != nil {
			return err
		}
		if deleted > 0 {
			log.InfoContext(ctx, "old inbox items deleted", "count", deleted, "retention", w.q.cfg.InboxRetention)
		}
	}
	if w.q.cfg.EventRetention > 0 {
		if _, err := svc.DeleteOldDeliveryEvents(ctx, w.q.cfg.EventRetention); err != nil {
			return err
		}
	}
	return nil
}
