package main

import (
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpCollector is a fake OpenTelemetry collector: it keeps the spans posted
// to /v1/traces (OTLP/HTTP, protobuf).
type otlpCollector struct {
	mu    sync.Mutex
	spans []collectedSpan
}

type collectedSpan struct {
	name, traceID, spanID, parentID string
	kind                            int32
}

func (c *otlpCollector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var req coltracepb.ExportTraceServiceRequest
	if r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
		http.Error(w, "bad export", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				c.spans = append(c.spans, collectedSpan{name: s.Name, traceID: hex.EncodeToString(s.TraceId),
					spanID: hex.EncodeToString(s.SpanId), parentID: hex.EncodeToString(s.ParentSpanId), kind: int32(s.Kind)})
			}
		}
	}
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
}

func (c *otlpCollector) snapshot() []collectedSpan {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]collectedSpan(nil), c.spans...)
}

// With OTEL_EXPORTER_OTLP_ENDPOINT set, serve exports one trace per broadcast:
// the API request, its expansion, the deliveries on both channels and the
// calls to SendGrid and FCM.
func TestTracingServeExportsBroadcastTrace(t *testing.T) {
	t.Parallel()
	collector := &otlpCollector{}
	srv := httptest.NewServer(collector)
	t.Cleanup(srv.Close)
	e := startE2E(t, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL})
	e.seed(t, "t", 20, "pro")
	status, _, out := e.call(t, "POST", "/v1/broadcasts", "traced-1", broadcastBody("traced"))
	if status != 202 {
		t.Fatalf("create = %d %v", status, out)
	}
	e.waitStatus(t, out["id"], "completed", time.Minute)

	// The SDK exports in batches every 5 s (OTEL_BSP_SCHEDULE_DELAY).
	const spanKindClient = 3
	var create collectedSpan
	var byName map[string][]collectedSpan
	deadline := time.Now().Add(20 * time.Second)
	for {
		byName = map[string][]collectedSpan{}
		for _, s := range collector.snapshot() {
			byName[s.name] = append(byName[s.name], s)
			if s.name == "POST /v1/broadcasts" {
				create = s
			}
		}
		if create.traceID != "" && len(byName["notifyd.deliver"]) >= 2 && len(byName["notifyd.send"]) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the collector has %d spans: %v", len(collector.snapshot()), byName)
		}
		time.Sleep(200 * time.Millisecond)
	}
	inTrace := map[string]int{}
	clients := 0
	for _, s := range collector.snapshot() {
		if s.traceID == create.traceID {
			inTrace[s.name]++
			if s.kind == spanKindClient {
				clients++
			}
		}
	}
	for _, name := range []string{"notifyd.enqueue_expand", "notifyd.expand", "notifyd.deliver", "notifyd.send"} {
		if inTrace[name] == 0 {
			t.Errorf("no %s span in the request's trace: %v", name, inTrace)
		}
	}
	// One email batch and one push batch, each at least one provider call.
	if inTrace["notifyd.deliver"] < 2 || clients < 2 {
		t.Errorf("%d deliver spans and %d provider calls in the trace: %v", inTrace["notifyd.deliver"], clients, inTrace)
	}
}
