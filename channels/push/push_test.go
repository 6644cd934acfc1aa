package push

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/notifyd/notifyd/channels/push/fcmfake"
	"github.com/notifyd/notifyd/notifier"
)

const testProject = "demo-project"

type testBundle struct {
	fake *fcmfake.Server
	url  string // the fake's root URL; the FCM endpoint is url + "/v1"
}

// setup starts a fake FCM server and a real Sender (real SDK) pointed at it.
// cfg's ProjectID, Credentials and Endpoint are filled in.
func setup(t *testing.T, cfg Config) (*Sender, *testBundle) {
	t.Helper()
	fake := fcmfake.NewServer(testProject)
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)

	cfg.ProjectID = testProject
	cfg.Credentials = CredentialsNone
	cfg.Endpoint = ts.URL + "/v1"
	s, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s, &testBundle{fake: fake, url: ts.URL}
}

func pushMsg(deliveryID, broadcastID int64, tokens ...string) notifier.Message {
	m := notifier.Message{
		DeliveryID: deliveryID,
		Push: &notifier.PushMessage{
			Tokens: tokens,
			Title:  "Title " + strconv.FormatInt(deliveryID, 10),
			Body:   "Body",
			Data:   map[string]string{"screen": "home"},
		},
	}
	if broadcastID == 0 {
		m.NotificationID = deliveryID + 1000
	} else {
		m.BroadcastID = broadcastID
	}
	return m
}

// sendOne sends a single message and checks the result shape.
func sendOne(t *testing.T, s *Sender, m notifier.Message) notifier.SendResult {
	t.Helper()
	res := s.Send(t.Context(), []notifier.Message{m})
	if len(res) != 1 {
		t.Fatalf("Send returned %d results, want 1", len(res))
	}
	if res[0].DeliveryID != m.DeliveryID {
		t.Fatalf("DeliveryID = %d, want %d", res[0].DeliveryID, m.DeliveryID)
	}
	return res[0]
}

func sendError(t *testing.T, res notifier.SendResult) *notifier.SendError {
	t.Helper()
	if res.Err == nil {
		t.Fatalf("delivery %d: Err = nil, want a failure", res.DeliveryID)
	}
	se, ok := res.Err.(*notifier.SendError)
	if !ok {
		t.Fatalf("Err is %T, want *notifier.SendError: %v", res.Err, res.Err)
	}
	return se
}

func TestSenderChannel(t *testing.T) {
	t.Parallel()
	s, _ := setup(t, Config{})
	if got := s.Name(); got != "push" {
		t.Errorf("Name() = %q, want push", got)
	}
	if got := s.MaxBatch(); got != 500 {
		t.Errorf("MaxBatch() = %d, want 500", got)
	}
}

func TestSendCarriesIdentity(t *testing.T) {
	t.Parallel()
	s, bundle := setup(t, Config{})

	msgs := []notifier.Message{pushMsg(1, 42, "tok-b"), pushMsg(2, 0, "tok-n")}
	res := s.Send(t.Context(), msgs)
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("delivery %d: %v", r.DeliveryID, r.Err)
		}
	}

	got := map[string]fcmfake.Message{}
	for _, m := range bundle.fake.Messages() {
		got[m.Token] = m
	}
	tests := []struct {
		token, providerID string
		wantData          map[string]string
		wantPriority      string
	}{
		{
			token: "tok-b", providerID: res[0].ProviderID, wantPriority: "normal",
			wantData: map[string]string{"screen": "home", "notifyd_delivery_id": "1", "notifyd_broadcast_id": "42"},
		},
		{
			token: "tok-n", providerID: res[1].ProviderID, wantPriority: "high",
			wantData: map[string]string{
				"screen": "home", "notifyd_delivery_id": "2", "notifyd_broadcast_id": "0", "notifyd_notification_id": "1002",
			},
		},
	}
	for _, tt := range tests {
		m, ok := got[tt.token]
		if !ok {
			t.Fatalf("fake got no message for %s", tt.token)
		}
		if m.Name != tt.providerID || tt.providerID == "" {
			t.Errorf("%s: ProviderID = %q, fake named it %q", tt.token, tt.providerID, m.Name)
		}
		if len(m.Data) != len(tt.wantData) {
			t.Errorf("%s: data = %v, want %v", tt.token, m.Data, tt.wantData)
		}
		for k, v := range tt.wantData {
			if m.Data[k] != v {
				t.Errorf("%s: data[%s] = %q, want %q", tt.token, k, m.Data[k], v)
			}
		}
		if m.AndroidPriority != tt.wantPriority {
			t.Errorf("%s: android priority = %q, want %q", tt.token, m.AndroidPriority, tt.wantPriority)
		}
		if m.Title == "" || m.Body != "Body" {
			t.Errorf("%s: notification = %q/%q", tt.token, m.Title, m.Body)
		}
	}
}

func TestSendMultiTokenOneUnregistered(t *testing.T) {
	t.Parallel()
	s, bundle := setup(t, Config{})
	bundle.fake.Unregister("tok-dead")

	res := sendOne(t, s, pushMsg(1, 9, "tok-a", "tok-dead", "tok-c", "tok-a", ""))
	if res.Err != nil {
		t.Fatalf("Err = %v, want sent", res.Err)
	}
	if len(res.DeadTokens) != 1 || res.DeadTokens[0] != "tok-dead" {
		t.Errorf("DeadTokens = %v, want [tok-dead]", res.DeadTokens)
	}
	// Blank and repeated tokens are not sent; tok-a's answer names the delivery.
	msgs := bundle.fake.Messages()
	if len(msgs) != 2 {
		t.Fatalf("fake accepted %d messages, want 2 (tok-a, tok-c)", len(msgs))
	}
	var nameA string
	for _, m := range msgs {
		if m.Token == "tok-a" {
			nameA = m.Name
		}
	}
	if res.ProviderID != nameA {
		t.Errorf("ProviderID = %q, want tok-a's message %q", res.ProviderID, nameA)
	}
	if n := len(bundle.fake.Requests()); n != 3 {
		t.Errorf("fake saw %d requests, want 3", n)
	}
}

func TestSendFailures(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		cfg     Config
		arrange func(f *fcmfake.Server)
		msg     notifier.Message

		wantClass      notifier.ErrorClass
		wantReason     string
		wantStatus     int
		wantRetryAfter time.Duration
		wantDead       int
		wantSent       bool
	}{
		{
			name:      "all tokens unregistered",
			arrange:   func(f *fcmfake.Server) { f.Unregister("t1"); f.Unregister("t2") },
			msg:       pushMsg(1, 1, "t1", "t2"),
			wantClass: notifier.Permanent, wantReason: "UNREGISTERED", wantStatus: 404, wantDead: 2,
		},
		{
			name:      "rate limited with Retry-After",
			arrange:   func(f *fcmfake.Server) { f.FailNext(1, 429, 7*time.Second) },
			msg:       pushMsg(1, 1, "t1"),
			wantClass: notifier.RateLimited, wantReason: "QUOTA_EXCEEDED", wantStatus: 429, wantRetryAfter: 7 * time.Second,
		},
		{
			name:      "rate limited without Retry-After waits a second",
			arrange:   func(f *fcmfake.Server) { f.SetBehavior(fcmfake.Behavior{RateLimitRate: 1}) },
			msg:       pushMsg(1, 1, "t1"),
			wantClass: notifier.RateLimited, wantReason: "QUOTA_EXCEEDED", wantStatus: 429, wantRetryAfter: time.Second,
		},
		{
			name:      "internal error",
			arrange:   func(f *fcmfake.Server) { f.SetBehavior(fcmfake.Behavior{FailRate500: 1}) },
			msg:       pushMsg(1, 1, "t1"),
			wantClass: notifier.Transient, wantReason: "INTERNAL", wantStatus: 500,
		},
		{
			// The SDK does not retry when Retry-After exceeds its 2 minute cap.
			name:      "unavailable with long Retry-After",
			arrange:   func(f *fcmfake.Server) { f.FailNext(5, 503, 5*time.Minute) },
			msg:       pushMsg(1, 1, "t1"),
			wantClass: notifier.Transient, wantReason: "UNAVAILABLE", wantStatus: 503, wantRetryAfter: 5 * time.Minute,
		},
		{
			// The SDK retries 503s itself (after 0s, 1s, 2s, 4s); the deadline ends that.
			name: "unavailable until the deadline",
			cfg:  Config{Timeout: 1500 * time.Millisecond},
			arrange: func(f *fcmfake.Server) {
				f.SetBehavior(fcmfake.Behavior{Status503Until: time.Now().Add(time.Hour)})
			},
			msg:       pushMsg(1, 1, "t1"),
			wantClass: notifier.Transient, wantReason: "timeout",
		},
		{
			name:     "one 503 is retried by the SDK",
			arrange:  func(f *fcmfake.Server) { f.FailNext(1, 503, 0) },
			msg:      pushMsg(1, 1, "t1"),
			wantSent: true,
		},
		{
			name:      "provider never answers",
			cfg:       Config{Timeout: 300 * time.Millisecond},
			arrange:   func(f *fcmfake.Server) { f.SetBehavior(fcmfake.Behavior{TimeoutRate: 1}) },
			msg:       pushMsg(1, 1, "t1"),
			wantClass: notifier.Transient, wantReason: "timeout",
		},
		{
			name:      "sender id mismatch",
			arrange:   func(f *fcmfake.Server) { f.FailNext(1, 403, 0) },
			msg:       pushMsg(1, 1, "t1"),
			wantClass: notifier.Permanent, wantReason: "SENDER_ID_MISMATCH", wantStatus: 403,
		},
		{
			name: "reserved data key is an invalid argument",
			msg: notifier.Message{DeliveryID: 1, BroadcastID: 1, Push: &notifier.PushMessage{
				Tokens: []string{"t1"}, Title: "x", Data: map[string]string{"from": "me"},
			}},
			wantClass: notifier.Permanent, wantReason: "INVALID_ARGUMENT", wantStatus: 400,
		},
		{
			name:      "no tokens",
			msg:       pushMsg(1, 1),
			wantClass: notifier.Permanent, wantReason: "no_device",
		},
		{
			name:      "only blank tokens",
			msg:       pushMsg(1, 1, "", "  "),
			wantClass: notifier.Permanent, wantReason: "no_device",
		},
		{
			name:      "no push content",
			msg:       notifier.Message{DeliveryID: 1, BroadcastID: 1},
			wantClass: notifier.Permanent, wantReason: "no_push_content",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, bundle := setup(t, tt.cfg)
			if tt.arrange != nil {
				tt.arrange(bundle.fake)
			}

			res := sendOne(t, s, tt.msg)
			if len(res.DeadTokens) != tt.wantDead {
				t.Errorf("DeadTokens = %v, want %d", res.DeadTokens, tt.wantDead)
			}
			if tt.wantSent {
				if res.Err != nil || res.ProviderID == "" {
					t.Fatalf("result = %+v, want sent", res)
				}
				return
			}
			se := sendError(t, res)
			if se.Class != tt.wantClass || se.Reason != tt.wantReason {
				t.Errorf("error = %s/%s, want %s/%s (%v)", se.Class, se.Reason, tt.wantClass, tt.wantReason, se)
			}
			if se.StatusCode != tt.wantStatus {
				t.Errorf("StatusCode = %d, want %d", se.StatusCode, tt.wantStatus)
			}
			if se.RetryAfter != tt.wantRetryAfter {
				t.Errorf("RetryAfter = %v, want %v", se.RetryAfter, tt.wantRetryAfter)
			}
			if res.ProviderID != "" {
				t.Errorf("ProviderID = %q for a failed delivery", res.ProviderID)
			}
			if n := bundle.fake.Count(); n != 0 {
				t.Errorf("fake accepted %d messages, want 0", n)
			}
		})
	}
}

func TestSendTimeoutIsBounded(t *testing.T) {
	t.Parallel()
	s, bundle := setup(t, Config{Timeout: 200 * time.Millisecond})
	bundle.fake.SetBehavior(fcmfake.Behavior{TimeoutRate: 1})

	msgs := make([]notifier.Message, 120)
	for i := range msgs {
		msgs[i] = pushMsg(int64(i+1), 1, fmt.Sprintf("tok-%d", i))
	}
	start := time.Now()
	res := s.Send(t.Context(), msgs)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Send took %v with a 200ms timeout", took)
	}
	for _, r := range res {
		if se := sendError(t, r); se.Class != notifier.Transient {
			t.Fatalf("delivery %d: class %s, want transient", r.DeliveryID, se.Class)
		}
	}
}

// A cancel while the requests are at FCM (a hard shutdown): FCM may have
// accepted them, so they are maybe sent (unknown), never retried. Requests the
// cancel kept from starting are not sent (TestSendCanceledContext).
func TestSendCanceledInFlight(t *testing.T) {
	t.Parallel()
	s, bundle := setup(t, Config{})
	bundle.fake.SetBehavior(fcmfake.Behavior{Delay: time.Minute})
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(300*time.Millisecond, cancel)
	res := s.Send(ctx, []notifier.Message{pushMsg(1, 1, "t1"), pushMsg(2, 1, "t2"), pushMsg(3, 1, "t3")})
	for _, r := range res {
		if se := sendError(t, r); se.Class != notifier.Transient || se.Reason != "canceled_after_send" || !se.MaybeSent {
			t.Errorf("delivery %d: %s/%s (maybe sent %v), want transient/canceled_after_send, maybe sent", r.DeliveryID, se.Class, se.Reason, se.MaybeSent)
		}
	}
}

// A batch that lost its send lock starts no request: notifier.GateTransport
// answers in FCM's place, the SDK does not retry that answer, and the messages
// are not sent, to be retried.
func TestSendWithAClosedSendGate(t *testing.T) {
	t.Parallel()
	s, bundle := setup(t, Config{HTTPClient: &http.Client{Transport: notifier.GateTransport(http.DefaultTransport.(*http.Transport).Clone())}})
	ctx := notifier.WithSendGate(t.Context(), func() bool { return false })
	start := time.Now()
	res := s.Send(ctx, []notifier.Message{pushMsg(1, 1, "t1"), pushMsg(2, 1, "t2")})
	for _, r := range res {
		if se := sendError(t, r); se.Class != notifier.Transient || se.Reason != "send_lock_lost" || se.MaybeSent {
			t.Errorf("delivery %d: %s/%s (maybe sent %v), want transient/send_lock_lost, not maybe sent", r.DeliveryID, se.Class, se.Reason, se.MaybeSent)
		}
	}
	if n := len(bundle.fake.Requests()); n != 0 {
		t.Errorf("fake saw %d requests, want 0", n)
	}
	// The SDK retries 500 and 503 after a backoff of half a second or more.
	if d := time.Since(start); d > 400*time.Millisecond {
		t.Errorf("Send took %s: the SDK retried the gate's answer", d)
	}
}

func TestSendCanceledContext(t *testing.T) {
	t.Parallel()
	s, bundle := setup(t, Config{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()

	res := s.Send(ctx, []notifier.Message{pushMsg(1, 1, "t1"), pushMsg(2, 1, "t2")})
	for _, r := range res {
		if se := sendError(t, r); se.Class != notifier.Transient || se.Reason != "canceled" {
			t.Errorf("delivery %d: %s/%s, want transient/canceled", r.DeliveryID, se.Class, se.Reason)
		}
	}
	if n := len(bundle.fake.Requests()); n != 0 {
		t.Errorf("fake saw %d requests after cancel, want 0", n)
	}
}

// checkAllSent checks every result is a distinct accepted message that the fake
// recorded with the right delivery id.
func checkAllSent(t *testing.T, msgs []notifier.Message, res []notifier.SendResult, fake *fcmfake.Server) {
	t.Helper()
	if len(res) != len(msgs) {
		t.Fatalf("got %d results for %d messages", len(res), len(msgs))
	}
	byName := map[string]fcmfake.Message{}
	for _, m := range fake.Messages() {
		byName[m.Name] = m
	}
	seen := map[string]bool{}
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("delivery %d: %v", r.DeliveryID, r.Err)
		}
		if r.DeliveryID != msgs[i].DeliveryID {
			t.Fatalf("result %d is for delivery %d, want %d", i, r.DeliveryID, msgs[i].DeliveryID)
		}
		if seen[r.ProviderID] {
			t.Fatalf("ProviderID %q returned twice", r.ProviderID)
		}
		seen[r.ProviderID] = true
		got, ok := byName[r.ProviderID]
		if !ok {
			t.Fatalf("delivery %d: fake has no message %q", r.DeliveryID, r.ProviderID)
		}
		if want := strconv.FormatInt(r.DeliveryID, 10); got.Data["notifyd_delivery_id"] != want {
			t.Fatalf("message %s carries delivery %q, want %s", r.ProviderID, got.Data["notifyd_delivery_id"], want)
		}
	}
}

func TestSend500Messages(t *testing.T) {
	t.Parallel()
	s, bundle := setup(t, Config{})

	msgs := make([]notifier.Message, 500)
	for i := range msgs {
		msgs[i] = pushMsg(int64(i+1), 5, fmt.Sprintf("tok-%d", i))
	}
	res := s.Send(t.Context(), msgs)
	checkAllSent(t, msgs, res, bundle.fake)
	if n := bundle.fake.Count(); n != 500 {
		t.Errorf("fake accepted %d messages, want 500", n)
	}
}

func TestSendMoreTokensThanOneSendEach(t *testing.T) {
	t.Parallel()
	s, bundle := setup(t, Config{})

	// 300 messages x 2 tokens = 600 requests: two SendEach rounds.
	msgs := make([]notifier.Message, 300)
	for i := range msgs {
		msgs[i] = pushMsg(int64(i+1), 5, fmt.Sprintf("a-%d", i), fmt.Sprintf("b-%d", i))
	}
	res := s.Send(t.Context(), msgs)
	checkAllSent(t, msgs, res, bundle.fake)
	if n := bundle.fake.Count(); n != 600 {
		t.Errorf("fake accepted %d messages, want 600", n)
	}
}

func TestConcurrentSends(t *testing.T) {
	t.Parallel()
	s, bundle := setup(t, Config{})

	const senders, perSend = 8, 50
	var wg sync.WaitGroup
	for g := range senders {
		wg.Go(func() {
			msgs := make([]notifier.Message, perSend)
			for i := range msgs {
				id := int64(g*perSend + i + 1)
				msgs[i] = pushMsg(id, int64(g+1), fmt.Sprintf("tok-%d", id))
			}
			res := s.Send(t.Context(), msgs)
			for _, r := range res {
				if r.Err != nil || r.ProviderID == "" {
					t.Errorf("delivery %d: %+v", r.DeliveryID, r)
				}
			}
		})
	}
	wg.Wait()

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := bundle.fake.WaitFor(ctx, senders*perSend); err != nil {
		t.Fatal(err)
	}
	if n := bundle.fake.Count(); n != senders*perSend {
		t.Errorf("fake accepted %d messages, want %d", n, senders*perSend)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{name: "fake", cfg: Config{ProjectID: "p", Credentials: "none", Endpoint: "http://127.0.0.1:1/v1"}},
		{name: "default endpoint", cfg: Config{ProjectID: "p", Credentials: "none"}},
		{name: "own client", cfg: Config{ProjectID: "p", Credentials: "none", HTTPClient: &http.Client{}}},
		{name: "no project", cfg: Config{Credentials: "none"}, wantErr: true},
		{name: "endpoint not a URL", cfg: Config{ProjectID: "p", Credentials: "none", Endpoint: "fcm.googleapis.com/v1"}, wantErr: true},
		{name: "client with a missing credentials file", cfg: Config{ProjectID: "p", Credentials: "/nonexistent/sa.json", HTTPClient: &http.Client{}}, wantErr: true},
		{name: "missing credentials file", cfg: Config{ProjectID: "p", Credentials: "/nonexistent/sa.json"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(t.Context(), tt.cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("New() error = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}

func TestEndpointTrailingSlash(t *testing.T) {
	t.Parallel()
	fake := fcmfake.NewServer(testProject)
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)

	s, err := New(t.Context(), Config{ProjectID: testProject, Credentials: CredentialsNone, Endpoint: ts.URL + "/v1/"})
	if err != nil {
		t.Fatal(err)
	}
	if res := sendOne(t, s, pushMsg(1, 1, "t1")); res.Err != nil {
		t.Fatalf("Err = %v", res.Err)
	}
}

func TestWrongProjectIsNotPermanent(t *testing.T) {
	t.Parallel()
	fake := fcmfake.NewServer("other-project")
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)

	s, err := New(t.Context(), Config{ProjectID: testProject, Credentials: CredentialsNone, Endpoint: ts.URL + "/v1"})
	if err != nil {
		t.Fatal(err)
	}
	se := sendError(t, sendOne(t, s, pushMsg(1, 1, "t1")))
	if se.Class != notifier.Transient || se.StatusCode != 404 {
		t.Errorf("error = %s/%s status %d, want transient 404", se.Class, se.Reason, se.StatusCode)
	}
}

func BenchmarkSendEach500(b *testing.B) {
	fake := fcmfake.NewServer(testProject)
	ts := httptest.NewServer(fake)
	b.Cleanup(ts.Close)
	s, err := New(b.Context(), Config{ProjectID: testProject, Credentials: CredentialsNone, Endpoint: ts.URL + "/v1"})
	if err != nil {
		b.Fatal(err)
	}
	msgs := make([]notifier.Message, 500)
	for i := range msgs {
		msgs[i] = pushMsg(int64(i+1), 1, fmt.Sprintf("tok-%d", i))
	}

	var sent int
	b.ResetTimer()
	for b.Loop() {
		for _, r := range s.Send(b.Context(), msgs) {
			if r.Err != nil {
				b.Fatalf("delivery %d: %v", r.DeliveryID, r.Err)
			}
			sent++
		}
		// Keep the fake's memory flat over long runs.
		fake.Reset()
	}
	b.ReportMetric(float64(sent)/b.Elapsed().Seconds(), "msgs/s")
}

func TestSendReusesConnections(t *testing.T) {
	t.Parallel()
	fake := fcmfake.NewServer(testProject)
	ts := httptest.NewUnstartedServer(fake)
	var mu sync.Mutex
	conns := 0
	ts.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	ts.Start()
	t.Cleanup(ts.Close)

	s, err := New(t.Context(), Config{ProjectID: testProject, Credentials: CredentialsNone, Endpoint: ts.URL + "/v1"})
	if err != nil {
		t.Fatal(err)
	}
	msgs := make([]notifier.Message, 500)
	for i := range msgs {
		msgs[i] = pushMsg(int64(i+1), 1, fmt.Sprintf("tok-%d", i))
	}
	for range 3 {
		checkAllSent(t, msgs, s.Send(t.Context(), msgs), fake)
	}

	// SendEach runs 50 requests at a time; with enough idle connections kept per
	// host, 1,500 requests need about that many connections, not one each.
	mu.Lock()
	defer mu.Unlock()
	if conns > 100 {
		t.Errorf("1500 requests opened %d connections, want <= 100", conns)
	}
	t.Logf("1500 requests over %d connections", conns)
}

// With real credentials (a service account here, its token endpoint a loopback
// fake) the SDK still sends through the given client's transport, with Google's
// authentication on top: the send gate sees every request whatever the
// credentials.
func TestSendWithServiceAccountThroughTheGivenTransport(t *testing.T) {
	t.Parallel()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"access_token":"token-from-the-fake","token_type":"Bearer","expires_in":3600}`)
	}))
	t.Cleanup(tokens.Close)
	account, err := json.Marshal(map[string]string{
		"type": "service_account", "project_id": testProject, "private_key_id": "k1",
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": "notifyd@" + testProject + ".iam.gserviceaccount.com", "client_id": "1",
		"token_uri": tokens.URL,
	})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "service-account.json")
	if err := os.WriteFile(path, account, 0o600); err != nil {
		t.Fatal(err)
	}

	fake := fcmfake.NewServer(testProject)
	var mu sync.Mutex
	var authorizations []string
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		authorizations = append(authorizations, r.Header.Get("Authorization"))
		mu.Unlock()
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	s, err := New(t.Context(), Config{ProjectID: testProject, Credentials: path, Endpoint: ts.URL + "/v1",
		HTTPClient: &http.Client{Transport: notifier.GateTransport(http.DefaultTransport.(*http.Transport).Clone())}})
	if err != nil {
		t.Fatal(err)
	}

	msgs := []notifier.Message{pushMsg(1, 1, "t1"), pushMsg(2, 1, "t2")}
	checkAllSent(t, msgs, s.Send(t.Context(), msgs), fake)
	mu.Lock()
	for i, a := range authorizations {
		if !strings.HasPrefix(a, "Bearer ") {
			t.Errorf("request %d: Authorization %q, want a bearer token", i, a)
		}
	}
	sent := len(authorizations)
	mu.Unlock()

	closed := notifier.WithSendGate(t.Context(), func() bool { return false })
	for _, r := range s.Send(closed, []notifier.Message{pushMsg(3, 1, "t3")}) {
		if se := sendError(t, r); se.Reason != "send_lock_lost" {
			t.Errorf("delivery %d under a closed gate: %s/%s, want send_lock_lost", r.DeliveryID, se.Class, se.Reason)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(authorizations) != sent {
		t.Errorf("the fake saw %d more requests under a closed gate", len(authorizations)-sent)
	}
}
