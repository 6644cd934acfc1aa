package notifier

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Channel names, as they appear in the API and in the deliveries table.
const (
	ChannelEmail = "email"
	ChannelPush  = "push"
	ChannelInbox = "inbox"
)

// A broadcast's deliveries are found through one partial unique index per
// channel on (broadcast_id, recipient_id) (migration 011), and the planner uses
// each only where the query names its channel as a constant.

// anyChannelSQL is "(col = 'email' OR col = 'push' OR col = 'inbox')", for
// queries over all of a broadcast's deliveries: the planner reads each
// channel's index (a BitmapOr) instead of the whole table.
func anyChannelSQL(col string) string {
	arms := make([]string, len(channelNames))
	for i, ch := range channelNames {
		arms[i] = col + " = " + quoteChannel(ch)
	}
	return "(" + strings.Join(arms, " OR ") + ")"
}

// channelLiteral is ch as an SQL constant, for a query that must name its
// channel for the planner; only known channel names are accepted.
func channelLiteral(ch string) (string, error) {
	if !slices.Contains(channelNames, ch) {
		return "", fmt.Errorf("unknown channel %q", ch)
	}
	return quoteChannel(ch), nil
}

// quoteChannel quotes one of channelNames (plain lowercase words) for SQL.
func quoteChannel(ch string) string { return "'" + ch + "'" }

// Message is one delivery, rendered and ready for a provider.
type Message struct {
	DeliveryID     int64  `json:"delivery_id,omitempty"`
	BroadcastID    int64  `json:"broadcast_id,omitempty"`    // 0 for a notification
	NotificationID int64  `json:"notification_id,omitempty"` // 0 for a broadcast delivery
	RecipientID    string `json:"recipient_id"`
	Category       string `json:"category,omitempty"`

	// Email is set for the email channel.
	Email *EmailMessage `json:"email,omitempty"`
	// Push is set for the push channel.
	Push *PushMessage `json:"push,omitempty"`
	// Inbox is set for the inbox channel.
	Inbox *InboxMessage `json:"inbox,omitempty"`
}

// EmailMessage is a rendered email for one recipient.
type EmailMessage struct {
	To      string `json:"to"`
	Subject string `json:"subject"`
	Text    string `json:"text,omitempty"`
	HTML    string `json:"html,omitempty"`
	// Headers are per-recipient headers such as List-Unsubscribe.
	Headers map[string]string `json:"headers,omitempty"`
}

// PushMessage is a rendered push message for every active device of one recipient.
type PushMessage struct {
	Tokens []string          `json:"tokens,omitempty"`
	Title  string            `json:"title,omitempty"`
	Body   string            `json:"body,omitempty"`
	Data   map[string]string `json:"data,omitempty"`
}

// InboxMessage is a rendered in-app inbox item.
type InboxMessage struct {
	Title string `json:"title"`
	Body  string `json:"body,omitempty"`
	URL   string `json:"url,omitempty"`
}

// SendResult is what a provider said about one Message.
type SendResult struct {
	DeliveryID int64
	// ProviderID is the provider's id for an accepted message
	// (SendGrid X-Message-Id, FCM message name).
	ProviderID string
	// Err is nil when the provider accepted the message, otherwise a *SendError.
	Err error
	// DeadTokens are push tokens the provider reported as unregistered; their
	// devices are disabled whatever happened to the rest of the message.
	DeadTokens []string
}

// Channel delivers messages to one provider. Send returns exactly one result per
// message, in the same order. Implementations batch messages into the provider's
// batch shapes where the content allows.
type Channel interface {
	Name() string
	// MaxBatch is the most messages one Send call should be given.
	MaxBatch() int
	Send(ctx context.Context, msgs []Message) []SendResult
}

// ErrorClass says what a failed provider call means for the delivery.
type ErrorClass int

const (
	// Permanent: the message will never be accepted; the delivery fails.
	Permanent ErrorClass = iota + 1
	// Transient: 5xx, timeouts, network errors; retry with backoff.
	Transient
	// RateLimited: the provider asked us to slow down (429); wait at least RetryAfter.
	RateLimited
)

func (c ErrorClass) String() string {
	switch c {
	case Permanent:
		return "permanent"
	case Transient:
		return "transient"
	case RateLimited:
		return "rate_limited"
	}
	return "unknown"
}

// SendError is a provider error, classified at the channel before it is wrapped.
type SendError struct {
	Class      ErrorClass
	StatusCode int           // HTTP status from the provider, 0 if none
	Reason     string        // short machine-readable reason, e.g. "sendgrid_400", "UNREGISTERED"
	RetryAfter time.Duration // for RateLimited (and Transient when the provider said so)
	// MaybeSent: the request may have reached the provider before it failed (a
	// timeout after the body was written). Resending could deliver twice, so the
	// delivery ends as unknown instead.
	MaybeSent bool
	Err       error
}

func (e *SendError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s (%s): %v", e.Reason, e.Class, e.Err)
	}
	return fmt.Sprintf("%s (%s)", e.Reason, e.Class)
}

func (e *SendError) Unwrap() error { return e.Err }

// AsSendError returns the *SendError in err's chain; anything unclassified counts
// as transient, because an unknown failure must not lose a message.
func AsSendError(err error) *SendError {
	var se *SendError
	if errors.As(err, &se) {
		return se
	}
	return &SendError{Class: Transient, Reason: "unclassified", Err: err}
}
