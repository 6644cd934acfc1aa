package email

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/notifyd/notifyd/channels/email/sendgridfake"
	"github.com/notifyd/notifyd/notifier"
)

const testKey = "SG.test-key"

type testBundle struct {
	fake *sendgridfake.Server
	url  string
}

// setup starts a fake SendGrid on loopback and a Sender pointed at it.
func setup(t testing.TB, cfg Config) (*Sender, *testBundle) {
	t.Helper()
	fake := sendgridfake.New(testKey)
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)
	if cfg.APIKey == "" {
		cfg.APIKey = testKey
	}
	cfg.BaseURL = ts.URL
	if cfg.From == "" {
		cfg.From = "news@example.com"
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, &testBundle{fake: fake, url: ts.URL}
}

// messages makes n broadcast deliveries to distinct addresses; body(i) gives
// the text body of message i.
func messages(n int, body func(i int) string) []notifier.Message {
	out := make([]notifier.Message, n)
	for i := range n {
		out[i] = notifier.Message{
			DeliveryID:  int64(1000 + i),
			BroadcastID: 42,
			Category:    "news",
			Email: &notifier.EmailMessage{
				To:      fmt.Sprintf("user%d@example.com", i),
				Subject: fmt.Sprintf("Hello %d", i),
				Text:    body(i),
				HTML:    "<p>" + body(i) + "</p>",
				Headers: map[string]string{"List-Unsubscribe": fmt.Sprintf("<https://n.example.com/unsubscribe/%d>", i)},
			},
		}
	}
	return out
}

func sameBody(int) string { return "The same news for everyone." }

func ownBody(i int) string { return fmt.Sprintf("News for person %d.", i) }

// requireAccepted fails unless every result is a success with a provider id.
func requireAccepted(t *testing.T, msgs []notifier.Message, results []notifier.SendResult) {
	t.Helper()
	if len(results) != len(msgs) {
		t.Fatalf("%d results for %d messages", len(results), len(msgs))
	}
	for i, r := range results {
		if r.Err != nil || r.ProviderID == "" || r.DeliveryID != msgs[i].DeliveryID {
			t.Fatalf("result %d = %+v, want accepted delivery %d", i, r, msgs[i].DeliveryID)
		}
	}
}

// requireSendError fails unless every result carries a SendError of class and
// reason (a reason ending in "*" matches as a prefix), and returns the first.
func requireSendError(t *testing.T, results []notifier.SendResult, class notifier.ErrorClass, reason string) *notifier.SendError {
	t.Helper()
	var first *notifier.SendError
	for i, r := range results {
		var se *notifier.SendError
		if !errors.As(r.Err, &se) {
			t.Fatalf("result %d: err = %v, want a *notifier.SendError", i, r.Err)
		}
		match := se.Reason == reason
		if prefix, ok := strings.CutSuffix(reason, "*"); ok {
			match = strings.HasPrefix(se.Reason, prefix)
		}
		if se.Class != class || !match || r.ProviderID != "" {
			t.Fatalf("result %d: %v (class %s, reason %q), want class %s, reason %q", i, se, se.Class, se.Reason, class, reason)
		}
		if first == nil {
			first = se
		}
	}
	return first
}

func TestSendIdenticalBodiesIsOneRequest(t *testing.T) {
	t.Parallel()
	s, b := setup(t, Config{})
	msgs := messages(250, sameBody)
	results := s.Send(t.Context(), msgs)
	requireAccepted(t, msgs, results)

	reqs := b.fake.Requests()
	if len(reqs) != 1 || reqs[0].Personalizations != 250 {
		t.Fatalf("requests = %+v, want one with 250 personalizations", reqs)
	}
	got := b.fake.Messages()
	for i, m := range got {
		wantTo := fmt.Sprintf("user%d@example.com", i)
		if m.To != wantTo || m.Text != sameBody(0) || m.Subject != fmt.Sprintf("Hello %d", i) || m.MessageID != results[i].ProviderID {
			t.Fatalf("message %d = %+v", i, m)
		}
	}
}

func TestSendPerRecipientBodies(t *testing.T) {
	t.Parallel()
	s, b := setup(t, Config{FromName: "Example News"})
	msgs := messages(300, ownBody)
	msgs[5].BroadcastID, msgs[5].NotificationID, msgs[5].Category = 0, 77, ""
	results := s.Send(t.Context(), msgs)
	requireAccepted(t, msgs, results)

	if reqs := b.fake.Requests(); len(reqs) != 1 || reqs[0].Personalizations != 300 {
		t.Fatalf("requests = %+v, want one with 300 personalizations", reqs)
	}
	got := b.fake.Messages()
	if len(got) != len(msgs) {
		t.Fatalf("fake got %d messages, want %d", len(got), len(msgs))
	}
	for i, m := range got {
		want := msgs[i].Email
		if m.To != want.To || m.Subject != want.Subject || m.Text != want.Text || m.HTML != want.HTML {
			t.Fatalf("message %d arrived as {to %q subject %q text %q html %q}, want %+v", i, m.To, m.Subject, m.Text, m.HTML, want)
		}
		if m.Headers["List-Unsubscribe"] != want.Headers["List-Unsubscribe"] {
			t.Errorf("message %d List-Unsubscribe = %q", i, m.Headers["List-Unsubscribe"])
		}
		if m.From != "news@example.com" {
			t.Errorf("message %d from = %q", i, m.From)
		}
	}

	args := got[0].CustomArgs
	if args[argDeliveryID] != "1000" || args[argBroadcastID] != "42" || args[argCategory] != "news" || args[argNotificationID] != "" {
		t.Errorf("broadcast custom_args = %v", args)
	}
	args = got[5].CustomArgs
	if args[argDeliveryID] != "1005" || args[argBroadcastID] != "0" || args[argNotificationID] != "77" || args[argCategory] != "" {
		t.Errorf("notification custom_args = %v", args)
	}
}

func TestSendOversizeBodiesGoAlone(t *testing.T) {
	t.Parallel()
	s, b := setup(t, Config{})
	big := strings.Repeat("Long letter. ", 1000) // 13 kB: over the substitution limit
	msgs := messages(6, func(i int) string {
		if i < 2 {
			return big + fmt.Sprint(i)
		}
		return ownBody(i)
	})
	results := s.Send(t.Context(), msgs)
	requireAccepted(t, msgs, results)

	var sizes []int
	for _, r := range b.fake.Requests() {
		sizes = append(sizes, r.Personalizations)
	}
	if len(sizes) != 3 || strings.Count(fmt.Sprint(sizes), "1") != 2 || !strings.Contains(fmt.Sprint(sizes), "4") {
		t.Errorf("request sizes = %v, want two alone and one of 4", sizes)
	}
	byTo := make(map[string]sendgridfake.Message)
	for _, m := range b.fake.Messages() {
		byTo[m.To] = m
	}
	for _, m := range msgs {
		if got := byTo[m.Email.To]; got.Text != m.Email.Text || got.HTML != m.Email.HTML {
			t.Errorf("%s received a different body (%d bytes, want %d)", m.Email.To, len(got.Text), len(m.Email.Text))
		}
	}
}

func TestSendSplitsBatchesAndRepeatedAddresses(t *testing.T) {
	t.Parallel()
	s, b := setup(t, Config{})
	msgs := messages(2300, ownBody)
	msgs[1500].Email.To = msgs[10].Email.To // one person, two deliveries
	results := s.Send(t.Context(), msgs)
	requireAccepted(t, msgs, results)
	if n := b.fake.Count(); n != len(msgs) {
		t.Errorf("fake accepted %d, want %d", n, len(msgs))
	}
	for _, r := range b.fake.Requests() {
		if r.Status != http.StatusAccepted || r.Personalizations > 1000 {
			t.Errorf("request %+v", r)
		}
	}
}

func TestSendInvalidMessagesFailAlone(t *testing.T) {
	t.Parallel()
	s, b := setup(t, Config{})
	msgs := messages(5, ownBody)
	msgs[1].Email.To = "not an address"
	msgs[2].Email.To = "someone@localhost"
	msgs[3].Email = nil
	results := s.Send(t.Context(), msgs)
	requireAccepted(t, []notifier.Message{msgs[0], msgs[4]}, []notifier.SendResult{results[0], results[4]})
	requireSendError(t, results[1:3], notifier.Permanent, ReasonInvalidAddress)
	requireSendError(t, results[3:4], notifier.Permanent, ReasonInvalidMessage)
	if n := b.fake.Count(); n != 2 {
		t.Errorf("fake accepted %d, want 2", n)
	}
}

func TestSendErrorClasses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		cfg        Config
		inject     func(*sendgridfake.Server)
		class      notifier.ErrorClass
		reason     string
		status     int
		retryAfter time.Duration
		wantMsg    string // in the error text
	}{
		{name: "400", inject: func(f *sendgridfake.Server) { f.FailNext(1, 400, 0) },
			class: notifier.Permanent, reason: "sendgrid_400", status: 400, wantMsg: "injected failure"},
		{name: "401 wrong key", cfg: Config{APIKey: "SG.revoked"},
			class: notifier.Permanent, reason: "sendgrid_401", status: 401, wantMsg: "authorization grant is invalid"},
		{name: "403", inject: func(f *sendgridfake.Server) { f.FailNext(1, 403, 0) },
			class: notifier.Permanent, reason: "sendgrid_403", status: 403},
		{name: "413", inject: func(f *sendgridfake.Server) { f.FailNext(1, 413, 0) },
			class: notifier.Permanent, reason: "sendgrid_413", status: 413},
		{name: "429 with Retry-After", inject: func(f *sendgridfake.Server) {
			f.SetBehavior(sendgridfake.Behavior{RateLimitRate: 1, RetryAfter: 7 * time.Second})
		}, class: notifier.RateLimited, reason: "sendgrid_429", status: 429, retryAfter: 7 * time.Second},
		{name: "500", inject: func(f *sendgridfake.Server) { f.SetBehavior(sendgridfake.Behavior{FailRate500: 1}) },
			class: notifier.Transient, reason: "sendgrid_500", status: 500},
		{name: "503 with Retry-After", inject: func(f *sendgridfake.Server) {
			f.SetBehavior(sendgridfake.Behavior{Status503Until: time.Now().Add(time.Hour), RetryAfter: 3 * time.Second})
		}, class: notifier.Transient, reason: "sendgrid_503", status: 503, retryAfter: 3 * time.Second},
		{name: "timeout", cfg: Config{Timeout: 150 * time.Millisecond},
			inject: func(f *sendgridfake.Server) { f.SetBehavior(sendgridfake.Behavior{TimeoutRate: 1}) },
			class:  notifier.Transient, reason: ReasonTimeout + AfterSendSuffix},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, b := setup(t, tt.cfg)
			if tt.inject != nil {
				tt.inject(b.fake)
			}
			msgs := messages(20, ownBody)
			results := s.Send(t.Context(), msgs)
			se := requireSendError(t, results, tt.class, tt.reason)
			for i, r := range results {
				if r.Err != error(se) {
					t.Errorf("result %d has its own error; the messages of a failed request share one", i)
				}
			}
			if se.StatusCode != tt.status || se.RetryAfter != tt.retryAfter {
				t.Errorf("status %d, RetryAfter %s; want %d, %s", se.StatusCode, se.RetryAfter, tt.status, tt.retryAfter)
			}
			if !strings.Contains(se.Error(), tt.wantMsg) {
				t.Errorf("error %q does not contain %q", se.Error(), tt.wantMsg)
			}
			if n := b.fake.Count(); n != 0 {
				t.Errorf("fake accepted %d messages", n)
			}
		})
	}
}

func TestSendNetworkErrorBeforeSending(t *testing.T) {
	t.Parallel()
	// A port that was just free: the connection is refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s, err := New(Config{APIKey: testKey, BaseURL: "http://" + addr, From: "news@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	requireSendError(t, s.Send(t.Context(), messages(3, ownBody)), notifier.Transient, ReasonNetwork)
}

// A batch that lost its send lock starts no request: notifier.GateTransport
// answers in SendGrid's place, and the messages are not sent, to be retried.
func TestSendWithAClosedSendGate(t *testing.T) {
	t.Parallel()
	s, b := setup(t, Config{HTTPClient: &http.Client{Transport: notifier.GateTransport(http.DefaultTransport.(*http.Transport).Clone())}})
	ctx := notifier.WithSendGate(t.Context(), func() bool { return false })
	se := requireSendError(t, s.Send(ctx, messages(3, ownBody)), notifier.Transient, "send_lock_lost")
	if se.MaybeSent {
		t.Error("a request that never left is marked maybe sent")
	}
	if n := b.fake.Count(); n != 0 {
		t.Errorf("fake accepted %d messages", n)
	}
}

func TestSendCancelled(t *testing.T) {
	t.Parallel()
	t.Run("before sending", func(t *testing.T) {
		t.Parallel()
		s, b := setup(t, Config{})
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		requireSendError(t, s.Send(ctx, messages(3, ownBody)), notifier.Transient, ReasonCanceled+"*")
		if n := b.fake.Count(); n != 0 {
			t.Errorf("fake accepted %d messages", n)
		}
	})
	t.Run("in flight", func(t *testing.T) {
		t.Parallel()
		s, b := setup(t, Config{})
		b.fake.SetBehavior(sendgridfake.Behavior{Delay: time.Minute})
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(100*time.Millisecond, cancel)
		requireSendError(t, s.Send(ctx, messages(3, ownBody)), notifier.Transient, ReasonCanceled+AfterSendSuffix)
	})
}

func TestConcurrentSends(t *testing.T) {
	t.Parallel()
	s, b := setup(t, Config{})
	const senders, each = 8, 300
	var wg sync.WaitGroup
	results := make([][]notifier.SendResult, senders)
	batches := make([][]notifier.Message, senders)
	for g := range senders {
		batches[g] = messages(each, func(i int) string {
			if g%2 == 0 {
				return sameBody(i)
			}
			return ownBody(i)
		})
		for i := range batches[g] {
			batches[g][i].DeliveryID = int64(g*each + i)
			batches[g][i].Email.To = fmt.Sprintf("g%d-u%d@example.com", g, i)
		}
		wg.Go(func() { results[g] = s.Send(t.Context(), batches[g]) })
	}
	wg.Wait()
	for g := range senders {
		requireAccepted(t, batches[g], results[g])
	}
	seen := make(map[string]bool)
	for _, m := range b.fake.Messages() {
		id := m.CustomArgs[argDeliveryID]
		if seen[id] {
			t.Errorf("delivery %s arrived twice", id)
		}
		seen[id] = true
	}
	if len(seen) != senders*each {
		t.Errorf("%d deliveries arrived, want %d", len(seen), senders*each)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		wantURL string
		wantErr string
	}{
		{name: "defaults", cfg: Config{APIKey: "k", From: "n@example.com"}, wantURL: DefaultBaseURL},
		{name: "trailing slash", cfg: Config{APIKey: "k", From: "n@example.com", BaseURL: "http://127.0.0.1:9000/"}, wantURL: "http://127.0.0.1:9000"},
		{name: "no key", cfg: Config{From: "n@example.com"}, wantErr: "APIKey"},
		{name: "path", cfg: Config{APIKey: "k", From: "n@example.com", BaseURL: "https://api.sendgrid.com/v3"}, wantErr: "no path"},
		{name: "no scheme", cfg: Config{APIKey: "k", From: "n@example.com", BaseURL: "api.sendgrid.com"}, wantErr: "no path"},
		{name: "bad from", cfg: Config{APIKey: "k", From: "news"}, wantErr: "From"},
		{name: "negative timeout", cfg: Config{APIKey: "k", From: "n@example.com", Timeout: -time.Second}, wantErr: "Timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := New(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one about %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.baseURL != tt.wantURL || s.Name() != "email" || s.MaxBatch() != 1000 || s.timeout != DefaultTimeout {
				t.Errorf("sender = %+v", s)
			}
		})
	}
}

func TestClassifyResponse(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	hdr := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	sgErr := `{"errors":[{"message":"The subject is required.","field":"subject","help":null}]}`
	tests := []struct {
		name       string
		status     int
		header     http.Header
		body       string
		wantID     string
		class      notifier.ErrorClass
		retryAfter time.Duration
		wantMsg    string
	}{
		{name: "202", status: 202, header: hdr("X-Message-Id", "abc"), wantID: "abc"},
		{name: "400 with SendGrid errors", status: 400, body: sgErr, class: notifier.Permanent, wantMsg: "subject: The subject is required."},
		{name: "404", status: 404, body: "not found", class: notifier.Permanent, wantMsg: "not found"},
		{name: "429 seconds", status: 429, header: hdr("Retry-After", "12"), class: notifier.RateLimited, retryAfter: 12 * time.Second},
		{name: "429 date", status: 429, header: hdr("Retry-After", now.Add(90*time.Second).Format(http.TimeFormat)), class: notifier.RateLimited, retryAfter: 90 * time.Second},
		{name: "429 reset", status: 429, header: hdr("X-RateLimit-Reset", fmt.Sprint(now.Add(5*time.Second).Unix())), class: notifier.RateLimited, retryAfter: 5 * time.Second},
		{name: "429 reset in the past", status: 429, header: hdr("X-RateLimit-Reset", fmt.Sprint(now.Add(-5*time.Second).Unix())), class: notifier.RateLimited, retryAfter: time.Second},
		{name: "429 nothing", status: 429, class: notifier.RateLimited, retryAfter: time.Second},
		{name: "429 absurd", status: 429, header: hdr("Retry-After", "99999999999999"), class: notifier.RateLimited, retryAfter: maxRetryAfter},
		{name: "500", status: 500, class: notifier.Transient},
		{name: "502 retry-after", status: 502, header: hdr("Retry-After", "2"), class: notifier.Transient, retryAfter: 2 * time.Second},
		{name: "302", status: 302, class: notifier.Transient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.header == nil {
				tt.header = http.Header{}
			}
			id, se := classifyResponse(tt.status, tt.header, tt.body, now)
			if tt.class == 0 {
				if se != nil || id != tt.wantID {
					t.Fatalf("got %q, %v; want %q", id, se, tt.wantID)
				}
				return
			}
			if se == nil {
				t.Fatal("no error")
			}
			if se.Class != tt.class || se.RetryAfter != tt.retryAfter || se.StatusCode != tt.status || se.Reason != fmt.Sprintf("sendgrid_%d", tt.status) {
				t.Errorf("got %+v, want class %s, RetryAfter %s", se, tt.class, tt.retryAfter)
			}
			var apiErr *APIError
			if !errors.As(se, &apiErr) || !strings.Contains(se.Error(), tt.wantMsg) {
				t.Errorf("error %q: want an *APIError containing %q", se.Error(), tt.wantMsg)
			}
		})
	}
}

// BenchmarkSendBatch1000 measures the Sender and the fake together over
// loopback, 1000 messages per Send.
func BenchmarkSendBatch1000(b *testing.B) {
	for _, bc := range []struct {
		name string
		body func(int) string
	}{
		{"identical", sameBody},
		{"personalized", func(i int) string { return strings.Repeat("Personal news. ", 40) + ownBody(i) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s, tb := setup(b, Config{})
			tb.fake.SetRetention(1000)
			msgs := messages(1000, bc.body)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				for _, r := range s.Send(b.Context(), msgs) {
					if r.Err != nil {
						b.Fatal(r.Err)
					}
				}
			}
			b.ReportMetric(float64(b.N*len(msgs))/b.Elapsed().Seconds(), "msgs/s")
		})
		// As the workers run it: several Sends at once, using every core.
		b.Run(bc.name+"-parallel", func(b *testing.B) {
			s, tb := setup(b, Config{})
			tb.fake.SetRetention(1000)
			msgs := messages(1000, bc.body)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					for _, r := range s.Send(b.Context(), msgs) {
						if r.Err != nil {
							b.Error(r.Err)
							return
						}
					}
				}
			})
			b.ReportMetric(float64(b.N*len(msgs))/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
