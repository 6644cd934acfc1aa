package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/notifyd/notifyd/migrations/pgtest"
	"github.com/notifyd/notifyd/notifier"
	"github.com/notifyd/notifyd/notifier/telemetry"
)

// httpChannel is an email provider reached over HTTP through the client a
// worker builds (with the tracing transport), accepting every message.
type httpChannel struct {
	client *http.Client
	url    string
}

func (c *httpChannel) Name() string  { return notifier.ChannelEmail }
func (c *httpChannel) MaxBatch() int { return 1000 }

func (c *httpChannel) Send(ctx context.Context, msgs []notifier.Message) []notifier.SendResult {
	out := make([]notifier.SendResult, len(msgs))
	req, _ := http.NewRequestWithContext(ctx, "POST", c.url+"/v3/mail/send", nil)
	resp, err := c.client.Do(req)
	if err == nil {
		resp.Body.Close()
	}
	for i, m := range msgs {
		out[i] = notifier.SendResult{DeliveryID: m.DeliveryID, ProviderID: fmt.Sprint("p-", m.DeliveryID), Err: err}
	}
	return out
}

type tracingBundle struct {
	pool     *pgxpool.Pool
	svc      *notifier.Service
	api      *httptest.Server
	exporter *tracetest.InMemoryExporter // nil: tracing off
	secret   string
}

// setupTracing runs the API and the workers of one process on a fresh
// database, traced into an in-memory exporter when traced is set.
func setupTracing(t *testing.T, traced bool) *tracingBundle {
	t.Helper()
	b := &tracingBundle{pool: pgtest.NewPool(t)}
	var tp trace.TracerProvider
	if traced {
		b.exporter = tracetest.NewInMemoryExporter()
		sdk := sdktrace.NewTracerProvider(sdktrace.WithSyncer(b.exporter))
		t.Cleanup(func() { _ = sdk.Shutdown(context.Background()) })
		tp = sdk
	}
	provider := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) }))
	t.Cleanup(provider.Close)
	ch := &httpChannel{client: &http.Client{Transport: telemetry.TraceTransport(tp, notifier.ChannelEmail, http.DefaultTransport)}, url: provider.URL}
	q, svc := runQueue(t, Config{
		Pool: b.pool, Channels: map[string]notifier.Channel{notifier.ChannelEmail: ch},
		Limiter: NewPGLimiter(b.pool, map[string]float64{notifier.ChannelEmail: 100000}), TracerProvider: tp,
	})
	if (q.tracer != nil) != traced {
		t.Fatalf("queue tracer %v with tracing %v", q.tracer, traced)
	}
	b.svc = svc
	b.api = httptest.NewServer(notifier.NewServer(b.svc, nil, &notifier.ServerOpts{TracerProvider: tp}))
	t.Cleanup(b.api.Close)
	var err error
	if _, b.secret, err = b.svc.CreateAPIKey(context.Background(), "test", []string{notifier.ScopeSend}); err != nil {
		t.Fatal(err)
	}
	return b
}

// createBroadcast creates recipients and, through the API, a paced email
// broadcast to them (paced, so that each delivery job goes out in slices).
func (b *tracingBundle) createBroadcast(t *testing.T, n int, traceparent string) int64 {
	t.Helper()
	ids := make([]string, n)
	ins := make([]notifier.RecipientInput, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%03d", i)
		ins[i] = notifier.RecipientInput{ID: ids[i], Email: ids[i] + "@example.com"}
	}
	if _, err := b.svc.PutRecipients(context.Background(), ins); err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"name": "traced", "category": "news", "recipients": ids, "channels": []string{"email"},
		"email": map[string]any{"subject": "Hi", "text": "Hi {{.Recipient.ID}}"}, "rate_per_second": 200})
	req, _ := http.NewRequest("POST", b.api.URL+"/v1/broadcasts", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+b.secret)
	req.Header.Set("Idempotency-Key", "traced-1")
	if traceparent != "" {
		req.Header.Set("traceparent", traceparent)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		ID int64 `json:"id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("create = %d, %v", resp.StatusCode, err)
	}
	if c := waitCompleted(t, b.svc, out.ID, 30*time.Second); c.Status != notifier.StatusCompleted || c.Counts.Sent != int64(n) {
		t.Fatalf("broadcast %s with counts %+v", c.Status, c.Counts)
	}
	return out.ID
}

// jobTraceparents is the traceparent stored in each River job's metadata, by kind.
func (b *tracingBundle) jobTraceparents(t *testing.T) map[string][]string {
	t.Helper()
	rows, err := b.pool.Query(context.Background(), `SELECT kind, coalesce(metadata->>'traceparent', '') FROM river_job
		WHERE kind IN ('notifyd.expand', 'notifyd.deliver') ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for rows.Next() {
		var kind, tp string
		if err := rows.Scan(&kind, &tp); err != nil {
			t.Fatal(err)
		}
		out[kind] = append(out[kind], tp)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// One trace runs from the API request through the expansion and every
// delivery slice to each provider call: the request's span context is stored
// in the River jobs' metadata and the workers continue it.
func TestTracingFollowsABroadcastFromRequestToProvider(t *testing.T) {
	t.Parallel()
	b := setupTracing(t, true)
	const n = 30 // at 200/s: slices of 10
	// The calling backend's own trace, continued by notifyd.
	callerTrace, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	callerSpan, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	id := b.createBroadcast(t, n, "00-"+callerTrace.String()+"-"+callerSpan.String()+"-01")

	// The deliver spans end just after the last record; wait for all of them.
	var spans tracetest.SpanStubs
	deadline := time.Now().Add(10 * time.Second)
	for {
		spans = b.exporter.GetSpans()
		sent := int64(0)
		for _, s := range spans {
			if s.Name == "notifyd.deliver" {
				v, _ := attrOfSpan(s, "sent")
				sent += v
			}
		}
		if sent == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	byName := map[string][]tracetest.SpanStub{}
	byID := map[trace.SpanID]tracetest.SpanStub{}
	for _, s := range spans {
		byName[s.Name] = append(byName[s.Name], s)
		byID[s.SpanContext.SpanID()] = s
		if s.SpanContext.TraceID() != callerTrace {
			t.Errorf("span %q is in trace %s, not the caller's", s.Name, s.SpanContext.TraceID())
		}
	}
	parentName := func(s tracetest.SpanStub) string { return byID[s.Parent.SpanID()].Name }
	one := func(name string) tracetest.SpanStub {
		t.Helper()
		if len(byName[name]) != 1 {
			t.Fatalf("%d %q spans; all: %v", len(byName[name]), name, names(spans))
		}
		return byName[name][0]
	}

	server := one("POST /v1/broadcasts")
	if server.Parent.SpanID() != callerSpan || server.SpanKind != trace.SpanKindServer {
		t.Errorf("server span: parent %s kind %v", server.Parent.SpanID(), server.SpanKind)
	}
	if v, _ := attrOfSpan(server, "broadcast_id"); v != id {
		t.Errorf("server span broadcast_id = %d, want %d", v, id)
	}
	enqueue := one("notifyd.enqueue_expand")
	if parentName(enqueue) != server.Name {
		t.Errorf("enqueue_expand's parent is %q", parentName(enqueue))
	}
	expand := one("notifyd.expand")
	if expand.Parent.SpanID() != enqueue.SpanContext.SpanID() || expand.SpanKind != trace.SpanKindConsumer {
		t.Errorf("expand's parent is %q, kind %v", parentName(expand), expand.SpanKind)
	}
	if v, _ := attrOfSpan(expand, "broadcast_id"); v != id {
		t.Errorf("expand broadcast_id = %d", v)
	}
	if v, _ := attrOfSpan(expand, "recipients"); v != n {
		t.Errorf("expand recipients = %d", v)
	}

	var sent, count int64
	for _, d := range byName["notifyd.deliver"] {
		if d.Parent.SpanID() != expand.SpanContext.SpanID() {
			t.Errorf("a deliver span's parent is %q", parentName(d))
		}
		v, _ := attrOfSpan(d, "sent")
		sent += v
		v, _ = attrOfSpan(d, "count")
		count += v
		if v, _ := attrOfSpan(d, "broadcast_id"); v != id {
			t.Errorf("deliver broadcast_id = %d", v)
		}
	}
	if sent != n || count != n {
		t.Errorf("deliver spans: sent %d, count %d, want %d", sent, count, n)
	}
	if len(byName["notifyd.deliver.slice"]) != n/10 {
		t.Errorf("%d slices, want %d", len(byName["notifyd.deliver.slice"]), n/10)
	}
	for _, s := range byName["notifyd.deliver.slice"] {
		if parentName(s) != "notifyd.deliver" {
			t.Errorf("a slice's parent is %q", parentName(s))
		}
	}
	if len(byName["notifyd.ratelimit.wait"]) != n/10 {
		t.Errorf("%d rate limit waits, want %d", len(byName["notifyd.ratelimit.wait"]), n/10)
	}
	for _, s := range byName["notifyd.ratelimit.wait"] {
		if parentName(s) != "notifyd.deliver.slice" {
			t.Errorf("a rate limit wait's parent is %q", parentName(s))
		}
	}
	sends := byName["notifyd.send"]
	if len(sends) != n/10 {
		t.Errorf("%d send spans, want %d", len(sends), n/10)
	}
	calls := 0
	for _, s := range spans {
		if s.SpanKind != trace.SpanKindClient {
			continue
		}
		calls++
		if parentName(s) != "notifyd.send" {
			t.Errorf("provider call %q's parent is %q", s.Name, parentName(s))
		}
	}
	if calls != len(sends) {
		t.Errorf("%d provider call spans for %d sends", calls, len(sends))
	}

	// What carried it: the W3C traceparent in each job's metadata.
	jobs := b.jobTraceparents(t)
	if len(jobs["notifyd.expand"]) != 1 || jobs["notifyd.expand"][0] != "00-"+callerTrace.String()+"-"+enqueue.SpanContext.SpanID().String()+"-01" {
		t.Errorf("expand job traceparent %q", jobs["notifyd.expand"])
	}
	for _, tp := range jobs["notifyd.deliver"] {
		if tp != "00-"+callerTrace.String()+"-"+expand.SpanContext.SpanID().String()+"-01" {
			t.Errorf("deliver job traceparent %q", tp)
		}
	}
}

// Without a tracer provider the same run stores no trace context in the jobs.
func TestTracingOffLeavesJobsBare(t *testing.T) {
	t.Parallel()
	b := setupTracing(t, false)
	b.createBroadcast(t, 10, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	jobs := b.jobTraceparents(t)
	if len(jobs["notifyd.expand"]) != 1 || len(jobs["notifyd.deliver"]) == 0 {
		t.Fatalf("jobs: %v", jobs)
	}
	for kind, tps := range jobs {
		for _, tp := range tps {
			if tp != "" {
				t.Errorf("%s job carries traceparent %q with tracing off", kind, tp)
			}
		}
	}
}

func attrOfSpan(s tracetest.SpanStub, key string) (int64, bool) {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value.AsInt64(), true
		}
	}
	return 0, false
}

func names(spans tracetest.SpanStubs) []string {
	out := make([]string, len(spans))
	for i, s := range spans {
		out[i] = s.Name
	}
	return out
}

// With tracing off, what the workers and the enqueuers add per job costs no
// allocation. Not parallel: AllocsPerRun needs the process to itself.
func TestTracingOffAllocatesNothingPerJob(t *testing.T) {
	q := &Queue{tracer: telemetry.Tracer(nil)}
	ctx := context.Background()
	job := &rivertype.JobRow{ID: 1, Attempt: 1, Queue: BulkQueue(notifier.ChannelEmail), Metadata: []byte(`{}`)}
	snooze := river.JobSnooze(time.Second)
	allocs := testing.AllocsPerRun(100, func() {
		jobCtx, span := q.startJobSpan(ctx, "notifyd.deliver", job)
		_ = telemetry.InjectTraceMetadata(jobCtx)
		partCtx, part := telemetry.StartSpan(jobCtx, "notifyd.deliver.slice", trace.SpanKindInternal)
		_, send := telemetry.StartSpan(partCtx, "notifyd.send", trace.SpanKindInternal)
		send.End()
		endJobSpan(part, snooze)
		endJobSpan(span, nil)
	})
	if allocs != 0 {
		t.Errorf("tracing off costs %.0f allocations per job", allocs)
	}
}
