package notifier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Claim is the outcome of claiming a batch: the messages to send now, and why
// nothing is to be sent if so.
type Claim struct {
	Messages []Message
	// Stopped is set when the broadcast is paused, cancelled or gone: the batch
	// must not send, whatever the queue does.
	Stopped       bool
	RatePerSecond *float64
}

// ClaimBatch moves the batch's pending deliveries to sending, right before the
// provider call, and renders them. In the same statement it re-reads what must be
// read live: the broadcast's status, the recipients' opt-outs, erasure and the
// suppression list of bounced and spam-reporting addresses; those deliveries
// become suppressed instead. Emails of categories that can be opted out of get
// their one-click List-Unsubscribe headers (see unsubscribe.go). q must be the connection that holds the
// broadcast's send lock (see queue), so cancel cannot slip in between.
func (s *Service) ClaimBatch(ctx context.Context, q DB, b DeliveryBatch) (*Claim, error) {
	owner, ownerID := "broadcast_id", b.BroadcastID
	if b.NotificationID != 0 {
		owner, ownerID = "notification_id", b.NotificationID
	}
	var (
		category   string
		contentRaw []byte
		cutoff     *time.Time
		status     = StatusSending
		rate       *float64
	)
	if b.BroadcastID != 0 {
		err := q.QueryRow(ctx, `SELECT category, content, cutoff_at, status, rate_per_second FROM broadcasts WHERE id = $1`, b.BroadcastID).
			Scan(&category, &contentRaw, &cutoff, &status, &rate)
		if errors.Is(err, pgx.ErrNoRows) {
			return &Claim{Stopped: true}, nil
		}
		if err != nil {
			return nil, err
		}
		if status != StatusExpanding && status != StatusSending {
			return &Claim{Stopped: true}, nil
		}
	} else {
		err := q.QueryRow(ctx, `SELECT category, content FROM notifications WHERE id = $1`, b.NotificationID).Scan(&category, &contentRaw)
		if errors.Is(err, pgx.ErrNoRows) {
			return &Claim{Stopped: true}, nil
		}
		if err != nil {
			return nil, err
		}
	}
	required := slices.Contains(s.opts.RequiredCategories, category)
	// A frequency cap counts what this recipient was sent (or may have been) in
	// the category on the channel within the window. Broadcast deliveries are
	// found by (broadcast, recipient, channel), one probe per broadcast of the
	// category that was still open within the window (its claims all came before
	// it finished, and finishing sets updated_at; migration 010 indexes both);
	// there is no index on deliveries by recipient alone (migration 009).
	capMax, capWindow := 0, time.Duration(0)
	if c, ok := s.opts.FrequencyCaps[category]; ok {
		capMax, capWindow = c.Max, c.Window
	}
	// The batch's channel as a constant, so that the cap's probe of broadcast
	// deliveries (below) uses that channel's unique index (migration 011).
	channel, err := channelLiteral(b.Channel)
	if err != nil {
		return nil, err
	}
	claimOn := q
	var capTx pgx.Tx
	if capMax > 0 {
		// The count sees only committed claims, so two claims counting at once
		// could each let the same person through. Claims of a capped category
		// take turns per channel: each holds the lock until its claim commits,
		// and the next one's statement starts after that.
		tx, err := q.Begin(ctx)
		if err != nil {
			return nil, err
		}
		defer func() { _ = tx.Rollback(ctx) }() // no-op once committed
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, int32(capLockClass), category+"/"+b.Channel); err != nil {
			return nil, err
		}
		claimOn, capTx = tx, tx
	}
	// owner is one of two fixed column names, never input. A batch is a range of
	// ids, read through the primary key: IS NOT DISTINCT FROM is = here ($1 is
	// never NULL), but no index serves it, so the planner cannot take the
	// broadcast's whole slice of its unique index instead, as it
	// did on the early statistics of a growing table (migration 009).
	//
	// One UPDATE, the reason computed per row in the SET's sub-select (OFFSET 0
	// keeps it from being inlined into each column that uses it): a delivery
	// changed meanwhile (cancelled) is re-checked against status = 'pending' by
	// the UPDATE itself. Locking the rows first (SELECT ... FOR UPDATE, then
	// UPDATE) wrote a WAL record more per row and took about a quarter longer
	// (pgbench on a 1M-recipient broadcast, docs/benchmarks.md).
	rows, err := claimOn.Query(ctx, `
		UPDATE deliveries d SET (status, reason, attempts, claimed_at, finished_at) = (
			SELECT CASE WHEN x.reason IS NULL THEN 'sending' ELSE 'suppressed' END,
				x.reason,
				d.attempts + CASE WHEN x.reason IS NULL THEN 1 ELSE 0 END,
				now(),
				CASE WHEN x.reason IS NULL THEN NULL ELSE now() END
			FROM (SELECT CASE
				WHEN NOT EXISTS (SELECT 1 FROM recipients r WHERE r.id = d.recipient_id AND NOT r.erased) THEN 'erased'
				WHEN NOT $5 AND EXISTS (SELECT 1 FROM preferences p WHERE p.recipient_id = d.recipient_id
					AND p.categories -> $6 ->> d.channel = 'false') THEN 'preference'
				WHEN d.channel = 'email' AND EXISTS (SELECT 1 FROM suppressed_addresses s
					WHERE s.address_hash = `+addressHashSQL("d.address")+`) THEN 'suppressed_address'
				WHEN $7 > 0 AND (SELECT count(*) FROM deliveries d3
					WHERE d3.broadcast_id = ANY(ARRAY(SELECT b3.id FROM broadcasts b3 WHERE b3.category = $6
						AND (b3.status NOT IN ('completed', 'cancelled', 'failed') OR b3.updated_at > now() - $8::interval)))
					  AND d3.recipient_id = d.recipient_id AND d3.channel = `+channel+` AND d3.id <> d.id
					  AND d3.status IN ('sending', 'sent', 'unknown') AND d3.claimed_at > now() - $8::interval)
				  + (SELECT count(*) FROM deliveries d3 JOIN notifications n3 ON n3.id = d3.notification_id
					WHERE d3.notification_id IS NOT NULL AND d3.recipient_id = d.recipient_id AND d3.channel = d.channel
					  AND d3.id <> d.id AND d3.status IN ('sending', 'sent', 'unknown') AND d3.claimed_at > now() - $8::interval
					  AND n3.category = $6) >= $7 THEN 'frequency_cap'
				END AS reason
				OFFSET 0) x)
		WHERE d.id BETWEEN $3 AND $4 AND d.`+owner+` IS NOT DISTINCT FROM $1 AND d.channel = $2 AND d.status = 'pending'
		RETURNING d.id, d.recipient_id, d.status, d.address`,
		ownerID, b.Channel, b.FirstID, b.LastID, required, category, capMax, capWindow)
	if err != nil {
		return nil, err
	}
	type claimed struct {
		id        int64
		recipient string
		address   *string
	}
	var list []claimed
	for rows.Next() {
		var c claimed
		var st string
		if err := rows.Scan(&c.id, &c.recipient, &st, &c.address); err != nil {
			return nil, err
		}
		if st == DeliverySending {
			list = append(list, c)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if capTx != nil {
		if err := capTx.Commit(ctx); err != nil {
			return nil, err
		}
	}
	claim := &Claim{RatePerSecond: rate}
	if len(list) == 0 {
		return claim, nil
	}
	content := &Content{}
	if err := json.Unmarshal(contentRaw, content); err != nil {
		return nil, err
	}
	cc, err := compileContent(content)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(list))
	for i, c := range list {
		ids[i] = c.recipient
	}
	people, err := s.templateRecipients(ctx, q, ids, cutoff)
	if err != nil {
		return nil, err
	}
	var tokens map[string][]string
	if b.Channel == ChannelPush {
		if tokens, err = activeTokens(ctx, q, ids); err != nil {
			return nil, err
		}
	}
	var failed []SendResult
	now := time.Now()
	for _, c := range list {
		m := Message{DeliveryID: c.id, BroadcastID: b.BroadcastID, NotificationID: b.NotificationID, RecipientID: c.recipient, Category: category}
		person := people[c.recipient]
		if c.address != nil {
			person.Email = *c.address // the address as of the cut-off
		}
		if err := cc.render(b.Channel, &TemplateData{Recipient: person}, &m); err != nil {
			failed = append(failed, SendResult{DeliveryID: c.id, Err: &SendError{Class: Permanent, Reason: "template", Err: err}})
			continue
		}
		if m.Email != nil {
			m.Email.Headers = s.unsubscribeHeaders(c.recipient, category, now)
		}
		if m.Push != nil {
			m.Push.Tokens = tokens[c.recipient]
			if len(m.Push.Tokens) == 0 {
				failed = append(failed, SendResult{DeliveryID: c.id, Err: &SendError{Class: Permanent, Reason: "no_device", Err: errors.New("no active device")}})
				continue
			}
		}
		claim.Messages = append(claim.Messages, m)
	}
	if len(failed) > 0 {
		if _, err := s.RecordResults(ctx, q, failed, RecordOpts{}); err != nil {
			return nil, err
		}
	}
	return claim, nil
}

// templateRecipients loads recipients as of cutoff (nil: now) for rendering.
func (s *Service) templateRecipients(ctx context.Context, q DB, ids []string, cutoff *time.Time) (map[string]TemplateRecipient, error) {
	args := &sqlArgs{}
	relation, _ := audienceSQL(nil, cutoff, args)
	rows, err := q.Query(ctx, "SELECT r.id, r.email, r.locale, r.timezone, r.attributes FROM "+relation+" AS r WHERE r.id = ANY("+args.add(ids)+"::text[])", args.values...)
	if err != nil {
		return nil, err
	}
	list, err := pgx.CollectRows(rows, scanTemplateRecipient)
	if err != nil {
		return nil, err
	}
	out := make(map[string]TemplateRecipient, len(list))
	for _, r := range list {
		out[r.ID] = r
	}
	return out, nil
}

func activeTokens(ctx context.Context, q DB, ids []string) (map[string][]string, error) {
	rows, err := q.Query(ctx, `SELECT recipient_id, token FROM devices WHERE recipient_id = ANY($1) AND valid_to IS NULL ORDER BY recipient_id, valid_from`, ids)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var r, t string
		if err := rows.Scan(&r, &t); err != nil {
			return nil, err
		}
		out[r] = append(out[r], t)
	}
	return out, rows.Err()
}

// MaxDeliveryAttempts is how many provider calls a delivery gets before a
// retryable failure becomes final: failed, reason "gave_up: <reason> after N
// attempts". Attempts are counted per delivery at claim (ClaimBatch), not per
// job, so one failing slice of a job costs the other deliveries nothing. A 429
// is not an attempt (RecordResults gives it back): the provider asked us to
// wait, and the rate limiter slows the whole provider for it. With the deliver
// job's backoff (1 s doubling to 1 min, queue/retry.go) 12 attempts span about
// 7 minutes of consecutive failures.
const MaxDeliveryAttempts = 12

// RecordOpts says how to treat retryable failures.
type RecordOpts struct {
	// MaxAttempts: a delivery with this many attempts (counted at claim) that
	// fails retryably gives up (failed, "gave_up: ..."); fewer go back to
	// pending. 0 means MaxDeliveryAttempts.
	MaxAttempts int
}

// RecordSummary counts what RecordResults wrote.
type RecordSummary struct {
	// Failed includes deliveries that gave up after MaxAttempts.
	Sent, Failed, Unknown, Retry int
	// RetryAttempts is the most attempts among the deliveries put back to
	// pending for a transient failure (429s excluded): it sets the backoff.
	RetryAttempts int
	// RetryAfter is the longest wait a rate-limited provider asked for.
	RetryAfter time.Duration
	// RateLimited is set when any message was refused with 429.
	RateLimited bool
	// LastError describes one retryable failure, for logs.
	LastError error
}

// Add adds o's counts to sum (over the slices of a job).
func (sum *RecordSummary) Add(o RecordSummary) {
	sum.Sent += o.Sent
	sum.Failed += o.Failed
	sum.Unknown += o.Unknown
	sum.Retry += o.Retry
	sum.RetryAttempts = max(sum.RetryAttempts, o.RetryAttempts)
	sum.RetryAfter = max(sum.RetryAfter, o.RetryAfter)
	sum.RateLimited = sum.RateLimited || o.RateLimited
	if o.LastError != nil {
		sum.LastError = o.LastError
	}
}

// Kinds of outcome RecordResults hands to its statement; "retry" and
// "rate_limited" are resolved there against each delivery's attempts.
const (
	recordRetry       = "retry"
	recordRateLimited = "rate_limited"
)

// RecordResults writes what the provider said, in one statement: sent with the
// provider id; failed with the reason; unknown where the request may have reached
// the provider (never resent); back to pending for a retry otherwise, unless the
// delivery has used its attempts (then failed, "gave_up: <reason> after N
// attempts"). A 429 goes back to pending and gives its attempt back. Only rows
// still in sending are touched, so a late record cannot undo a sweep, and the
// summary counts only what was written.
func (s *Service) RecordResults(ctx context.Context, q DB, results []SendResult, opts RecordOpts) (RecordSummary, error) {
	var sum RecordSummary
	maxAttempts := opts.MaxAttempts
	if maxAttempts <= 0 {
		maxAttempts = MaxDeliveryAttempts
	}
	n := len(results)
	ids := make([]int64, 0, n)
	kinds := make([]string, 0, n)
	providerIDs := make([]*string, 0, n)
	reasons := make([]*string, 0, n)
	lastErrors := make([]*string, 0, n)
	retryAfter := make(map[int64]time.Duration)
	var deadTokens []string
	for _, r := range results {
		deadTokens = append(deadTokens, r.DeadTokens...)
		ids = append(ids, r.DeliveryID)
		if r.Err == nil {
			pid := r.ProviderID
			kinds, providerIDs, reasons, lastErrors = append(kinds, DeliverySent), append(providerIDs, &pid), append(reasons, nil), append(lastErrors, nil)
			continue
		}
		se := AsSendError(r.Err)
		msg := truncate(se.Error(), 500)
		reason := se.Reason
		kind := DeliveryFailed
		switch {
		case se.MaybeSent:
			kind = DeliveryUnknown
		case se.Class == Permanent:
		case se.Class == RateLimited:
			kind = recordRateLimited
			retryAfter[r.DeliveryID] = se.RetryAfter
		default:
			kind = recordRetry
			retryAfter[r.DeliveryID] = se.RetryAfter
			sum.LastError = se
		}
		kinds, providerIDs, reasons, lastErrors = append(kinds, kind), append(providerIDs, nil), append(reasons, &reason), append(lastErrors, &msg)
	}
	if n > 0 {
		// The CASEs read the row as it was before the update (attempts as
		// counted by the claim); RETURNING gives the row as written.
		rows, err := q.Query(ctx, `
			UPDATE deliveries d SET
				status = CASE
					WHEN u.kind = 'retry' AND d.attempts >= $6 THEN 'failed'
					WHEN u.kind IN ('retry', 'rate_limited') THEN 'pending'
					ELSE u.kind END,
				attempts = CASE WHEN u.kind = 'rate_limited' THEN greatest(d.attempts - 1, 0) ELSE d.attempts END,
				provider_id = coalesce(u.provider_id, d.provider_id),
				reason = CASE
					WHEN u.kind = 'retry' AND d.attempts >= $6 THEN 'gave_up: ' || u.reason || ' after ' || d.attempts || ' attempts'
					WHEN u.kind IN ('retry', 'rate_limited') THEN d.reason
					ELSE u.reason END,
				last_error = u.last_error,
				finished_at = CASE WHEN u.kind IN ('retry', 'rate_limited') AND NOT (u.kind = 'retry' AND d.attempts >= $6) THEN NULL ELSE now() END
			FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(id, kind, provider_id, reason, last_error)
			WHERE d.id = u.id AND d.status = 'sending'
			RETURNING d.id, d.status, d.attempts, u.kind`, ids, kinds, providerIDs, reasons, lastErrors, maxAttempts)
		if err != nil {
			return sum, fmt.Errorf("recording results: %w", err)
		}
		for rows.Next() {
			var (
				id           int64
				status, kind string
				attempts     int
			)
			if err := rows.Scan(&id, &status, &attempts, &kind); err != nil {
				rows.Close()
				return sum, fmt.Errorf("recording results: %w", err)
			}
			switch status {
			case DeliverySent:
				sum.Sent++
			case DeliveryFailed:
				sum.Failed++
			case DeliveryUnknown:
				sum.Unknown++
			case DeliveryPending:
				sum.Retry++
				sum.RetryAfter = max(sum.RetryAfter, retryAfter[id])
				if kind == recordRateLimited {
					sum.RateLimited = true
				} else {
					sum.RetryAttempts = max(sum.RetryAttempts, attempts)
				}
			}
		}
		if err := rows.Err(); err != nil {
			return sum, fmt.Errorf("recording results: %w", err)
		}
	}
	if len(deadTokens) > 0 {
		if _, err := q.Exec(ctx, `UPDATE devices SET valid_to = now(), closed_reason = 'unregistered'
			WHERE token = ANY($1) AND valid_to IS NULL`, deadTokens); err != nil {
			return sum, err
		}
	}
	return sum, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
