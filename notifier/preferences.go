package notifier

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Preferences are a recipient's opt-outs: category -> channel -> allowed.
// A category or channel that is absent is allowed.
type Preferences struct {
	Categories map[string]map[string]bool `json:"categories"`
	UpdatedAt  *time.Time                 `json:"updated_at,omitempty"`
}

var (
	categoryPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.\-]{0,63}$`)
	channelNames    = []string{ChannelEmail, ChannelPush, ChannelInbox}
)

// ChannelNames lists the channels notifyd delivers by.
func ChannelNames() []string { return slices.Clone(channelNames) }

func validCategory(c string) bool { return categoryPattern.MatchString(c) }

func (p Preferences) Valid() map[string]string {
	problems := map[string]string{}
	if p.Categories == nil {
		problems["categories"] = `is required, e.g. {"marketing": {"email": false}}`
	}
	for cat, channels := range p.Categories {
		if !validCategory(cat) {
			problems["categories."+cat] = "category names are 1 to 64 of a-z 0-9 _ . -, starting with a letter or digit"
			continue
		}
		for ch := range channels {
			if !slices.Contains(channelNames, ch) {
				problems["categories."+cat+"."+ch] = "channel must be one of email, push, inbox"
			}
		}
	}
	return problems
}

// PutPreferences replaces a recipient's preferences. A required category cannot
// be turned off.
func (s *Service) PutPreferences(ctx context.Context, recipientID string, p Preferences, source string) (*Preferences, error) {
	problems := p.Valid()
	for cat, channels := range p.Categories {
		for ch, allowed := range channels {
			if !allowed && slices.Contains(s.opts.RequiredCategories, cat) {
				problems["categories."+cat+"."+ch] = "category " + cat + " is required and cannot be turned off"
			}
		}
	}
	if err := Invalid(problems); err != nil {
		return nil, err
	}
	out := &Preferences{Categories: p.Categories}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if err := requireRecipient(ctx, tx, recipientID); err != nil {
			return err
		}
		var updated time.Time
		err := tx.QueryRow(ctx, `INSERT INTO preferences (recipient_id, categories, source) VALUES ($1, $2, $3)
			ON CONFLICT (recipient_id) DO UPDATE SET categories = excluded.categories, source = excluded.source
			RETURNING valid_from`, recipientID, p.Categories, source).Scan(&updated)
		out.UpdatedAt = &updated
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// FindPreferences returns a recipient's current preferences (empty if never set).
func (s *Service) FindPreferences(ctx context.Context, recipientID string) (*Preferences, error) {
	if err := requireRecipient(ctx, s.pool, recipientID); err != nil {
		return nil, err
	}
	p := &Preferences{}
	var updated time.Time
	err := s.pool.QueryRow(ctx, `SELECT categories, valid_from FROM preferences WHERE recipient_id = $1`, recipientID).
		Scan(&p.Categories, &updated)
	if errors.Is(err, pgx.ErrNoRows) {
		return &Preferences{Categories: map[string]map[string]bool{}}, nil
	}
	if err != nil {
		return nil, err
	}
	p.UpdatedAt = &updated
	return p, nil
}
