package telemetry

// OpenTelemetry tracing: API request -> expansion -> delivery -> provider call.
//
// Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, and spans are exported over
// OTLP/HTTP. Otherwise the tracer provider is the no-op one and every helper
// here steps aside: the middleware and the transport return what they wrap,
// the workers start no span, and job metadata carries nothing. Nothing global
// is set here; the provider is passed explicitly to whoever starts spans.
//
// The trace crosses the job queue in River's job metadata, as the W3C
// traceparent (and tracestate) of the span that inserted the job, so expansion
// and delivery spans are children of the request that caused them.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// TracerName names notifyd's instrumentation scope.
const TracerName = "github.com/notifyd/notifyd"

// TracingEndpoint is the OTLP/HTTP traces URL that getenv configures, "" when
// tracing is off: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is, or
// OTEL_EXPORTER_OTLP_ENDPOINT + "/v1/traces"; OTEL_SDK_DISABLED=true or
// OTEL_TRACES_EXPORTER=none turn it off.
func TracingEndpoint(getenv func(string) string) string {
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") || strings.EqualFold(getenv("OTEL_TRACES_EXPORTER"), "none") {
		return ""
	}
	if u := getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"); u != "" {
		return u
	}
	if u := getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); u != "" {
		return strings.TrimSuffix(u, "/") + "/v1/traces"
	}
	return ""
}

// NewTracerProvider returns the tracer provider getenv asks for and the function
// that flushes and stops it. With tracing off (see TracingEndpoint) that is
// noop.TracerProvider and a shutdown that does nothing: no exporter, no SDK.
//
// With tracing on, spans are batched and exported over OTLP/HTTP (protobuf) to
// the endpoint; the exporter and the SDK also honour the other standard
// variables from the process environment (OTEL_EXPORTER_OTLP_HEADERS,
// _TIMEOUT, _COMPRESSION, _CERTIFICATE, OTEL_TRACES_SAMPLER and _ARG,
// OTEL_BSP_*, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES). The service name
// defaults to notifyd.
func NewTracerProvider(ctx context.Context, getenv func(string) string, version string) (trace.TracerProvider, func(context.Context) error, error) {
	endpoint := TracingEndpoint(getenv)
	if endpoint == "" {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	for _, env := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if p := getenv(env); p != "" {
			if p != "http/protobuf" {
				return nil, nil, fmt.Errorf("%s %q: notifyd exports traces over http/protobuf only (the collector's port 4318)", env, p)
			}
			break
		}
	}
	exporter, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(endpoint))
	if err != nil {
		return nil, nil, fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "notifyd"), attribute.String("service.version", version)),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
	)
	if err != nil {
		return nil, nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	return tp, tp.Shutdown, nil
}

// Tracer is notifyd's tracer from tp, or nil when tp is nil or the no-op
// provider: callers skip their spans entirely on nil.
func Tracer(tp trace.TracerProvider) trace.Tracer {
	switch tp.(type) {
	case nil, noop.TracerProvider, *noop.TracerProvider:
		return nil
	}
	return tp.Tracer(TracerName)
}

// StartSpan starts a child of ctx's span with the same provider, or does
// nothing (and allocates nothing) when ctx's span is not recording. It lets
// code that is not handed a TracerProvider add detail to a trace. Set
// attributes after it, under span.IsRecording(), so that they cost nothing
// either.
func StartSpan(ctx context.Context, name string, kind trace.SpanKind) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, parent
	}
	return parent.TracerProvider().Tracer(TracerName).Start(ctx, name, trace.WithSpanKind(kind))
}

// EndSpan records err (if any) on span and ends it.
func EndSpan(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// TraceMiddleware starts a server span per request, named by method and chi
// route pattern ("POST /v1/broadcasts": never the raw path). It continues a
// trace the caller sent in traceparent. Probes and scrapes (/healthz, /readyz,
// /metrics) are not traced. With tracing off it returns next.
func TraceMiddleware(tp trace.TracerProvider) func(http.Handler) http.Handler {
	tracer := Tracer(tp)
	if tracer == nil {
		return func(next http.Handler) http.Handler { return next }
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/healthz", "/readyz", "/metrics":
				next.ServeHTTP(w, r)
				return
			}
			ctx := propagation.TraceContext{}.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
			ctx, span := tracer.Start(ctx, r.Method, trace.WithSpanKind(trace.SpanKindServer),
				trace.WithAttributes(attribute.String("http.request.method", r.Method)))
			defer span.End()
			if id := middleware.GetReqID(ctx); id != "" {
				span.SetAttributes(attribute.String("request_id", id))
			}
			rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
			next.ServeHTTP(rec, r.WithContext(ctx))
			// The route is known once chi has routed (the route context is shared).
			if rc := chi.RouteContext(ctx); rc != nil && rc.RoutePattern() != "" {
				span.SetName(r.Method + " " + rc.RoutePattern())
				span.SetAttributes(attribute.String("http.route", rc.RoutePattern()))
			}
			span.SetAttributes(attribute.Int("http.response.status_code", rec.status))
			if rec.status >= 500 {
				span.SetStatus(codes.Error, strconv.Itoa(rec.status))
			}
		})
	}
}

// TraceTransport wraps a provider client's transport with a client span per
// request, a child of the delivery that makes it. The trace context is not sent
// to the provider. With tracing off it returns base.
func TraceTransport(tp trace.TracerProvider, channel string, base http.RoundTripper) http.RoundTripper {
	tracer := Tracer(tp)
	if tracer == nil {
		return base
	}
	if base == nil {
		base = http.DefaultTransport
	}
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		_, span := tracer.Start(req.Context(), req.Method+" "+req.URL.Host, trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(
				attribute.String("channel", channel),
				attribute.String("http.request.method", req.Method),
				attribute.String("server.address", req.URL.Hostname()),
				attribute.String("url.path", req.URL.Path),
			))
		defer span.End()
		resp, err := base.RoundTrip(req)
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
			return resp, err
		}
		span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode))
		if resp.StatusCode >= 400 {
			span.SetStatus(codes.Error, strconv.Itoa(resp.StatusCode))
		}
		return resp, nil
	})
}

// traceMetadata is the part of a River job's metadata that carries the trace.
type traceMetadata struct {
	Traceparent string `json:"traceparent,omitempty"`
	Tracestate  string `json:"tracestate,omitempty"`
}

// InjectTraceMetadata returns River job metadata ({"traceparent": ...}) that
// carries ctx's span context, or nil when ctx has none (tracing off): River then
// stores its default, {}.
func InjectTraceMetadata(ctx context.Context) []byte {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	md, err := json.Marshal(traceMetadata{Traceparent: carrier.Get("traceparent"), Tracestate: carrier.Get("tracestate")})
	if err != nil {
		return nil
	}
	return md
}

// ExtractTraceMetadata returns ctx with the remote span context carried in a
// River job's metadata, or ctx unchanged when there is none. Other keys in the
// metadata (River's own) are ignored.
func ExtractTraceMetadata(ctx context.Context, metadata []byte) context.Context {
	if len(metadata) == 0 {
		return ctx
	}
	var md traceMetadata
	if err := json.Unmarshal(metadata, &md); err != nil || md.Traceparent == "" {
		return ctx
	}
	carrier := propagation.MapCarrier{"traceparent": md.Traceparent}
	if md.Tracestate != "" {
		carrier["tracestate"] = md.Tracestate
	}
	return propagation.TraceContext{}.Extract(ctx, carrier)
}
