package notifier

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// NotificationInput is the body of POST /v1/notifications.
type NotificationInput struct {
	Recipient string        `json:"recipient"`
	Category  string        `json:"category"`
	Channels  []string      `json:"channels"`
	Email     *EmailContent `json:"email,omitempty"`
	Push      *PushContent  `json:"push,omitempty"`
	Inbox     *InboxContent `json:"inbox,omitempty"`
	DedupeKey string        `json:"dedupe_key,omitempty"`
}

func (in *NotificationInput) content() *Content {
	return &Content{Email: in.Email, Push: in.Push, Inbox: in.Inbox}
}

func (in NotificationInput) Valid() map[string]string {
	problems := map[string]string{}
	if !validRecipientID(in.Recipient) {
		problems["recipient"] = "must be a recipient id"
	}
	if !validCategory(in.Category) {
		problems["category"] = "must be 1 to 64 of a-z 0-9 _ . -, starting with a letter or digit"
	}
	validateChannels(in.Channels, problems)
	if len(in.DedupeKey) > 200 {
		problems["dedupe_key"] = "must be at most 200 characters"
	}
	if len(problems) == 0 {
		in.content().validate(in.Channels, problems)
	}
	return problems
}

// Notification is the API view of a notification and its deliveries.
type Notification struct {
	ID         int64       `json:"id"`
	Recipient  string      `json:"recipient"`
	Category   string      `json:"category"`
	Channels   []string    `json:"channels"`
	DedupeKey  string      `json:"dedupe_key,omitempty"`
	CreatedBy  string      `json:"created_by"`
	CreatedAt  time.Time   `json:"created_at"`
	Status     string      `json:"status"`
	Deliveries []*Delivery `json:"deliveries"`
}

// CreateNotificationTx stores a notification, its deliveries and their jobs (on
// the transactional queue, ahead of broadcasts) in the caller's transaction.
func (s *Service) CreateNotificationTx(ctx context.Context, tx pgx.Tx, key *APIKey, in NotificationInput) (*Notification, error) {
	if err := Invalid(in.Valid()); err != nil {
		return nil, err
	}
	if s.opts.Enqueuer == nil {
		return nil, errors.New("notifier: no Enqueuer configured")
	}
	rows, err := tx.Query(ctx, `SELECT id, email, locale, timezone, attributes FROM recipients WHERE id = $1 AND NOT erased`, in.Recipient)
	if err != nil {
		return nil, err
	}
	people, err := pgx.CollectRows(rows, scanTemplateRecipient)
	if err != nil {
		return nil, err
	}
	if len(people) == 0 {
		return nil, Invalid(map[string]string{"recipient": "no recipient " + in.Recipient})
	}
	cc, err := compileContent(in.content())
	if err != nil {
		return nil, err
	}
	if _, err := cc.renderSample(in.Channels, &TemplateData{Recipient: people[0]}); err != nil {
		return nil, err
	}
	content, err := json.Marshal(in.content())
	if err != nil {
		return nil, err
	}
	var id int64
	if err := tx.QueryRow(ctx, `INSERT INTO notifications (recipient_id, category, channels, content, dedupe_key, created_by)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`, in.Recipient, in.Category, in.Channels, content, nullable(in.DedupeKey), key.Name).Scan(&id); err != nil {
		return nil, err
	}
	required := slices.Contains(s.opts.RequiredCategories, in.Category)
	dRows, err := tx.Query(ctx, `
		INSERT INTO deliveries (notification_id, recipient_id, channel, status, reason, address)
		SELECT $1, r.id, ch.channel, CASE WHEN x.reason IS NULL THEN 'pending' ELSE 'suppressed' END, x.reason,
			CASE WHEN ch.channel = 'email' THEN r.email END
		FROM recipients r CROSS JOIN unnest($3::text[]) WITH ORDINALITY AS ch(channel, n)
		CROSS JOIN LATERAL (SELECT CASE
			WHEN ch.channel = 'email' AND r.email IS NULL THEN 'no_address'
			WHEN ch.channel = 'push' AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.recipient_id = r.id AND d.valid_to IS NULL) THEN 'no_device'
			WHEN NOT $5 AND EXISTS (SELECT 1 FROM preferences p WHERE p.recipient_id = r.id AND p.categories -> $4 ->> ch.channel = 'false') THEN 'preference'
			END AS reason) x
		WHERE r.id = $2
		ORDER BY ch.n
		RETURNING id, channel, status`, id, in.Recipient, in.Channels, in.Category, required)
	if err != nil {
		return nil, err
	}
	var pendingIDs []int64
	var pendingRecipients, pendingChannels []string
	for dRows.Next() {
		var did int64
		var ch, st string
		if err := dRows.Scan(&did, &ch, &st); err != nil {
			return nil, err
		}
		if st == DeliveryPending {
			pendingIDs, pendingRecipients, pendingChannels = append(pendingIDs, did), append(pendingRecipients, in.Recipient), append(pendingChannels, ch)
		}
	}
	if err := dRows.Err(); err != nil {
		return nil, err
	}
	dups := map[int64]struct{}{}
	if in.DedupeKey != "" && len(pendingIDs) > 0 {
		if dups, err = claimDedupe(ctx, tx, in.DedupeKey, pendingIDs, pendingRecipients, pendingChannels); err != nil {
			return nil, err
		}
	}
	var batches []DeliveryBatch
	for i, did := range pendingIDs {
		if _, dup := dups[did]; !dup {
			batches = append(batches, DeliveryBatch{NotificationID: id, Channel: pendingChannels[i], FirstID: did, LastID: did, Count: 1})
		}
	}
	if len(batches) > 0 {
		if err := s.opts.Enqueuer.EnqueueDeliveriesTx(ctx, tx, batches, true); err != nil {
			return nil, err
		}
	}
	return s.findNotification(ctx, tx, id)
}

// FindNotificationByID returns a notification with its deliveries.
func (s *Service) FindNotificationByID(ctx context.Context, id int64) (*Notification, error) {
	return s.findNotification(ctx, s.pool, id)
}

func (s *Service) findNotification(ctx context.Context, q DB, id int64) (*Notification, error) {
	n := &Notification{ID: id}
	var dedupe *string
	err := q.QueryRow(ctx, `SELECT recipient_id, category, channels, dedupe_key, created_by, created_at FROM notifications WHERE id = $1`, id).
		Scan(&n.Recipient, &n.Category, &n.Channels, &dedupe, &n.CreatedBy, &n.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, Errorf(ENOTFOUND, "notification %d not found", id)
	}
	if err != nil {
		return nil, err
	}
	n.DedupeKey = deref(dedupe)
	rows, err := q.Query(ctx, "SELECT "+deliveryColumns+" FROM deliveries WHERE notification_id = $1 ORDER BY id", id)
	if err != nil {
		return nil, err
	}
	if n.Deliveries, err = pgx.CollectRows(rows, scanDelivery); err != nil {
		return nil, err
	}
	// pending while any delivery is open; otherwise done.
	n.Status = "completed"
	for _, d := range n.Deliveries {
		if d.Status == DeliveryPending || d.Status == DeliverySending {
			n.Status = "pending"
		}
	}
	return n, nil
}
