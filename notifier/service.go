package notifier

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/notifier/telemetry"
)

// Service is notifyd's domain logic over Postgres. The HTTP API, the CLI and the
// workers all go through it.
type Service struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
	opts   ServiceOpts
}

// ServiceOpts are the optional settings of a Service.
type ServiceOpts struct {
	// RequiredCategories cannot be opted out of (e.g. "security", "legal").
	RequiredCategories []string
	// FrequencyCaps limit how many messages of a category one recipient gets per
	// channel within a window; over the cap a delivery is suppressed (frequency_cap).
	FrequencyCaps map[string]FrequencyCap
	// Enqueuer puts jobs on the queue; required to create broadcasts and notifications.
	Enqueuer Enqueuer
	// Metrics, when set, counts idempotent replays.
	Metrics *telemetry.Metrics
	// Secret signs unsubscribe links (HMAC-SHA256). Without it (or PublicURL)
	// emails carry no List-Unsubscribe header and every unsubscribe link is refused.
	Secret []byte
	// PublicURL is the base URL links in messages point to, e.g.
	// https://notify.example.com; unsubscribe links are PublicURL/unsubscribe/{token}.
	PublicURL string
	// UnsubscribeTTL is how long an unsubscribe link works; 0 means DefaultUnsubscribeTTL.
	UnsubscribeTTL time.Duration
	// SendGridWebhookKey verifies SendGrid's signed event webhook (see
	// ParseSendGridWebhookKey); nil refuses every webhook request.
	SendGridWebhookKey *ecdsa.PublicKey
}

// NewService returns a Service over pool.
func NewService(pool *pgxpool.Pool, logger *slog.Logger, opts *ServiceOpts) *Service {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{pool: pool, logger: logger}
	if opts != nil {
		s.opts = *opts
	}
	return s
}

// Pool is the database pool the service uses.
func (s *Service) Pool() *pgxpool.Pool { return s.pool }

// DB is what a pool, a connection and a transaction all offer, so queries can run in either.
// Begin on a transaction starts a savepoint.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// inTx runs fn in a transaction, committing when it returns nil.
func (s *Service) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.pool, fn)
}

func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

// FrequencyCap is at most Max messages per recipient and channel within Window.
type FrequencyCap struct {
	Max    int
	Window time.Duration
}

// ParseFrequencyCaps reads "marketing=3/24h,news=10/168h".
func ParseFrequencyCaps(spec string) (map[string]FrequencyCap, error) {
	caps := map[string]FrequencyCap{}
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		category, rule, ok := strings.Cut(item, "=")
		maxText, windowText, ok2 := strings.Cut(rule, "/")
		limit, err := strconv.Atoi(maxText)
		window, err2 := time.ParseDuration(windowText)
		if !ok || !ok2 || err != nil || err2 != nil || limit < 1 || window <= 0 || !validCategory(category) {
			return nil, fmt.Errorf("frequency cap %q: want category=N/duration, e.g. marketing=3/24h", item)
		}
		caps[category] = FrequencyCap{Max: limit, Window: window}
	}
	return caps, nil
}
