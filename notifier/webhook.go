package notifier

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sendgrid/sendgrid-go/helpers/eventwebhook"
)

// SendGrid's event webhook: POST /webhooks/sendgrid.
//
// SendGrid signs each POST with ECDSA (P-256, SHA-256) over the timestamp header
// followed by the raw body; the public key is NOTIFYD_SENDGRID_WEBHOOK_KEY. A
// request without a valid signature, or whose timestamp is more than
// maxWebhookAge old (or maxWebhookSkew ahead), is a 401 and changes nothing.
//
// The events are processed in the request, in one transaction of a few set-based
// statements whatever the batch size, so the 200 means they are recorded:
//   - every recognised event is stored once by sg_event_id (a replay is a no-op),
//     linked to its delivery through the custom arg notifyd_delivery_id, and the
//     delivery shows its latest event (event, event_at);
//   - hard bounces and spam reports (and drops for those reasons) put the address
//     on the suppression list, which expansion and the claim read;
//   - unsubscribe and group_unsubscribe turn the category's email off in the
//     recipient's preferences (source "sendgrid"), unless it is required.

// Timestamps a webhook request may carry, relative to now.
const (
	maxWebhookAge  = 10 * time.Minute
	maxWebhookSkew = 5 * time.Minute
	// webhookBodyLimit bounds one POST; SendGrid batches events far below it.
	webhookBodyLimit = 16 << 20
)

// SendGrid event types notifyd records; the others (processed, deferred, open,
// click, group_resubscribe) are acknowledged and dropped.
const (
	EventDelivered        = "delivered"
	EventBounce           = "bounce"
	EventDropped          = "dropped"
	EventSpamReport       = "spamreport"
	EventUnsubscribe      = "unsubscribe"
	EventGroupUnsubscribe = "group_unsubscribe"
)

var recordedEvents = []string{EventDelivered, EventBounce, EventDropped, EventSpamReport, EventUnsubscribe, EventGroupUnsubscribe}

// Reasons of the suppression list.
const (
	SuppressedBounced = "bounced"
	SuppressedSpam    = "spam"
)

// addressHashSQL is the suppression list's key for an SQL expression holding an
// address: sha256 of the lowercased address. Computed in SQL everywhere so that
// writer and readers lowercase alike.
func addressHashSQL(expr string) string {
	return "sha256(convert_to(lower(btrim(" + expr + ")), 'UTF8'))"
}

// ParseSendGridWebhookKey parses the base64 public key SendGrid shows for its
// signed event webhook (a DER SubjectPublicKeyInfo of an ECDSA key).
func ParseSendGridWebhookKey(b64 string) (*ecdsa.PublicKey, error) {
	b64 = strings.TrimSpace(b64)
	der, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, errors.New("not base64")
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, errors.New("not a public key")
	}
	// The SDK's helper assumes an ECDSA key and panics on another kind.
	if _, ok := pub.(*ecdsa.PublicKey); !ok {
		return nil, fmt.Errorf("a %T, not an ECDSA key", pub)
	}
	return eventwebhook.ConvertPublicKeyBase64ToECDSA(b64)
}

// checkWebhookTimestamp checks the timestamp header (unix seconds) is fresh.
func checkWebhookTimestamp(timestamp string, now time.Time) error {
	if timestamp == "" {
		return Errorf(EUNAUTHORIZED, "the request is not signed (%s missing)", eventwebhook.TimestampHTTPHeader)
	}
	secs, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return Errorf(EUNAUTHORIZED, "%s is not a unix time", eventwebhook.TimestampHTTPHeader)
	}
	at := time.Unix(secs, 0)
	if at.Before(now.Add(-maxWebhookAge)) || at.After(now.Add(maxWebhookSkew)) {
		return Errorf(EUNAUTHORIZED, "the signature's timestamp is outside the accepted window of %s", maxWebhookAge)
	}
	return nil
}

// VerifySendGridSignature checks a webhook request: the signature over timestamp
// and the raw body, and the timestamp's freshness. Any failure is EUNAUTHORIZED.
func (s *Service) VerifySendGridSignature(payload []byte, signature, timestamp string, now time.Time) error {
	key := s.opts.SendGridWebhookKey
	if key == nil {
		return Errorf(EUNAVAILABLE, "the SendGrid webhook is not configured (NOTIFYD_SENDGRID_WEBHOOK_KEY)")
	}
	if err := checkWebhookTimestamp(timestamp, now); err != nil {
		return err
	}
	if signature == "" {
		return Errorf(EUNAUTHORIZED, "the request is not signed (%s missing)", eventwebhook.VerificationHTTPHeader)
	}
	ok, err := eventwebhook.VerifySignature(key, payload, signature, timestamp)
	if err != nil || !ok {
		return Errorf(EUNAUTHORIZED, "the signature does not verify")
	}
	return nil
}

// sendGridEvent is the part of a SendGrid event notifyd reads. Custom args
// arrive as top-level fields.
type sendGridEvent struct {
	EventID        string          `json:"sg_event_id"`
	Event          string          `json:"event"`
	Email          string          `json:"email"`
	Timestamp      json.Number     `json:"timestamp"`
	DeliveryID     json.RawMessage `json:"notifyd_delivery_id"`
	Type           string          `json:"type"`   // bounce: "bounce" (hard) or "blocked" (soft)
	Reason         string          `json:"reason"` // dropped: SendGrid's fixed reasons; bounce: SMTP text (not kept)
	Classification string          `json:"bounce_classification"`
}

// deliveryID reads the custom arg, a string (as SendGrid sends it) or a number.
func (e *sendGridEvent) deliveryID() *int64 {
	raw := bytes.Trim(bytes.TrimSpace(e.DeliveryID), `"`)
	id, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil || id <= 0 {
		return nil
	}
	return &id
}

// suppression is the reason the event puts its address on the suppression list, or "".
func (e *sendGridEvent) suppression() string {
	switch e.Event {
	case EventBounce:
		if e.Type != "blocked" { // a block is temporary: the address itself is fine
			return SuppressedBounced
		}
	case EventSpamReport:
		return SuppressedSpam
	case EventDropped:
		switch e.Reason {
		case "Bounced Address":
			return SuppressedBounced
		case "Spam Reporting Address":
			return SuppressedSpam
		}
	}
	return ""
}

// detail is what is kept of an event besides its type: SendGrid's own
// vocabulary, never the SMTP text (which may quote the address).
func (e *sendGridEvent) detail() *string {
	var d string
	switch e.Event {
	case EventBounce:
		d = strings.Trim(e.Type+": "+e.Classification, ": ")
	case EventDropped:
		d = e.Reason
	}
	if d == "" {
		return nil
	}
	d = truncate(d, 200)
	return &d
}

// WebhookResult counts what a webhook request did.
type WebhookResult struct {
	Received     int   `json:"received"`     // events in the body
	Recorded     int   `json:"recorded"`     // new events stored
	Duplicates   int   `json:"duplicates"`   // already stored (replays and retries)
	Ignored      int   `json:"ignored"`      // types notifyd does not record, or without sg_event_id
	Suppressed   int64 `json:"suppressed"`   // addresses newly on the suppression list
	Unsubscribed int64 `json:"unsubscribed"` // recipients whose preferences changed
}

// RecordSendGridEvents records a verified webhook body, a JSON array of events
// (see the comment at the top of this file). Only events not seen before take
// effect, so SendGrid's retries and replays change nothing.
func (s *Service) RecordSendGridEvents(ctx context.Context, payload []byte) (*WebhookResult, error) {
	var raw []json.RawMessage
	if err := json.Unmarshal(payload, &raw); err != nil {
		return nil, Errorf(EBADREQUEST, "the body must be a JSON array of events")
	}
	res := &WebhookResult{Received: len(raw)}
	now := time.Now()
	var events []sendGridEvent
	seen := map[string]bool{}
	for _, r := range raw {
		var e sendGridEvent
		// One malformed event must not make SendGrid retry the whole batch forever.
		if err := json.Unmarshal(r, &e); err != nil || e.EventID == "" || len(e.EventID) > 200 || !slices.Contains(recordedEvents, e.Event) {
			res.Ignored++
			continue
		}
		if seen[e.EventID] {
			res.Duplicates++
			continue
		}
		seen[e.EventID] = true
		events = append(events, e)
	}
	if len(events) == 0 {
		return res, nil
	}
	ids := make([]string, len(events))
	kinds := make([]string, len(events))
	deliveries := make([]*int64, len(events))
	details := make([]*string, len(events))
	times := make([]time.Time, len(events))
	for i := range events {
		e := &events[i]
		ids[i], kinds[i], deliveries[i], details[i] = e.EventID, e.Event, e.deliveryID(), e.detail()
		times[i] = now
		if secs, err := e.Timestamp.Float64(); err == nil && secs > 0 && secs < 1<<40 {
			times[i] = time.UnixMilli(int64(secs * 1000))
		}
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		// 1. Store the events; the ones already there are replays. Only email
		// deliveries that exist are linked.
		rows, err := tx.Query(ctx, `
			INSERT INTO delivery_events (provider, event_id, event, delivery_id, detail, occurred_at)
			SELECT 'sendgrid', e.event_id, e.event, d.id, e.detail, e.occurred_at
			FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::timestamptz[])
				WITH ORDINALITY AS e(event_id, event, delivery_id, detail, occurred_at, n)
			LEFT JOIN deliveries d ON d.id = e.delivery_id AND d.channel = 'email'
			ORDER BY e.n
			ON CONFLICT DO NOTHING
			RETURNING event_id, delivery_id`, ids, kinds, deliveries, details, times)
		if err != nil {
			return err
		}
		linked := map[string]*int64{}
		for rows.Next() {
			var id string
			var did *int64
			if err := rows.Scan(&id, &did); err != nil {
				return err
			}
			linked[id] = did
		}
		if err := rows.Err(); err != nil {
			return err
		}
		res.Recorded = len(linked)
		res.Duplicates += len(events) - len(linked)

		var (
			evDeliveries []int64
			evKinds      []string
			evTimes      []time.Time
			supHashesOf  []string
			supReasons   []string
			supEvents    []string
			unsubscribed []int64
		)
		for i, e := range events {
			did, isNew := linked[e.EventID]
			if !isNew {
				continue
			}
			if did != nil {
				evDeliveries, evKinds, evTimes = append(evDeliveries, *did), append(evKinds, e.Event), append(evTimes, times[i])
				if e.Event == EventUnsubscribe || e.Event == EventGroupUnsubscribe {
					unsubscribed = append(unsubscribed, *did)
				}
			}
			if reason := e.suppression(); reason != "" && strings.TrimSpace(e.Email) != "" {
				supHashesOf, supReasons, supEvents = append(supHashesOf, e.Email), append(supReasons, reason), append(supEvents, e.EventID)
			}
		}
		// 2. Each delivery shows its latest event; events arrive out of order.
		if len(evDeliveries) > 0 {
			if _, err := tx.Exec(ctx, `
				UPDATE deliveries d SET event = u.event, event_at = u.occurred_at
				FROM (SELECT DISTINCT ON (delivery_id) delivery_id, event, occurred_at
					FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS e(delivery_id, event, occurred_at)
					ORDER BY delivery_id, occurred_at DESC) u
				WHERE d.id = u.delivery_id AND (d.event_at IS NULL OR d.event_at <= u.occurred_at)`,
				evDeliveries, evKinds, evTimes); err != nil {
				return err
			}
		}
		// 3. Bounced and spam-reporting addresses, kept only as a hash.
		if len(supHashesOf) > 0 {
			tag, err := tx.Exec(ctx, `
				INSERT INTO suppressed_addresses (address_hash, reason, source, event_id)
				SELECT `+addressHashSQL("a.address")+`, a.reason, 'sendgrid', a.event_id
				FROM unnest($1::text[], $2::text[], $3::text[]) AS a(address, reason, event_id)
				ON CONFLICT (address_hash) DO NOTHING`, supHashesOf, supReasons, supEvents)
			if err != nil {
				return err
			}
			res.Suppressed = tag.RowsAffected()
		}
		// 4. Unsubscribes change the preferences of the delivery's category.
		if len(unsubscribed) > 0 {
			n, err := s.optOutDeliveries(ctx, tx, unsubscribed)
			if err != nil {
				return err
			}
			res.Unsubscribed = n
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.logger.InfoContext(ctx, "sendgrid events", "received", res.Received, "recorded", res.Recorded,
		"duplicates", res.Duplicates, "ignored", res.Ignored, "suppressed", res.Suppressed, "unsubscribed", res.Unsubscribed)
	return res, nil
}

// optOutDeliveries turns off email for the category of each delivery's broadcast
// or notification, for its recipient; required categories are left alone.
func (s *Service) optOutDeliveries(ctx context.Context, tx pgx.Tx, deliveryIDs []int64) (int64, error) {
	rows, err := tx.Query(ctx, `
		SELECT d.recipient_id, coalesce(b.category, n.category)
		FROM deliveries d
		LEFT JOIN broadcasts b ON b.id = d.broadcast_id
		LEFT JOIN notifications n ON n.id = d.notification_id
		WHERE d.id = ANY($1)`, deliveryIDs)
	if err != nil {
		return 0, err
	}
	var recipients, categories []string
	for rows.Next() {
		var r, c string
		if err := rows.Scan(&r, &c); err != nil {
			return 0, err
		}
		if slices.Contains(s.opts.RequiredCategories, c) {
			continue
		}
		recipients, categories = append(recipients, r), append(categories, c)
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	return optOutEmail(ctx, tx, recipients, categories, "sendgrid")
}

func handleSendGridWebhook(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// Unsigned or stale requests are refused before the body is read.
		if svc.opts.SendGridWebhookKey == nil {
			writeError(w, r, logger, Errorf(EUNAVAILABLE, "the SendGrid webhook is not configured (NOTIFYD_SENDGRID_WEBHOOK_KEY)"))
			return
		}
		if err := checkWebhookTimestamp(r.Header.Get(eventwebhook.TimestampHTTPHeader), time.Now()); err != nil {
			writeError(w, r, logger, err)
			return
		}
		raw, err := readBody(w, r, webhookBodyLimit)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		err = svc.VerifySendGridSignature(raw, r.Header.Get(eventwebhook.VerificationHTTPHeader),
			r.Header.Get(eventwebhook.TimestampHTTPHeader), time.Now())
		if err != nil {
			logger.WarnContext(r.Context(), "sendgrid webhook refused", "err", err.Error())
			writeError(w, r, logger, err)
			return
		}
		res, err := svc.RecordSendGridEvents(r.Context(), raw)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, http.StatusOK, res)
	}
}

// DeleteOldDeliveryEvents deletes provider events received more than olderThan
// ago. SendGrid retries a webhook for at most three days and notifyd refuses
// signatures older than ten minutes, so a retention of days keeps replays out.
func (s *Service) DeleteOldDeliveryEvents(ctx context.Context, olderThan time.Duration) (int64, error) {
	if olderThan <= 0 {
		return 0, Invalid(map[string]string{"retention": "must be positive"})
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM delivery_events WHERE received_at < now() - $1::interval`, olderThan)
	return tag.RowsAffected(), err
}
