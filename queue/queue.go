// Package queue wires notifyd's work onto River: the job kinds, their workers and
// queues, and the periodic maintenance. The rules of once-only and cancel live in
// notifier (the claim); River only decides when work runs.
package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/notifyd/notifyd/notifier"
	"github.com/notifyd/notifyd/notifier/telemetry"
)

// Queue names. Notifications have their own queue and workers, so a broadcast
// backlog never stands in front of them.
const (
	QueueTransactional = "transactional"
	// QueueBulk is the prefix of the broadcast delivery queues, one per channel
	// (see BulkQueue).
	QueueBulk        = "bulk"
	QueueExpand      = "expand"
	QueueMaintenance = "maintenance"
)

// ExpandArgs expands one broadcast's audience into deliveries.
type ExpandArgs struct {
	BroadcastID int64 `json:"broadcast_id"`
}

func (ExpandArgs) Kind() string { return "notifyd.expand" }

// DeliverArgs delivers one batch of deliveries.
type DeliverArgs struct {
	notifier.DeliveryBatch
}

func (DeliverArgs) Kind() string { return "notifyd.deliver" }

// MaintenanceArgs runs the periodic housekeeping.
type MaintenanceArgs struct{}

func (MaintenanceArgs) Kind() string { return "notifyd.maintenance" }

// Config configures a Queue.
type Config struct {
	Pool     *pgxpool.Pool
	Channels map[string]notifier.Channel
	Logger   *slog.Logger
	// Limiter paces provider calls; nil means unlimited.
	Limiter Limiter
	// Workers: run jobs in this process (false: insert only, for the API role).
	Workers bool
	// BulkWorkers and TransactionalWorkers size the delivery queues.
	BulkWorkers, TransactionalWorkers int
	// InboxRetention deletes inbox items older than this (0: keep them).
	InboxRetention time.Duration
	// EventRetention deletes provider webhook events older than this (0: keep them).
	EventRetention time.Duration
	// SendTimeout bounds one provider call (default 30 s). It also sets the
	// deliver job's timeout (JobTimeout) and when a claim with no record is
	// swept to unknown (2x this + 30 s after the claim).
	SendTimeout time.Duration
	// RescueAfter is when River re-runs a job still marked running, i.e. whose
	// process died (default 3 min). It must be at least MinRescueAfter of
	// SendTimeout, so that a job that is really still running is never re-run
	// beside itself (see MinRescueAfter).
	RescueAfter time.Duration
	// MaxDeliveryAttempts is how many provider calls a delivery gets before a
	// transient failure is final (default notifier.MaxDeliveryAttempts).
	MaxDeliveryAttempts int
	// TracerProvider traces the expand and deliver jobs, as children of the
	// span that enqueued them (telemetry/tracing.go); nil or no-op: no spans.
	TracerProvider trace.TracerProvider
}

// Defaults of the timing settings (NOTIFYD_SEND_TIMEOUT, NOTIFYD_RESCUE_AFTER).
const (
	DefaultSendTimeout = 30 * time.Second
	DefaultRescueAfter = 3 * time.Minute
)

// jobTimeout bounds every job's run (River cancels its context then): a deliver
// job starts slices for up to sendTimeout (Work), and the last one may wait up to
// 3 s for the limiter, then call the provider for up to sendTimeout more; 30 s
// covers the locks, claims and records on a busy database. An expansion works
// for 20 s per job.
func jobTimeout(sendTimeout time.Duration) time.Duration {
	return 2*sendTimeout + 30*time.Second
}

// sweepAfter is when a claim with no record is taken for interrupted and swept
// to unknown: a claim is recorded within one provider call (sendTimeout) and a
// record (30 s at most, even past the job's timeout, see deliverPart), so an
// older one belongs to a worker that died.
func sweepAfter(sendTimeout time.Duration) time.Duration {
	return 2*sendTimeout + 30*time.Second
}

// MinRescueAfter is the shortest rescue delay allowed with sendTimeout: the
// job timeout plus the 30 s a record may take after it. River re-runs a job
// still marked running after the rescue delay; were that shorter than a job can
// really run, a slow but live job would run twice at once. The claims would
// still keep every delivery at most once, but the first run to end could mark
// the job completed while the second put deliveries back to pending, and those
// would then wait with no job to retry them.
func MinRescueAfter(sendTimeout time.Duration) time.Duration {
	return jobTimeout(sendTimeout) + 30*time.Second
}

// Limiter paces provider calls and protects providers (see ratelimit.go;
// PGLimiter is the implementation shared by all processes).
type Limiter interface {
	// Wait returns when n messages may go to channel's provider, within the
	// broadcast's own rate when perBroadcast is set; broadcastID 0 is a
	// transactional notification. It returns ErrProviderBlocked when the
	// provider is blocked for longer than it sleeps.
	Wait(ctx context.Context, channel string, n int, perBroadcast *float64, broadcastID int64) error
	// MaxBatch is the most messages one provider request may carry.
	MaxBatch(channel string) int
	// Backoff slows the whole provider down for d (a 429 / Retry-After).
	Backoff(ctx context.Context, channel string, d time.Duration) error
	// RecordOutcome feeds the circuit breaker: ok when a batch was accepted,
	// not ok when it failed transiently.
	RecordOutcome(ctx context.Context, channel string, ok bool) error
}

// Queue is the River client with notifyd's workers.
type Queue struct {
	client *river.Client[pgx.Tx]
	cfg    Config
	// svc is set by Start: the service enqueues through the Queue, and the
	// workers act through the service.
	svc *notifier.Service
	// tracer is nil when tracing is off.
	tracer trace.Tracer
}

var _ notifier.Enqueuer = (*Queue)(nil)

// New builds the River client. With cfg.Workers it also registers the workers.
func New(cfg Config) (*Queue, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SendTimeout == 0 {
		cfg.SendTimeout = DefaultSendTimeout
	}
	if cfg.RescueAfter == 0 {
		cfg.RescueAfter = max(DefaultRescueAfter, MinRescueAfter(cfg.SendTimeout))
	}
	if cfg.RescueAfter < MinRescueAfter(cfg.SendTimeout) {
		return nil, fmt.Errorf("rescue delay %s is shorter than %s, the longest a job can run with a send timeout of %s plus 30 s",
			cfg.RescueAfter, MinRescueAfter(cfg.SendTimeout), cfg.SendTimeout)
	}
	if cfg.MaxDeliveryAttempts == 0 {
		cfg.MaxDeliveryAttempts = notifier.MaxDeliveryAttempts
	}
	if cfg.BulkWorkers == 0 {
		cfg.BulkWorkers = 4
	}
	if cfg.TransactionalWorkers == 0 {
		cfg.TransactionalWorkers = 8
	}
	q := &Queue{cfg: cfg, tracer: telemetry.Tracer(cfg.TracerProvider)}
	riverCfg := &river.Config{
		Logger:      cfg.Logger,
		MaxAttempts: 12,
		RetryPolicy: retryPolicy{},
		// Every job is short: a chunk of expansion or one provider batch. A job
		// whose process died is rescued (run again) after RescueAfter; the claim
		// makes a rerun safe.
		JobTimeout:           jobTimeout(cfg.SendTimeout),
		RescueStuckJobsAfter: cfg.RescueAfter,
		FetchCooldown:        20 * time.Millisecond,
		FetchPollInterval:    200 * time.Millisecond,
	}
	if cfg.Workers {
		workers := river.NewWorkers()
		river.AddWorker(workers, &expandWorker{q: q})
		river.AddWorker(workers, &deliverWorker{q: q})
		river.AddWorker(workers, &maintenanceWorker{q: q})
		riverCfg.Workers = workers
		riverCfg.Queues = map[string]river.QueueConfig{
			QueueTransactional: {MaxWorkers: cfg.TransactionalWorkers},
			QueueExpand:        {MaxWorkers: 2},
			QueueMaintenance:   {MaxWorkers: 1},
		}
		for _, channel := range notifier.ChannelNames() {
			riverCfg.Queues[BulkQueue(channel)] = river.QueueConfig{MaxWorkers: cfg.BulkWorkers}
		}
		riverCfg.PeriodicJobs = []*river.PeriodicJob{
			river.NewPeriodicJob(river.PeriodicInterval(15*time.Second), func() (river.JobArgs, *river.InsertOpts) {
				return MaintenanceArgs{}, &river.InsertOpts{Queue: QueueMaintenance, UniqueOpts: river.UniqueOpts{ByPeriod: 15 * time.Second}}
			}, &river.PeriodicJobOpts{RunOnStart: true}),
		}
	}
	client, err := river.NewClient(riverpgxv5.New(cfg.Pool), riverCfg)
	if err != nil {
		return nil, err
	}
	q.client = client
	return q, nil
}

// Start starts working jobs through svc (Workers only).
func (q *Queue) Start(ctx context.Context, svc *notifier.Service) error {
	q.svc = svc
	return q.client.Start(ctx)
}

// Stop lets running jobs finish, up to ctx's deadline, then cancels them.
func (q *Queue) Stop(ctx context.Context) error {
	err := q.client.Stop(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		hardCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		return q.client.StopAndCancel(hardCtx)
	}
	return err
}

// Client exposes the River client (tests, tools).
func (q *Queue) Client() *river.Client[pgx.Tx] { return q.client }

// EnqueueExpandTx implements notifier.Enqueuer. With tracing, the expansion
// becomes a child of an enqueue span under the caller's (the create or resume
// request's) span.
func (q *Queue) EnqueueExpandTx(ctx context.Context, tx pgx.Tx, broadcastID int64, at time.Time) (err error) {
	parent := trace.SpanFromContext(ctx)
	ctx, span := telemetry.StartSpan(ctx, "notifyd.enqueue_expand", trace.SpanKindProducer)
	defer func() { telemetry.EndSpan(span, err) }()
	if span.IsRecording() {
		attr := attribute.Int64("broadcast_id", broadcastID)
		span.SetAttributes(attr, attribute.String("messaging.destination.name", QueueExpand))
		// The request's own span (POST /v1/broadcasts) names its broadcast too.
		parent.SetAttributes(attr)
	}
	opts := &river.InsertOpts{Queue: QueueExpand, Metadata: telemetry.InjectTraceMetadata(ctx)}
	// Only a future time goes to River: any ScheduledAt makes the job wait for
	// River's scheduler (seconds) even when it is already due.
	if at.After(time.Now()) {
		opts.ScheduledAt = at
	}
	_, err = q.client.InsertTx(ctx, tx, ExpandArgs{BroadcastID: broadcastID}, opts)
	return err
}

// BulkQueue is the queue of a channel's broadcast deliveries. Each channel has
// its own queue and workers, so a slow provider (FCM takes one request per
// message) holds up only its own channel, never the others.
func BulkQueue(channel string) string { return QueueBulk + "_" + channel }

// EnqueueDeliveriesTx implements notifier.Enqueuer with one bulk insert.
func (q *Queue) EnqueueDeliveriesTx(ctx context.Context, tx pgx.Tx, batches []notifier.DeliveryBatch, transactional bool) error {
	// The deliveries are children of the expansion (or the notification's request).
	metadata := telemetry.InjectTraceMetadata(ctx)
	transactionalOpts := &river.InsertOpts{Queue: QueueTransactional, Priority: 1, Metadata: metadata}
	bulkOpts := map[string]*river.InsertOpts{}
	params := make([]river.InsertManyParams, len(batches))
	for i, b := range batches {
		opts := transactionalOpts
		if !transactional {
			if opts = bulkOpts[b.Channel]; opts == nil {
				opts = &river.InsertOpts{Queue: BulkQueue(b.Channel), Priority: 2, Metadata: metadata}
				bulkOpts[b.Channel] = opts
			}
		}
		params[i] = river.InsertManyParams{Args: DeliverArgs{DeliveryBatch: b}, InsertOpts: opts}
	}
	if _, err := q.client.InsertManyFastTx(ctx, tx, params); err != nil {
		return fmt.Errorf("enqueue deliveries: %w", err)
	}
	return nil
}

// startJobSpan starts a consumer span for job, a child of the span that inserted
// it (the trace context travels in the job's metadata). With tracing off it
// starts nothing and returns ctx's (no-op) span.
func (q *Queue) startJobSpan(ctx context.Context, name string, job *rivertype.JobRow) (context.Context, trace.Span) {
	if q.tracer == nil {
		return ctx, trace.SpanFromContext(ctx)
	}
	ctx = telemetry.ExtractTraceMetadata(ctx, job.Metadata)
	return q.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
		attribute.String("messaging.system", "river"),
		attribute.String("messaging.destination.name", job.Queue),
		attribute.Int64("messaging.message.id", job.ID),
		attribute.Int("river.attempt", job.Attempt),
	))
}

// endJobSpan ends a job's span; a snooze is an event, not an error.
func endJobSpan(span trace.Span, err error) {
	if err == nil || !span.IsRecording() {
		span.End()
		return
	}
	var snooze *rivertype.JobSnoozeError
	if errors.As(err, &snooze) {
		span.AddEvent("snoozed", trace.WithAttributes(attribute.String("for", snooze.Duration.String())))
		err = nil
	}
	telemetry.EndSpan(span, err)
}
