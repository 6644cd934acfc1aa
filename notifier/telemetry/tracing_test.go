package telemetry

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/go-chi/chi/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// newRecorder is an SDK provider that hands each ended span to an in-memory exporter.
func newRecorder(t *testing.T) (*sdktrace.TracerProvider, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, exp
}

func attrOf(s tracetest.SpanStub, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

type plainHandler struct{}

func (*plainHandler) ServeHTTP(http.ResponseWriter, *http.Request) {}

// Without an OTLP endpoint there is no SDK, no exporter and no span: the
// middleware and the transport are the very handler and transport they wrap,
// and job metadata carries nothing.
// Not parallel: AllocsPerRun needs the process to itself.
func TestTracingOffCreatesNothing(t *testing.T) {
	for _, env := range []map[string]string{
		{},
		{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"},
	} {
		if e := TracingEndpoint(envOf(env)); e != "" {
			t.Errorf("TracingEndpoint(%v) = %q, want off", env, e)
		}
		tp, shutdown, err := NewTracerProvider(context.Background(), envOf(env), "test")
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := tp.(noop.TracerProvider); !ok {
			t.Fatalf("env %v: provider is %T, want noop.TracerProvider", env, tp)
		}
		if err := shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		if Tracer(tp) != nil || Tracer(nil) != nil {
			t.Error("Tracer of the no-op provider is not nil")
		}
		h := &plainHandler{}
		if got := TraceMiddleware(tp)(h); got != http.Handler(h) {
			t.Errorf("TraceMiddleware wrapped the handler: %T", got)
		}
		base := &http.Transport{}
		if got := TraceTransport(tp, "email", base); got != http.RoundTripper(base) {
			t.Errorf("TraceTransport wrapped the transport: %T", got)
		}
	}
	ctx := context.Background()
	if md := InjectTraceMetadata(ctx); md != nil {
		t.Errorf("metadata without a span = %s", md)
	}
	allocs := testing.AllocsPerRun(100, func() {
		_ = InjectTraceMetadata(ctx)
		c, span := StartSpan(ctx, "x", trace.SpanKindProducer)
		EndSpan(span, nil)
		_ = c
	})
	if allocs != 0 {
		t.Errorf("disabled tracing allocates %.0f times per job", allocs)
	}
}

// The trace context survives the trip through River's metadata, next to
// River's own keys.
func TestTraceMetadataRoundTrip(t *testing.T) {
	t.Parallel()
	tp, _ := newRecorder(t)
	ctx, span := tp.Tracer("test").Start(context.Background(), "request")
	defer span.End()
	md := InjectTraceMetadata(ctx)
	var got map[string]string
	if err := json.Unmarshal(md, &got); err != nil {
		t.Fatalf("metadata %s: %v", md, err)
	}
	sc := span.SpanContext()
	if want := "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"; got["traceparent"] != want {
		t.Errorf("traceparent = %q, want %q", got["traceparent"], want)
	}

	withRiverKeys := `{"river:unique_key":"x","periodic":true,"traceparent":"` + got["traceparent"] + `"}`
	for _, in := range []string{string(md), withRiverKeys} {
		remote := trace.SpanContextFromContext(ExtractTraceMetadata(context.Background(), []byte(in)))
		if !remote.IsRemote() || remote.TraceID() != sc.TraceID() || remote.SpanID() != sc.SpanID() || !remote.IsSampled() {
			t.Errorf("extracted from %s: %+v", in, remote)
		}
	}
	for _, in := range []string{"", "{}", "not json", `{"traceparent":"garbage"}`} {
		if sc := trace.SpanContextFromContext(ExtractTraceMetadata(context.Background(), []byte(in))); sc.IsValid() {
			t.Errorf("extracted a span context from %q", in)
		}
	}
}

// The server span is named by the route pattern, continues the caller's
// trace, and marks 5xx answers as errors.
func TestTraceMiddlewareNamesSpansByRoute(t *testing.T) {
	t.Parallel()
	tp, exp := newRecorder(t)
	r := chi.NewRouter()
	r.Use(TraceMiddleware(tp))
	var inHandler trace.SpanContext
	r.Get("/v1/broadcasts/{id}", func(w http.ResponseWriter, r *http.Request) {
		inHandler = trace.SpanContextFromContext(r.Context())
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	r.Get("/healthz", func(http.ResponseWriter, *http.Request) {})
	caller, callerSpan := tp.Tracer("caller").Start(context.Background(), "caller")
	callerSpan.End()
	req := httptest.NewRequestWithContext(context.Background(), "GET", "/v1/broadcasts/42", nil)
	req.Header.Set("traceparent", "00-"+trace.SpanContextFromContext(caller).TraceID().String()+"-"+
		trace.SpanContextFromContext(caller).SpanID().String()+"-01")
	r.ServeHTTP(httptest.NewRecorder(), req)
	r.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/healthz", nil))

	spans := exp.GetSpans() // the caller's and the request's; not the probe's
	if len(spans) != 2 {
		t.Fatalf("%d spans", len(spans))
	}
	s := spans[1]
	if s.Name != "GET /v1/broadcasts/{id}" || s.SpanKind != trace.SpanKindServer {
		t.Errorf("span %q kind %v", s.Name, s.SpanKind)
	}
	if s.Parent.SpanID() != callerSpan.SpanContext().SpanID() || s.SpanContext.TraceID() != callerSpan.SpanContext().TraceID() {
		t.Errorf("the server span does not continue the caller's trace")
	}
	if inHandler.SpanID() != s.SpanContext.SpanID() {
		t.Errorf("the handler's context does not carry the server span")
	}
	if v, _ := attrOf(s, "http.response.status_code"); v.AsInt64() != 503 || s.Status.Code != codes.Error {
		t.Errorf("status attribute %v, span status %v", v, s.Status)
	}
	if v, _ := attrOf(s, "http.route"); v.AsString() != "/v1/broadcasts/{id}" {
		t.Errorf("http.route = %q", v.AsString())
	}
}

// A provider request is a client span under the delivery that made it; the
// trace context is not sent to the provider.
func TestTraceTransportSpansProviderCalls(t *testing.T) {
	t.Parallel()
	tp, exp := newRecorder(t)
	var gotTraceparent string
	provider := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotTraceparent = r.Header.Get("traceparent")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer provider.Close()
	client := &http.Client{Transport: TraceTransport(tp, "email", nil)}
	ctx, parent := tp.Tracer("test").Start(context.Background(), "notifyd.send")
	req, _ := http.NewRequestWithContext(ctx, "POST", provider.URL+"/v3/mail/send", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	parent.End()
	spans := exp.GetSpans()
	if len(spans) != 2 {
		t.Fatalf("%d spans", len(spans))
	}
	s := spans[0]
	if s.SpanKind != trace.SpanKindClient || s.Parent.SpanID() != parent.SpanContext().SpanID() || !strings.HasPrefix(s.Name, "POST ") {
		t.Errorf("span %q kind %v parent %v", s.Name, s.SpanKind, s.Parent.SpanID())
	}
	if v, _ := attrOf(s, "http.response.status_code"); v.AsInt64() != 429 || s.Status.Code != codes.Error {
		t.Errorf("status %v / %v", v, s.Status)
	}
	if v, _ := attrOf(s, "channel"); v.AsString() != "email" {
		t.Errorf("channel = %q", v.AsString())
	}
	if gotTraceparent != "" {
		t.Errorf("the provider received traceparent %q", gotTraceparent)
	}
}

// With OTEL_EXPORTER_OTLP_ENDPOINT set, spans leave over OTLP/HTTP to
// {endpoint}/v1/traces.
func TestTracerProviderExportsOverOTLP(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []string
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.Path+" "+r.Header.Get("Content-Type"))
		mu.Unlock()
		if len(body) == 0 {
			t.Error("empty export")
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer collector.Close()
	env := envOf(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": collector.URL + "/"})
	if e := TracingEndpoint(env); e != collector.URL+"/v1/traces" {
		t.Errorf("endpoint = %q", e)
	}
	tp, shutdown, err := NewTracerProvider(context.Background(), env, "test")
	if err != nil {
		t.Fatal(err)
	}
	if Tracer(tp) == nil {
		t.Fatal("tracing is off with an endpoint set")
	}
	_, span := Tracer(tp).Start(context.Background(), "notifyd.expand")
	span.End()
	if err := shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] != "POST /v1/traces application/x-protobuf" {
		t.Errorf("collector received %q", got)
	}

	_, _, err = NewTracerProvider(context.Background(), envOf(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": collector.URL, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}), "test")
	if err == nil || !strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_PROTOCOL") {
		t.Errorf("grpc protocol: err = %v", err)
	}
}
