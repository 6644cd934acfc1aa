package notifier

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.opentelemetry.io/otel/trace"

	"github.com/notifyd/notifyd/notifier/telemetry"
)

// ServerOpts are the optional parts of the HTTP server.
type ServerOpts struct {
	// Ready reports whether the service can take traffic (database reachable,
	// schema at the expected version); nil means always ready.
	Ready func(ctx context.Context) error
	// Metrics, when set, times every request and serves GET /metrics.
	Metrics *telemetry.Metrics
	// Admin, when set, is the admin web page (notifier/adminui), served at
	// /admin/ beside the admin API under /admin/v1.
	Admin http.Handler
	// TracerProvider, when set and not the no-op one, starts a span per request
	// (telemetry/tracing.go); its context flows into the jobs the request enqueues.
	TracerProvider trace.TracerProvider
}

// NewServer returns the whole HTTP API. Every route is listed here.
func NewServer(svc *Service, logger *slog.Logger, opts *ServerOpts) http.Handler {
	if opts == nil {
		opts = &ServerOpts{}
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := chi.NewRouter()
	r.Use(middleware.RequestID)
	r.Use(telemetry.TraceMiddleware(opts.TracerProvider))
	r.Use(middleware.Recoverer)
	r.Use(telemetry.AccessLog(logger))
	if opts.Metrics != nil {
		r.Use(opts.Metrics.Middleware)
		r.Method(http.MethodGet, "/metrics", opts.Metrics.Handler())
	}
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, logger, Errorf(ENOTFOUND, "no route %s %s", r.Method, r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, logger, &Error{Code: EBADREQUEST, Message: "method " + r.Method + " is not allowed here"})
	})

	r.Get("/healthz", handleHealthz())
	r.Get("/readyz", handleReadyz(opts.Ready, logger))

	// End users and providers: no API key; the token and the signature are the auth.
	r.Get("/unsubscribe/{token}", handleUnsubscribePage(svc, logger))
	r.Post("/unsubscribe/{token}", handleUnsubscribe(svc, logger))
	r.Post("/webhooks/sendgrid", handleSendGridWebhook(svc, logger))

	r.Route("/v1", func(r chi.Router) {
		r.Use(requireScope(svc, ScopeSend))
		r.Put("/recipients/{id}", handlePutRecipient(svc, logger))
		r.Get("/recipients/{id}", handleGetRecipient(svc, logger))
		r.Delete("/recipients/{id}", handleDeleteRecipient(svc, logger))
		r.Post("/recipients/batch", handleBatchRecipients(svc, logger))
		r.Put("/recipients/{id}/devices/{token}", handlePutDevice(svc, logger))
		r.Delete("/recipients/{id}/devices/{token}", handleDeleteDevice(svc, logger))
		r.Put("/recipients/{id}/preferences", handlePutPreferences(svc, logger))
		r.Get("/recipients/{id}/preferences", handleGetPreferences(svc, logger))
		r.Get("/recipients/{id}/inbox", handleListInbox(svc, logger))
		r.Post("/recipients/{id}/inbox/{item}/read", handleReadInboxItem(svc, logger))
		r.Post("/recipients/{id}/inbox/read-all", handleReadAllInbox(svc, logger))

		r.Put("/segments/{key}", handlePutSegment(svc, logger))
		r.Get("/segments/{key}", handleGetSegment(svc, logger))
		r.Get("/segments/{key}/count", handleCountSegment(svc, logger))

		r.Post("/broadcasts", handleCreateBroadcast(svc, logger))
		r.Get("/broadcasts", handleListBroadcasts(svc, logger))
		r.Get("/broadcasts/{id}", handleGetBroadcast(svc, logger))
		r.Get("/broadcasts/{id}/deliveries", handleListDeliveries(svc, logger))
		r.Post("/notifications", handleCreateNotification(svc, logger))
		r.Get("/notifications/{id}", handleGetNotification(svc, logger))
	})

	r.Route("/admin/v1", func(r chi.Router) {
		r.Use(requireScope(svc, ScopeAdmin))
		r.Post("/broadcasts/{id}/cancel", handleControlBroadcast(svc, logger, (*Service).CancelBroadcast))
		r.Post("/broadcasts/{id}/pause", handleControlBroadcast(svc, logger, (*Service).PauseBroadcast))
		r.Post("/broadcasts/{id}/resume", handleControlBroadcast(svc, logger, (*Service).ResumeBroadcast))
		r.Get("/audit", handleListAudit(svc, logger))
	})
	if opts.Admin != nil {
		r.Handle("/admin", opts.Admin)
		r.Handle("/admin/*", opts.Admin)
	}
	return r
}
