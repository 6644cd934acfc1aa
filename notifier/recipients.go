package notifier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"regexp"
	"slices"
	"strings"
	"time"
	_ "time/tzdata" // timezones validate the same on every machine

	"github.com/jackc/pgx/v5"
)

// Recipient is one person in the directory.
type Recipient struct {
	ID         string         `json:"id"`
	Email      string         `json:"email,omitempty"`
	Locale     string         `json:"locale,omitempty"`
	Timezone   string         `json:"timezone,omitempty"`
	Attributes map[string]any `json:"attributes"`
	CreatedAt  time.Time      `json:"created_at"`
	UpdatedAt  time.Time      `json:"updated_at"`
	Devices    []Device       `json:"devices"`
}

// Device is a push token of a recipient.
type Device struct {
	Token     string    `json:"token"`
	Platform  string    `json:"platform"`
	CreatedAt time.Time `json:"created_at"`
}

// RecipientInput is the writable part of a recipient (PUT body, batch item).
type RecipientInput struct {
	ID         string         `json:"id,omitempty"`
	Email      string         `json:"email,omitempty"`
	Locale     string         `json:"locale,omitempty"`
	Timezone   string         `json:"timezone,omitempty"`
	Attributes map[string]any `json:"attributes,omitempty"`
}

// Limits of the recipient API.
const (
	MaxBatchRecipients = 10000
	maxAttributesBytes = 16 << 10
)

var (
	recipientIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@+\-]{0,127}$`)
	localePattern      = regexp.MustCompile(`^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8}){0,3}$`)
	platforms          = []string{"android", "ios", "web"}
)

func validRecipientID(id string) bool { return recipientIDPattern.MatchString(id) }

// validate checks the input; prefix is prepended to field names ("recipients[3].").
// It returns the attributes as the JSON to store, encoded once for the size check
// and the write. knownZones remembers the time zones already found valid: loading
// a zone reads its file every time, and a batch has few distinct zones.
func (in *RecipientInput) validate(prefix string, problems map[string]string, knownZones map[string]bool) (attributes string) {
	attributes = "{}"
	if in.Email != "" {
		addr, err := mail.ParseAddress(in.Email)
		if err != nil || addr.Address != in.Email || addr.Name != "" || !strings.Contains(in.Email[strings.LastIndexByte(in.Email, '@')+1:], ".") {
			problems[prefix+"email"] = "must be a plain email address like ada@example.com"
		}
	}
	if in.Locale != "" && !localePattern.MatchString(in.Locale) {
		problems[prefix+"locale"] = "must be a BCP 47 language tag like en or pt-BR"
	}
	if in.Timezone != "" && !knownZones[in.Timezone] {
		if _, err := time.LoadLocation(in.Timezone); err != nil || in.Timezone == "Local" {
			problems[prefix+"timezone"] = "must be an IANA time zone like Europe/Paris"
		} else {
			knownZones[in.Timezone] = true
		}
	}
	if in.Attributes != nil {
		b, _ := json.Marshal(in.Attributes)
		if len(b) > maxAttributesBytes {
			problems[prefix+"attributes"] = fmt.Sprintf("must encode to at most %d bytes", maxAttributesBytes)
		}
		attributes = string(b)
		for k := range in.Attributes {
			if k == "" || len(k) > 64 || strings.Contains(k, ".") {
				problems[prefix+"attributes"] = "keys must be 1 to 64 characters without dots"
				break
			}
		}
	}
	return attributes
}

func (in RecipientInput) Valid() map[string]string {
	problems, _ := in.validateOne()
	return problems
}

// validateOne checks a recipient put on its own, whose id comes from the URL.
func (in *RecipientInput) validateOne() (problems map[string]string, attributes string) {
	problems = map[string]string{}
	attributes = in.validate("", problems, map[string]bool{})
	if in.ID != "" {
		problems["id"] = "is taken from the URL; leave it out of the body"
	}
	return problems, attributes
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// PutRecipient creates or replaces a recipient; created reports which. The old
// version is kept in the history by a trigger.
func (s *Service) PutRecipient(ctx context.Context, id string, in RecipientInput) (r *Recipient, created bool, err error) {
	if !validRecipientID(id) {
		return nil, false, Invalid(map[string]string{"id": "must be 1 to 128 characters of letters, digits and . _ : @ + -, starting with a letter or digit"})
	}
	problems, attributes := in.validateOne()
	if err := Invalid(problems); err != nil {
		return nil, false, err
	}
	err = s.pool.QueryRow(ctx, `
		INSERT INTO recipients (id, email, locale, timezone, attributes)
		VALUES ($1, $2, $3, $4, $5::jsonb)
		ON CONFLICT (id) DO UPDATE SET email = excluded.email, locale = excluded.locale,
			timezone = excluded.timezone, attributes = excluded.attributes, erased = false
		RETURNING xmax = 0`,
		id, nullable(in.Email), nullable(in.Locale), nullable(in.Timezone), attributes).Scan(&created)
	if err != nil {
		return nil, false, err
	}
	r, err = s.FindRecipientByID(ctx, id)
	return r, created, err
}

// BatchResult counts what a batch import did.
type BatchResult struct {
	Received  int `json:"received"`
	Created   int `json:"created"`
	Updated   int `json:"updated"`
	Unchanged int `json:"unchanged"`
}

// PutRecipients creates or replaces up to MaxBatchRecipients recipients in one
// statement. Either all are valid and written, or nothing is.
func (s *Service) PutRecipients(ctx context.Context, ins []RecipientInput) (*BatchResult, error) {
	problems := map[string]string{}
	if len(ins) == 0 || len(ins) > MaxBatchRecipients {
		problems["recipients"] = fmt.Sprintf("must hold 1 to %d recipients", MaxBatchRecipients)
	}
	seen := make(map[string]int, len(ins))
	ids := make([]string, len(ins))
	emails := make([]*string, len(ins))
	locales := make([]*string, len(ins))
	zones := make([]*string, len(ins))
	attrs := make([]string, len(ins))
	knownZones := map[string]bool{}
	for i := range ins {
		in := &ins[i]
		prefix := fmt.Sprintf("recipients[%d].", i)
		if !validRecipientID(in.ID) {
			problems[prefix+"id"] = "must be 1 to 128 characters of letters, digits and . _ : @ + -, starting with a letter or digit"
		} else if first, dup := seen[in.ID]; dup {
			problems[prefix+"id"] = fmt.Sprintf("repeats recipients[%d].id", first)
		} else {
			seen[in.ID] = i
		}
		attrs[i] = in.validate(prefix, problems, knownZones)
		if len(problems) > 100 {
			problems["recipients"] = "too many invalid recipients; the first 100 problems are listed"
			break
		}
		ids[i], emails[i], locales[i], zones[i] = in.ID, nullable(in.Email), nullable(in.Locale), nullable(in.Timezone)
	}
	if err := Invalid(problems); err != nil {
		return nil, err
	}
	// One statement over arrays: a single round trip, and rows whose data did not
	// change are not rewritten (so they keep their history untouched).
	rows, err := s.pool.Query(ctx, `
		INSERT INTO recipients (id, email, locale, timezone, attributes)
		SELECT id, email, locale, timezone, attributes::jsonb
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS t(id, email, locale, timezone, attributes)
		ON CONFLICT (id) DO UPDATE SET email = excluded.email, locale = excluded.locale,
			timezone = excluded.timezone, attributes = excluded.attributes, erased = false
		WHERE (recipients.email, recipients.locale, recipients.timezone, recipients.attributes, recipients.erased)
			IS DISTINCT FROM (excluded.email, excluded.locale, excluded.timezone, excluded.attributes, false)
		RETURNING xmax = 0`, ids, emails, locales, zones, attrs)
	if err != nil {
		return nil, err
	}
	res := &BatchResult{Received: len(ins)}
	for rows.Next() {
		var inserted bool
		if err := rows.Scan(&inserted); err != nil {
			return nil, err
		}
		if inserted {
			res.Created++
		} else {
			res.Updated++
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	res.Unchanged = res.Received - res.Created - res.Updated
	return res, nil
}

// FindRecipientByID returns the current recipient with its active devices.
func (s *Service) FindRecipientByID(ctx context.Context, id string) (*Recipient, error) {
	r := &Recipient{ID: id}
	var email, locale, zone *string
	err := s.pool.QueryRow(ctx, `SELECT email, locale, timezone, attributes, created_at, valid_from
		FROM recipients WHERE id = $1 AND NOT erased`, id).
		Scan(&email, &locale, &zone, &r.Attributes, &r.CreatedAt, &r.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, Errorf(ENOTFOUND, "recipient %q not found", id)
	}
	if err != nil {
		return nil, err
	}
	r.Email, r.Locale, r.Timezone = deref(email), deref(locale), deref(zone)
	rows, err := s.pool.Query(ctx, `SELECT token, platform, valid_from FROM devices
		WHERE recipient_id = $1 AND valid_to IS NULL ORDER BY valid_from, token`, id)
	if err != nil {
		return nil, err
	}
	r.Devices, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Device, error) {
		var d Device
		return d, row.Scan(&d.Token, &d.Platform, &d.CreatedAt)
	})
	return r, err
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// DeleteRecipient erases a recipient's personal data, current and past: address,
// locale, time zone, attributes, devices, preferences, inbox items, the
// addresses kept on deliveries and the details of their provider events. The id
// stays as a tombstone so the history reads "gone from this moment" and
// audiences skip it. The suppression list is kept: it holds only a hash of the
// address, so an address that bounced or reported spam stays suppressed.
func (s *Service) DeleteRecipient(ctx context.Context, id string) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE recipients SET email = NULL, locale = NULL, timezone = NULL,
			attributes = '{}', erased = true WHERE id = $1 AND NOT erased`, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return Errorf(ENOTFOUND, "recipient %q not found", id)
		}
		for _, q := range []string{
			`UPDATE recipient_history SET email = NULL, locale = NULL, timezone = NULL, attributes = '{}', erased = true WHERE recipient_id = $1`,
			`DELETE FROM devices WHERE recipient_id = $1`,
			`DELETE FROM preferences WHERE recipient_id = $1`,
			`DELETE FROM preference_history WHERE recipient_id = $1`,
			`DELETE FROM inbox_items WHERE recipient_id = $1`,
			// A broadcast's deliveries are found by (broadcast, recipient) in each
			// channel's unique index, one probe per broadcast and channel (a join
			// with broadcasts would not use those partial indexes); there is no
			// index on deliveries by recipient alone (migrations 009 and 011).
			`WITH theirs AS MATERIALIZED (
				SELECT d.id FROM deliveries d WHERE d.broadcast_id = ANY(ARRAY(SELECT id FROM broadcasts))
					AND d.recipient_id = $1 AND ` + anyChannelSQL("d.channel") + `
				UNION ALL
				SELECT id FROM deliveries WHERE notification_id IS NOT NULL AND recipient_id = $1),
			addresses AS (UPDATE deliveries SET address = NULL WHERE id IN (SELECT id FROM theirs) AND address IS NOT NULL)
			UPDATE delivery_events SET detail = NULL WHERE detail IS NOT NULL AND delivery_id IN (SELECT id FROM theirs)`,
		} {
			if _, err := tx.Exec(ctx, q, id); err != nil {
				return err
			}
		}
		return nil
	})
}

// requireRecipient returns ENOTFOUND unless the recipient exists (and is not erased).
func requireRecipient(ctx context.Context, q DB, id string) error {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM recipients WHERE id = $1 AND NOT erased)`, id).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		return Errorf(ENOTFOUND, "recipient %q not found", id)
	}
	return nil
}

// DeviceInput is the body of PUT /v1/recipients/{id}/devices/{token}.
type DeviceInput struct {
	Platform string `json:"platform"`
}

func (in DeviceInput) Valid() map[string]string {
	problems := map[string]string{}
	if !slices.Contains(platforms, in.Platform) {
		problems["platform"] = "must be one of android, ios, web"
	}
	return problems
}

// PutDevice registers a push token for a recipient. A token belongs to one
// device, so it moves away from any other recipient that had it.
func (s *Service) PutDevice(ctx context.Context, recipientID, token string, in DeviceInput) (d *Device, created bool, err error) {
	if len(token) == 0 || len(token) > 4096 || strings.ContainsAny(token, " \t\r\n") {
		return nil, false, Invalid(map[string]string{"token": "must be 1 to 4096 characters without whitespace"})
	}
	if err := Invalid(in.Valid()); err != nil {
		return nil, false, err
	}
	d = &Device{Token: token, Platform: in.Platform}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		if err := requireRecipient(ctx, tx, recipientID); err != nil {
			return err
		}
		var platform string
		err := tx.QueryRow(ctx, `SELECT platform, valid_from FROM devices WHERE recipient_id = $1 AND token = $2 AND valid_to IS NULL FOR UPDATE`,
			recipientID, token).Scan(&platform, &d.CreatedAt)
		if err == nil && platform == in.Platform {
			return nil // already registered as is
		}
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE devices SET valid_to = now(), closed_reason = CASE WHEN recipient_id = $1 THEN 'replaced' ELSE 'moved' END
			WHERE token = $2 AND valid_to IS NULL`, recipientID, token); err != nil {
			return err
		}
		created = true
		return tx.QueryRow(ctx, `INSERT INTO devices (recipient_id, token, platform) VALUES ($1, $2, $3) RETURNING valid_from`,
			recipientID, token, in.Platform).Scan(&d.CreatedAt)
	})
	if err != nil {
		return nil, false, err
	}
	return d, created, nil
}

// DeleteDevice closes a recipient's device; the history keeps it.
func (s *Service) DeleteDevice(ctx context.Context, recipientID, token string) error {
	tag, err := s.pool.Exec(ctx, `UPDATE devices SET valid_to = now(), closed_reason = 'deleted'
		WHERE recipient_id = $1 AND token = $2 AND valid_to IS NULL`, recipientID, token)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return Errorf(ENOTFOUND, "recipient %q has no device with this token", recipientID)
	}
	return nil
}
