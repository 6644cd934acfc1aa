package notifier

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/jackc/pgx/v5"
)

// Broadcast statuses.
const (
	StatusScheduled = "scheduled"
	StatusExpanding = "expanding"
	StatusSending   = "sending"
	StatusPaused    = "paused"
	StatusCompleted = "completed"
	StatusCancelled = "cancelled"
	StatusFailed    = "failed"
)

var broadcastStatuses = []string{StatusScheduled, StatusExpanding, StatusSending, StatusPaused, StatusCompleted, StatusCancelled, StatusFailed}

// Delivery statuses.
const (
	DeliveryPending    = "pending"
	DeliverySending    = "sending"
	DeliverySent       = "sent"
	DeliveryFailed     = "failed"
	DeliverySuppressed = "suppressed"
	DeliveryCancelled  = "cancelled"
	DeliveryUnknown    = "unknown"
)

var deliveryStatuses = []string{DeliveryPending, DeliverySending, DeliverySent, DeliveryFailed, DeliverySuppressed, DeliveryCancelled, DeliveryUnknown}

// BroadcastInput is the body of POST /v1/broadcasts.
type BroadcastInput struct {
	Name          string        `json:"name"`
	Category      string        `json:"category"`
	Segment       string        `json:"segment,omitempty"`
	Recipients    []string      `json:"recipients,omitempty"`
	Channels      []string      `json:"channels"`
	Email         *EmailContent `json:"email,omitempty"`
	Push          *PushContent  `json:"push,omitempty"`
	Inbox         *InboxContent `json:"inbox,omitempty"`
	CutoffAt      *time.Time    `json:"cutoff_at,omitempty"`
	SendAt        *time.Time    `json:"send_at,omitempty"`
	DedupeKey     string        `json:"dedupe_key,omitempty"`
	RatePerSecond *float64      `json:"rate_per_second,omitempty"`
	// DryRun answers what the broadcast would do and creates nothing.
	DryRun bool `json:"dry_run,omitempty"`
}

func (in *BroadcastInput) content() *Content {
	return &Content{Email: in.Email, Push: in.Push, Inbox: in.Inbox}
}

// MaxExplicitRecipients bounds a broadcast's inline recipient list.
const MaxExplicitRecipients = 10000

// Valid checks everything that needs no database.
func (in BroadcastInput) Valid() map[string]string {
	problems := map[string]string{}
	if n := len(strings.TrimSpace(in.Name)); n == 0 || n > 200 {
		problems["name"] = "must be 1 to 200 characters"
	}
	if !validCategory(in.Category) {
		problems["category"] = "must be 1 to 64 of a-z 0-9 _ . -, starting with a letter or digit"
	}
	switch {
	case in.Segment != "" && in.Recipients != nil:
		problems["segment"] = "give either segment or recipients, not both"
	case in.Segment == "" && in.Recipients == nil:
		problems["segment"] = "is required (or give recipients)"
	case in.Recipients != nil:
		if len(in.Recipients) == 0 || len(in.Recipients) > MaxExplicitRecipients {
			problems["recipients"] = fmt.Sprintf("must hold 1 to %d recipient ids", MaxExplicitRecipients)
		}
		for i, id := range in.Recipients {
			if !validRecipientID(id) {
				problems[fmt.Sprintf("recipients[%d]", i)] = "is not a valid recipient id"
				break
			}
		}
	}
	validateChannels(in.Channels, problems)
	if in.DedupeKey != "" && len(in.DedupeKey) > 200 {
		problems["dedupe_key"] = "must be at most 200 characters"
	}
	if in.RatePerSecond != nil && !(*in.RatePerSecond > 0 && *in.RatePerSecond <= 1e6) {
		problems["rate_per_second"] = "must be a number of messages per second above 0"
	}
	if in.CutoffAt != nil && in.CutoffAt.After(time.Now().Add(time.Minute)) {
		if in.SendAt == nil || in.SendAt.Before(*in.CutoffAt) {
			problems["cutoff_at"] = "cannot be in the future unless send_at is at or after it"
		}
	}
	if len(problems) == 0 {
		in.content().validate(in.Channels, problems)
	}
	return problems
}

func validateChannels(channels []string, problems map[string]string) {
	if len(channels) == 0 {
		problems["channels"] = `must list at least one of "email", "push", "inbox"`
	}
	for i, ch := range channels {
		if !slices.Contains(channelNames, ch) {
			problems[fmt.Sprintf("channels[%d]", i)] = `must be "email", "push" or "inbox"`
		} else if slices.Index(channels, ch) != i {
			problems[fmt.Sprintf("channels[%d]", i)] = "is listed twice"
		}
	}
}

// Broadcast is the API view of a broadcast.
type Broadcast struct {
	ID            int64                    `json:"id"`
	Name          string                   `json:"name"`
	Category      string                   `json:"category"`
	Status        string                   `json:"status"`
	Segment       string                   `json:"segment,omitempty"`
	Recipients    int                      `json:"explicit_recipients,omitempty"`
	ChannelNames  []string                 `json:"channel_names"`
	CutoffAt      time.Time                `json:"cutoff_at"`
	SendAt        *time.Time               `json:"send_at,omitempty"`
	DedupeKey     string                   `json:"dedupe_key,omitempty"`
	RatePerSecond *float64                 `json:"rate_per_second,omitempty"`
	Expanded      bool                     `json:"expanded"`
	FailureReason string                   `json:"failure_reason,omitempty"`
	CreatedBy     string                   `json:"created_by"`
	CreatedAt     time.Time                `json:"created_at"`
	UpdatedAt     time.Time                `json:"updated_at"`
	CompletedAt   *time.Time               `json:"completed_at,omitempty"`
	CancelledAt   *time.Time               `json:"cancelled_at,omitempty"`
	Counts        Counts                   `json:"counts"`
	Channels      map[string]ChannelCounts `json:"channels"`
	Content       *Content                 `json:"content,omitempty"`
}

// Counts are a broadcast's deliveries by status. Recipients is the audience size
// (people), the rest count deliveries (person x channel).
type Counts struct {
	Recipients int64 `json:"recipients"`
	ChannelCounts
}

// ChannelCounts are one channel's deliveries by status.
type ChannelCounts struct {
	Deliveries int64 `json:"deliveries"`
	Pending    int64 `json:"pending"`
	Sending    int64 `json:"sending"`
	Sent       int64 `json:"sent"`
	Failed     int64 `json:"failed"`
	Suppressed int64 `json:"suppressed"`
	Cancelled  int64 `json:"cancelled"`
	Unknown    int64 `json:"unknown"`
}

// sumChannels adds up the counts of every channel.
func sumChannels(byChannel map[string]ChannelCounts) ChannelCounts {
	var t ChannelCounts
	for _, c := range byChannel {
		t.Deliveries += c.Deliveries
		t.Pending += c.Pending
		t.Sending += c.Sending
		t.Sent += c.Sent
		t.Failed += c.Failed
		t.Suppressed += c.Suppressed
		t.Cancelled += c.Cancelled
		t.Unknown += c.Unknown
	}
	return t
}

func (c *ChannelCounts) add(status string, n int64) {
	c.Deliveries += n
	switch status {
	case DeliveryPending:
		c.Pending += n
	case DeliverySending:
		c.Sending += n
	case DeliverySent:
		c.Sent += n
	case DeliveryFailed:
		c.Failed += n
	case DeliverySuppressed:
		c.Suppressed += n
	case DeliveryCancelled:
		c.Cancelled += n
	case DeliveryUnknown:
		c.Unknown += n
	}
}

// CreateBroadcast validates and stores a broadcast and schedules its expansion,
// in one transaction.
func (s *Service) CreateBroadcast(ctx context.Context, key *APIKey, in BroadcastInput) (*Broadcast, error) {
	var b *Broadcast
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		b, err = s.CreateBroadcastTx(ctx, tx, key, in)
		return err
	})
	return b, err
}

// CreateBroadcastTx is CreateBroadcast inside the caller's transaction.
func (s *Service) CreateBroadcastTx(ctx context.Context, tx pgx.Tx, key *APIKey, in BroadcastInput) (*Broadcast, error) {
	if err := Invalid(in.Valid()); err != nil {
		return nil, err
	}
	if s.opts.Enqueuer == nil {
		return nil, errors.New("notifier: no Enqueuer configured")
	}
	var filter *Filter
	if in.Segment != "" {
		seg, err := s.findSegmentTx(ctx, tx, in.Segment)
		if err != nil {
			if ErrorCode(err) == ENOTFOUND {
				return nil, Invalid(map[string]string{"segment": "no segment " + strconv.Quote(in.Segment)})
			}
			return nil, err
		}
		filter = seg.Filter
	}
	var now time.Time
	if err := tx.QueryRow(ctx, "SELECT now()").Scan(&now); err != nil {
		return nil, err
	}
	cutoff := now
	if in.CutoffAt != nil {
		cutoff = *in.CutoffAt
	}
	// Render one sample from the audience so a template naming a field the data
	// lacks is refused now, not in a million failed deliveries.
	if err := s.checkSample(ctx, tx, in, filter, cutoff, now); err != nil {
		return nil, err
	}
	status := StatusExpanding
	expandAt := now
	if in.SendAt != nil && in.SendAt.After(now) {
		status, expandAt = StatusScheduled, *in.SendAt
	}
	if cutoff.After(expandAt) {
		expandAt = cutoff
	}
	content, err := json.Marshal(in.content())
	if err != nil {
		return nil, err
	}
	var filterJSON any
	if filter != nil {
		filterJSON = filter
	}
	var id int64
	err = tx.QueryRow(ctx, `INSERT INTO broadcasts (name, category, segment_key, filter, recipient_ids, channels, content,
			cutoff_at, send_at, dedupe_key, rate_per_second, status, created_by)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id`,
		in.Name, in.Category, nullable(in.Segment), filterJSON, in.Recipients, in.Channels, content,
		cutoff, in.SendAt, nullable(in.DedupeKey), in.RatePerSecond, status, key.Name).Scan(&id)
	if err != nil {
		return nil, err
	}
	if err := s.opts.Enqueuer.EnqueueExpandTx(ctx, tx, id, expandAt); err != nil {
		return nil, err
	}
	return s.findBroadcastTx(ctx, tx, id)
}

func (s *Service) checkSample(ctx context.Context, tx pgx.Tx, in BroadcastInput, filter *Filter, cutoff, now time.Time) error {
	_, err := s.renderAudienceSample(ctx, tx, in, filter, cutoff, now)
	return err
}

// renderAudienceSample renders every channel for the first recipient of the
// audience; nil when the audience is empty.
func (s *Service) renderAudienceSample(ctx context.Context, tx pgx.Tx, in BroadcastInput, filter *Filter, cutoff, now time.Time) (map[string]*Message, error) {
	cc, err := compileContent(in.content())
	if err != nil {
		return nil, err
	}
	asOf := &cutoff
	if cutoff.After(now) {
		asOf = nil
	}
	args := &sqlArgs{}
	relation, where := audienceSQL(filter, asOf, args)
	if in.Recipients != nil {
		where = "r.id = ANY(" + args.add(in.Recipients) + "::text[])"
	}
	rows, err := tx.Query(ctx, "SELECT r.id, r.email, r.locale, r.timezone, r.attributes FROM "+relation+" AS r WHERE "+where+" ORDER BY r.id LIMIT 1", args.values...)
	if err != nil {
		return nil, err
	}
	samples, err := pgx.CollectRows(rows, scanTemplateRecipient)
	if err != nil || len(samples) == 0 {
		return nil, err // an empty audience has nothing to render
	}
	return cc.renderSample(in.Channels, &TemplateData{Recipient: samples[0]})
}

func scanTemplateRecipient(row pgx.CollectableRow) (TemplateRecipient, error) {
	var r TemplateRecipient
	var email, locale, zone *string
	var attributes []byte
	if err := row.Scan(&r.ID, &email, &locale, &zone, &attributes); err != nil {
		return r, err
	}
	r.Email, r.Locale, r.Timezone = deref(email), deref(locale), deref(zone)
	if attributes == nil {
		return r, nil
	}
	// Every delivery decodes its recipient's attributes: JSON v2 does it with
	// half the allocations of encoding/json, in about three quarters of the
	// time (BenchmarkDecodeAttributes). jsonb has made the text valid.
	if err := jsonv2.Unmarshal(attributes, &r.Attributes); err != nil {
		return r, fmt.Errorf("recipient %s: attributes: %w", r.ID, err)
	}
	return r, nil
}

func (s *Service) findSegmentTx(ctx context.Context, q DB, key string) (*Segment, error) {
	if key == SegmentAll {
		return &Segment{Key: SegmentAll}, nil
	}
	var raw []byte
	err := q.QueryRow(ctx, `SELECT filter FROM segments WHERE key = $1`, key).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, Errorf(ENOTFOUND, "segment %q not found", key)
	}
	if err != nil {
		return nil, err
	}
	f, problems := ParseFilter(raw, "filter")
	if len(problems) > 0 {
		return nil, fmt.Errorf("stored filter of segment %s does not parse: %v", key, problems)
	}
	return &Segment{Key: key, Filter: f}, nil
}

const broadcastColumns = `id, name, category, status, coalesce(segment_key, ''), coalesce(cardinality(recipient_ids), 0), channels,
	cutoff_at, send_at, coalesce(dedupe_key, ''), rate_per_second, expanded, coalesce(failure_reason, ''), created_by,
	created_at, updated_at, completed_at, cancelled_at, audience_size, content`

func scanBroadcast(row pgx.Row) (*Broadcast, error) {
	b := &Broadcast{Channels: map[string]ChannelCounts{}}
	var content []byte
	err := row.Scan(&b.ID, &b.Name, &b.Category, &b.Status, &b.Segment, &b.Recipients, &b.ChannelNames,
		&b.CutoffAt, &b.SendAt, &b.DedupeKey, &b.RatePerSecond, &b.Expanded, &b.FailureReason, &b.CreatedBy,
		&b.CreatedAt, &b.UpdatedAt, &b.CompletedAt, &b.CancelledAt, &b.Counts.Recipients, &content)
	if err != nil {
		return nil, err
	}
	b.Content = &Content{}
	if err := json.Unmarshal(content, b.Content); err != nil {
		return nil, err
	}
	for _, ch := range b.ChannelNames {
		b.Channels[ch] = ChannelCounts{}
	}
	return b, nil
}

// FindBroadcastByID returns a broadcast with its counts.
func (s *Service) FindBroadcastByID(ctx context.Context, id int64) (*Broadcast, error) {
	return s.findBroadcastTx(ctx, s.pool, id)
}

func (s *Service) findBroadcastTx(ctx context.Context, q DB, id int64) (*Broadcast, error) {
	b, err := scanBroadcast(q.QueryRow(ctx, "SELECT "+broadcastColumns+" FROM broadcasts WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, Errorf(ENOTFOUND, "broadcast %d not found", id)
	}
	if err != nil {
		return nil, err
	}
	// From the counters (migration 008), not a scan of the deliveries.
	byChannel, err := deliveryCounts(ctx, q, id)
	if err != nil {
		return nil, err
	}
	for channel, c := range byChannel {
		b.Channels[channel] = c
	}
	b.Counts.ChannelCounts = sumChannels(byChannel)
	return b, nil
}

// BroadcastFilter selects broadcasts for FindBroadcasts.
type BroadcastFilter struct {
	Status string
	Limit  int
	Cursor string
}

// BroadcastPage is one page of broadcasts, newest first.
type BroadcastPage struct {
	Broadcasts []*Broadcast `json:"broadcasts"`
	NextCursor string       `json:"next_cursor,omitempty"`
}

// FindBroadcasts lists broadcasts newest first, without delivery counts (use
// FindBroadcastByID for those).
func (s *Service) FindBroadcasts(ctx context.Context, f BroadcastFilter) (*BroadcastPage, error) {
	problems := map[string]string{}
	if f.Status != "" && !slices.Contains(broadcastStatuses, f.Status) {
		problems["status"] = "must be one of " + strings.Join(broadcastStatuses, ", ")
	}
	limit, err := pageLimit(f.Limit)
	if err != nil {
		problems["limit"] = err.Error()
	}
	before := int64(1<<63 - 1)
	if f.Cursor != "" {
		if before, err = decodeIDCursor(f.Cursor); err != nil {
			problems["cursor"] = "is not a cursor from a previous page"
		}
	}
	if err := Invalid(problems); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, "SELECT "+broadcastColumns+` FROM broadcasts
		WHERE id < $1 AND ($2 = '' OR status = $2) ORDER BY id DESC LIMIT $3`, before, f.Status, limit+1)
	if err != nil {
		return nil, err
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Broadcast, error) { return scanBroadcast(row) })
	if err != nil {
		return nil, err
	}
	page := &BroadcastPage{Broadcasts: list}
	if len(list) > limit {
		page.Broadcasts = list[:limit]
		page.NextCursor = encodeIDCursor(list[limit-1].ID)
	}
	for _, b := range page.Broadcasts {
		b.Content = nil
	}
	return page, nil
}

func pageLimit(limit int) (int, error) {
	switch {
	case limit == 0:
		return 50, nil
	case limit < 1 || limit > 500:
		return 0, errors.New("must be 1 to 500")
	}
	return limit, nil
}

func encodeIDCursor(id int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(id, 10)))
}

func decodeIDCursor(c string) (int64, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(string(raw), 10, 64)
}

// Delivery is the API view of one delivery: the stored snapshot of who was (or
// is to be) sent what, and what happened.
type Delivery struct {
	ID             int64      `json:"id"`
	BroadcastID    *int64     `json:"broadcast_id,omitempty"`
	NotificationID *int64     `json:"notification_id,omitempty"`
	RecipientID    string     `json:"recipient_id"`
	Channel        string     `json:"channel"`
	Status         string     `json:"status"`
	Reason         string     `json:"reason,omitempty"`
	Address        string     `json:"address,omitempty"`
	ProviderID     string     `json:"provider_id,omitempty"`
	Attempts       int        `json:"attempts"`
	LastError      string     `json:"last_error,omitempty"`
	CreatedAt      time.Time  `json:"created_at"`
	ClaimedAt      *time.Time `json:"claimed_at,omitempty"`
	FinishedAt     *time.Time `json:"finished_at,omitempty"`
	// Event is the provider's latest word after the send (SendGrid: delivered,
	// bounce, dropped, spamreport, unsubscribe, group_unsubscribe), at EventAt.
	Event   string     `json:"event,omitempty"`
	EventAt *time.Time `json:"event_at,omitempty"`
}

// deliveryPageSQL reads a page of a broadcast's deliveries in (recipient,
// channel) order after the cursor ($2, $3): one ordered scan of each channel's
// unique index (migration 011), then the page of their union. $4 and $5 filter
// by status and channel (empty: all), $6 is the page size.
func deliveryPageSQL() string {
	arms := make([]string, len(channelNames))
	for i, ch := range channelNames {
		lit := quoteChannel(ch)
		arms[i] = `(SELECT ` + deliveryColumns + ` FROM deliveries
			WHERE broadcast_id = $1 AND channel = ` + lit + ` AND ($5 = '' OR $5 = ` + lit + `)
			  AND recipient_id >= $2 AND (recipient_id > $2 OR ` + lit + ` > $3)
			  AND ($4 = '' OR status = $4)
			ORDER BY recipient_id LIMIT $6)`
	}
	return `SELECT * FROM (` + strings.Join(arms, " UNION ALL ") + `) page ORDER BY recipient_id, channel LIMIT $6`
}

const deliveryColumns = `id, broadcast_id, notification_id, recipient_id, channel, status, coalesce(reason, ''), coalesce(address, ''),
	coalesce(provider_id, ''), attempts, coalesce(last_error, ''), created_at, claimed_at, finished_at, coalesce(event, ''), event_at`

func scanDelivery(row pgx.CollectableRow) (*Delivery, error) {
	d := &Delivery{}
	return d, row.Scan(&d.ID, &d.BroadcastID, &d.NotificationID, &d.RecipientID, &d.Channel, &d.Status, &d.Reason, &d.Address,
		&d.ProviderID, &d.Attempts, &d.LastError, &d.CreatedAt, &d.ClaimedAt, &d.FinishedAt, &d.Event, &d.EventAt)
}

// DeliveryFilter selects a broadcast's deliveries.
type DeliveryFilter struct {
	Status  string
	Channel string
	Limit   int
	Cursor  string
}

// DeliveryPage is one page of deliveries ordered by recipient and channel.
type DeliveryPage struct {
	Deliveries []*Delivery `json:"deliveries"`
	NextCursor string      `json:"next_cursor,omitempty"`
}

// FindDeliveries lists a broadcast's deliveries in recipient order (the order of
// its unique index, so deep pages stay cheap).
func (s *Service) FindDeliveries(ctx context.Context, broadcastID int64, f DeliveryFilter) (*DeliveryPage, error) {
	problems := map[string]string{}
	if f.Status != "" && !slices.Contains(deliveryStatuses, f.Status) {
		problems["status"] = "must be one of " + strings.Join(deliveryStatuses, ", ")
	}
	if f.Channel != "" && !slices.Contains(channelNames, f.Channel) {
		problems["channel"] = "must be email, push or inbox"
	}
	limit, err := pageLimit(f.Limit)
	if err != nil {
		problems["limit"] = err.Error()
	}
	var after [2]string
	if f.Cursor != "" {
		raw, err := base64.RawURLEncoding.DecodeString(f.Cursor)
		var parts []string
		if err != nil || json.Unmarshal(raw, &parts) != nil || len(parts) != 2 {
			problems["cursor"] = "is not a cursor from a previous page"
		} else {
			after = [2]string{parts[0], parts[1]}
		}
	}
	if err := Invalid(problems); err != nil {
		return nil, err
	}
	if _, err := s.FindBroadcastStatus(ctx, broadcastID); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, deliveryPageSQL(), broadcastID, after[0], after[1], f.Status, f.Channel, limit+1)
	if err != nil {
		return nil, err
	}
	list, err := pgx.CollectRows(rows, scanDelivery)
	if err != nil {
		return nil, err
	}
	page := &DeliveryPage{Deliveries: list}
	if len(list) > limit {
		page.Deliveries = list[:limit]
		last := list[limit-1]
		raw, _ := json.Marshal([]string{last.RecipientID, last.Channel})
		page.NextCursor = base64.RawURLEncoding.EncodeToString(raw)
	}
	if page.Deliveries == nil {
		page.Deliveries = []*Delivery{}
	}
	return page, nil
}

// FindBroadcastStatus returns just a broadcast's status.
func (s *Service) FindBroadcastStatus(ctx context.Context, id int64) (string, error) {
	var status string
	err := s.pool.QueryRow(ctx, `SELECT status FROM broadcasts WHERE id = $1`, id).Scan(&status)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", Errorf(ENOTFOUND, "broadcast %d not found", id)
	}
	return status, err
}
