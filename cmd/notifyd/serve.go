package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/notifyd/notifyd/channels/email"
	"github.com/notifyd/notifyd/channels/inbox"
	"github.com/notifyd/notifyd/channels/push"
	"github.com/notifyd/notifyd/migrations"
	"github.com/notifyd/notifyd/notifier"
	"github.com/notifyd/notifyd/notifier/adminui"
	"github.com/notifyd/notifyd/notifier/telemetry"
	"github.com/notifyd/notifyd/queue"
)

func runServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c, _, err := parseConfig("serve", args, getenv, stderr)
	if err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return err
	}
	if err := c.validateLinks(); err != nil {
		return err
	}
	logger := newLogger(c.LogFormat, stderr)
	tracing, stopTracing, err := startTracing(ctx, getenv, logger)
	if err != nil {
		return err
	}
	// Deferred first, so it runs last: spans are flushed after the drain.
	defer stopTracing()
	pool, err := openMigratedDB(ctx, c.DatabaseURL, poolConnsFor(c))
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := checkPoolSize(c, pool.Config().MaxConns); err != nil {
		return err
	}
	return serve(ctx, c, pool, logger, &serveHooks{tracing: tracing})
}

// poolConnsFor is the pool a process of c's role opens when DATABASE_URL does
// not set pool_max_conns: what checkPoolSize asks for, plus a connection for
// each of the expansion's parallel ranges.
func poolConnsFor(c *config) int32 {
	if c.Role == "api" {
		return minPoolConns
	}
	return int32(max(minPoolConns, workerConnsNeeded(c)+notifier.ExpandRanges))
}

// workerConnsNeeded is the smallest pool a worker process can run with: a
// broadcast delivery batch holds a connection for its broadcast's send lock
// while it takes a second one (limiter, inbox), so if every connection were
// held by such batches, all would wait forever. There are BulkWorkers of them
// per channel; 8 more are for expansion, notifications and River.
func workerConnsNeeded(c *config) int {
	return len(notifier.ChannelNames())*c.BulkWorkers + 8
}

// checkPoolSize refuses a pool that the workers could exhaust for good (see
// workerConnsNeeded).
func checkPoolSize(c *config, maxConns int32) error {
	if c.Role == "api" {
		return nil
	}
	if need := workerConnsNeeded(c); int(maxConns) < need {
		return fmt.Errorf("the database pool has %d connections, too few for NOTIFYD_BULK_WORKERS=%d: "+
			"at least %d are needed (%d channels x %d batches, each holding one while it waits for another, plus 8); add pool_max_conns=%d to DATABASE_URL",
			maxConns, c.BulkWorkers, need, len(notifier.ChannelNames()), c.BulkWorkers, need)
	}
	return nil
}

// serveHooks lets dev and tests learn the bound address, and brings the tracer
// provider.
type serveHooks struct {
	listening func(addr string)
	// tracing traces requests, jobs and provider calls; nil: off.
	tracing trace.TracerProvider
}

// startTracing sets up OpenTelemetry tracing when OTEL_EXPORTER_OTLP_ENDPOINT
// (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; otherwise it returns the
// no-op provider, creates no exporter and sets nothing. When tracing is on, the
// SDK's export errors go to the log: otel.SetErrorHandler is the one piece of
// global OpenTelemetry state notifyd sets, and only then. The provider itself
// is passed explicitly, never installed globally. stop flushes and ends it.
func startTracing(ctx context.Context, getenv func(string) string, logger *slog.Logger) (trace.TracerProvider, func(), error) {
	tp, shutdown, err := telemetry.NewTracerProvider(ctx, getenv, version)
	if err != nil {
		return nil, nil, err
	}
	endpoint := telemetry.TracingEndpoint(getenv)
	if endpoint == "" {
		return tp, func() {}, nil
	}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		logger.Warn("tracing: opentelemetry error (spans may be lost)", "error", err)
	}))
	logger.Info("tracing on", "otlp_endpoint", redactURL(endpoint))
	return tp, func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := shutdown(ctx); err != nil {
			logger.Warn("tracing: flushing spans at shutdown failed", "error", err)
		}
	}, nil
}

// serve runs the API and/or workers until ctx ends, then drains: the HTTP server
// stops taking connections and finishes in-flight requests, and the workers finish
// their jobs, both within ShutdownTimeout.
func serve(ctx context.Context, c *config, pool *pgxpool.Pool, logger *slog.Logger, hooks *serveHooks) error {
	runAPI := c.Role == "all" || c.Role == "api"
	runWorkers := c.Role == "all" || c.Role == "worker"
	var tracing trace.TracerProvider
	if hooks != nil {
		tracing = hooks.tracing
	}
	var ln net.Listener
	if runAPI {
		// Listen first: without NOTIFYD_PUBLIC_URL (dev), links in messages point here.
		var err error
		if ln, err = net.Listen("tcp", c.Addr); err != nil {
			return fmt.Errorf("NOTIFYD_ADDR %s: %w", c.Addr, err)
		}
		defer ln.Close()
	}
	metrics := telemetry.New(pool, logger)
	queueCfg := queue.Config{Pool: pool, Logger: logger, Workers: runWorkers, BulkWorkers: c.BulkWorkers, TracerProvider: tracing,
		InboxRetention: c.InboxRetention, EventRetention: c.EventRetention,
		SendTimeout: c.SendTimeout, RescueAfter: c.RescueAfter,
		// One bucket per provider in Postgres, shared by every worker process.
		Limiter: queue.NewPGLimiter(pool, map[string]float64{notifier.ChannelEmail: c.EmailRate, notifier.ChannelPush: c.PushRate})}
	if runWorkers {
		channels, err := buildChannels(ctx, c, pool, logger, metrics, tracing)
		if err != nil {
			return err
		}
		queueCfg.Channels = channels
	}
	q, err := queue.New(queueCfg)
	if err != nil {
		return err
	}
	caps, err := notifier.ParseFrequencyCaps(c.FrequencyCaps)
	if err != nil {
		return fmt.Errorf("NOTIFYD_FREQUENCY_CAPS: %w", err)
	}
	svcOpts := &notifier.ServiceOpts{RequiredCategories: c.requiredCategories(), FrequencyCaps: caps, Enqueuer: q, Metrics: metrics}
	if err := c.linkOpts(svcOpts, ln, logger); err != nil {
		return err
	}
	svc := notifier.NewService(pool, logger, svcOpts)

	errc := make(chan error, 2)
	if c.PprofAddr != "" {
		_, stopPprof, err := startPprof(c.PprofAddr, logger)
		if err != nil {
			return err
		}
		defer stopPprof()
	}
	if runWorkers {
		if err := q.Start(ctx, svc); err != nil {
			return err
		}
		logger.Info("workers started", "channels", channelNames(queueCfg.Channels))
	}
	var srv *http.Server
	if runAPI {
		srv = &http.Server{
			Handler: notifier.NewServer(svc, logger, &notifier.ServerOpts{
				Ready:          func(ctx context.Context) error { return migrations.Check(ctx, pool) },
				Metrics:        metrics,
				Admin:          adminui.New(svc, logger, nil),
				TracerProvider: tracing,
			}),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
		}
		logger.Info("listening", "addr", ln.Addr().String(), "role", c.Role, "version", version)
		if hooks != nil && hooks.listening != nil {
			hooks.listening(ln.Addr().String())
		}
		go func() { errc <- srv.Serve(ln) }()
	}

	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	logger.Info("shutting down", "timeout", c.ShutdownTimeout)
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.ShutdownTimeout)
	defer cancel()
	var errs []error
	if srv != nil {
		errs = append(errs, srv.Shutdown(shutdownCtx))
	}
	if runWorkers {
		errs = append(errs, q.Stop(shutdownCtx))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	logger.Info("stopped")
	return nil
}

// buildChannels makes the channels this worker can deliver on. The inbox needs
// only the database; email and push need their provider settings.
func buildChannels(ctx context.Context, c *config, pool *pgxpool.Pool, logger *slog.Logger, metrics *telemetry.Metrics, tracing trace.TracerProvider) (map[string]notifier.Channel, error) {
	// Provider clients: own timeouts and pools, each request timed for /metrics
	// and, with tracing, a client span under its delivery. Outermost, the send
	// gate: a batch that lost its send lock starts no request (notifier/sendgate.go).
	providerClient := func(channel string) *http.Client {
		transport := http.DefaultTransport.(*http.Transport).Clone()
		// Every bulk worker's SendEach runs 50 requests at once. The cap bounds the
		// connections (two goroutines and their buffers each, which is what drives
		// RSS); requests beyond it wait for a free one instead of dialling. All of
		// them may stay idle: with MaxIdleConns below the cap (the default 100),
		// each round closed the surplus and dialled it again (9% of the CPU).
		transport.MaxConnsPerHost = providerConnsPerHost
		transport.MaxIdleConnsPerHost = providerConnsPerHost
		transport.MaxIdleConns = providerConnsPerHost
		return &http.Client{
			Transport: notifier.GateTransport(metrics.Transport(channel, telemetry.TraceTransport(tracing, channel, transport))),
			Timeout:   c.SendTimeout,
		}
	}
	channels := map[string]notifier.Channel{notifier.ChannelInbox: inbox.New(pool)}
	if c.SendGridAPIKey != "" {
		sender, err := email.New(email.Config{APIKey: c.SendGridAPIKey, BaseURL: c.SendGridBaseURL, From: c.EmailFrom,
			HTTPClient: providerClient(notifier.ChannelEmail)})
		if err != nil {
			return nil, fmt.Errorf("email channel (NOTIFYD_SENDGRID_*, NOTIFYD_EMAIL_FROM): %w", err)
		}
		channels[notifier.ChannelEmail] = sender
	} else {
		logger.Warn("email channel off: set NOTIFYD_SENDGRID_API_KEY and NOTIFYD_EMAIL_FROM")
	}
	if c.FCMProjectID != "" {
		// With credentials, push puts Google's authentication on top of this
		// client's transport.
		sender, err := push.New(ctx, push.Config{ProjectID: c.FCMProjectID, Credentials: c.FCMCredentials, Endpoint: c.FCMEndpoint,
			HTTPClient: providerClient(notifier.ChannelPush)})
		if err != nil {
			return nil, fmt.Errorf("push channel (NOTIFYD_FCM_*): %w", err)
		}
		channels[notifier.ChannelPush] = sender
	} else {
		logger.Warn("push channel off: set NOTIFYD_FCM_PROJECT_ID (and NOTIFYD_FCM_CREDENTIALS)")
	}
	return channels, nil
}

// providerConnsPerHost is the most connections to one provider host per process
// (HTTP/1.1; over HTTP/2 they carry many requests each).
const providerConnsPerHost = 96

func channelNames(channels map[string]notifier.Channel) []string {
	var names []string
	for name := range channels {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// startPprof serves net/http/pprof on its own listener, so profiling is never
// reachable through the API's address.
func startPprof(addr string, logger *slog.Logger) (bound string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("NOTIFYD_PPROF_ADDR %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	logger.Info("pprof listening", "addr", ln.Addr().String())
	return ln.Addr().String(), func() { _ = srv.Close() }, nil
}
