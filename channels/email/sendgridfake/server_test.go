package sendgridfake_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/notifyd/notifyd/channels/email/sendgridfake"
)

const testKey = "SG.test-key"

type testBundle struct {
	fake *sendgridfake.Server
	url  string
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	fake := sendgridfake.New(testKey)
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)
	return &testBundle{fake: fake, url: ts.URL}
}

type answer struct {
	status int
	header http.Header
	errors []struct {
		Message string  `json:"message"`
		Field   *string `json:"field"`
		Help    *string `json:"help"`
	}
}

// post sends body to the mail send endpoint with key.
func post(t *testing.T, ctx context.Context, baseURL, key, body string) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+"/v3/mail/send", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	// A client of its own: httptest.Server.Close closes http.DefaultTransport's
	// idle connections, which broke a parallel test's request now and then.
	client := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := answer{status: resp.StatusCode, header: resp.Header}
	if resp.StatusCode == http.StatusAccepted {
		if len(raw) != 0 {
			t.Errorf("202 body = %q, want empty", raw)
		}
		return a
	}
	var parsed struct {
		Errors []struct {
			Message string  `json:"message"`
			Field   *string `json:"field"`
			Help    *string `json:"help"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(raw, &parsed); err != nil {
		t.Fatalf("error body %q is not SendGrid's error JSON: %v", raw, err)
	}
	if len(parsed.Errors) == 0 {
		t.Fatalf("error body %q has no errors", raw)
	}
	a.errors = parsed.Errors
	return a
}

// mailJSON builds a request body with one personalization per address.
func mailJSON(subject string, to ...string) string {
	ps := make([]string, len(to))
	for i, addr := range to {
		ps[i] = fmt.Sprintf(`{"to":[{"email":%q}],"subject":%q}`, addr, subject)
	}
	return `{"from":{"email":"news@example.com"},"personalizations":[` + strings.Join(ps, ",") +
		`],"content":[{"type":"text/plain","value":"hi"}]}`
}

func TestSendValidation(t *testing.T) {
	t.Parallel()
	many := make([]string, 1001)
	for i := range many {
		many[i] = fmt.Sprintf("u%d@example.com", i)
	}
	bigSubs := strings.Repeat("x", 10000)

	tests := []struct {
		name      string
		key       string
		body      string
		wantCode  int
		wantField string // of the first error; "" means null
	}{
		{name: "valid", key: testKey, body: mailJSON("Hi", "a@example.com", "b@example.com"), wantCode: 202},
		{name: "top-level subject", key: testKey, wantCode: 202,
			body: `{"from":{"email":"n@example.com"},"subject":"S","personalizations":[{"to":[{"email":"a@example.com"}]}],"content":[{"type":"text/plain","value":"x"},{"type":"text/html","value":"<p>x</p>"}]}`},
		{name: "template instead of content and subject", key: testKey, wantCode: 202,
			body: `{"from":{"email":"n@example.com"},"template_id":"d-1","personalizations":[{"to":[{"email":"a@example.com"}]}]}`},
		{name: "wrong key", key: "SG.other", body: mailJSON("Hi", "a@example.com"), wantCode: 401},
		{name: "no key", key: "", body: mailJSON("Hi", "a@example.com"), wantCode: 401},
		{name: "not JSON", key: testKey, body: `{"from":`, wantCode: 400},
		{name: "custom arg not a string", key: testKey, wantCode: 400,
			body: `{"from":{"email":"n@example.com"},"personalizations":[{"to":[{"email":"a@example.com"}],"subject":"S","custom_args":{"id":1}}],"content":[{"type":"text/plain","value":"x"}]}`},
		{name: "no from", key: testKey, wantCode: 400, wantField: "from.email",
			body: `{"personalizations":[{"to":[{"email":"a@example.com"}],"subject":"S"}],"content":[{"type":"text/plain","value":"x"}]}`},
		{name: "no personalizations", key: testKey, wantCode: 400, wantField: "personalizations",
			body: `{"from":{"email":"n@example.com"},"subject":"S","content":[{"type":"text/plain","value":"x"}]}`},
		{name: "1001 personalizations", key: testKey, body: mailJSON("Hi", many...), wantCode: 400, wantField: "personalizations"},
		{name: "empty to", key: testKey, wantCode: 400, wantField: "personalizations.0.to",
			body: `{"from":{"email":"n@example.com"},"personalizations":[{"to":[],"subject":"S"}],"content":[{"type":"text/plain","value":"x"}]}`},
		{name: "invalid to", key: testKey, body: mailJSON("Hi", "a@example.com", "not-an-address"), wantCode: 400, wantField: "personalizations.1.to.0.email"},
		{name: "dotless domain", key: testKey, body: mailJSON("Hi", "a@localhost"), wantCode: 400, wantField: "personalizations.0.to.0.email"},
		{name: "duplicate address", key: testKey, body: mailJSON("Hi", "a@example.com", "A@Example.com"), wantCode: 400, wantField: "personalizations.1.to.0.email"},
		{name: "no subject anywhere", key: testKey, wantCode: 400, wantField: "subject",
			body: `{"from":{"email":"n@example.com"},"personalizations":[{"to":[{"email":"a@example.com"}],"subject":"S"},{"to":[{"email":"b@example.com"}]}],"content":[{"type":"text/plain","value":"x"}]}`},
		{name: "no content", key: testKey, wantCode: 400, wantField: "content",
			body: `{"from":{"email":"n@example.com"},"personalizations":[{"to":[{"email":"a@example.com"}],"subject":"S"}]}`},
		{name: "empty content value", key: testKey, wantCode: 400, wantField: "content.0.value",
			body: `{"from":{"email":"n@example.com"},"personalizations":[{"to":[{"email":"a@example.com"}],"subject":"S"}],"content":[{"type":"text/plain","value":""}]}`},
		{name: "html before text", key: testKey, wantCode: 400, wantField: "content.1.type",
			body: `{"from":{"email":"n@example.com"},"personalizations":[{"to":[{"email":"a@example.com"}],"subject":"S"}],"content":[{"type":"text/html","value":"<p>x</p>"},{"type":"text/plain","value":"x"}]}`},
		{name: "substitutions of 10,000 bytes", key: testKey, wantCode: 400, wantField: "personalizations.0.substitutions",
			body: `{"from":{"email":"n@example.com"},"personalizations":[{"to":[{"email":"a@example.com"}],"subject":"S","substitutions":{"-k-":"` + bigSubs[:10000-3] + `"}}],"content":[{"type":"text/plain","value":"-k-"}]}`},
		{name: "substitutions just under the limit", key: testKey, wantCode: 202,
			body: `{"from":{"email":"n@example.com"},"personalizations":[{"to":[{"email":"a@example.com"}],"subject":"S","substitutions":{"-k-":"` + bigSubs[:10000-4] + `"}}],"content":[{"type":"text/plain","value":"-k-"}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			a := post(t, t.Context(), b.url, tt.key, tt.body)
			if a.status != tt.wantCode {
				t.Fatalf("status = %d, want %d (errors %+v)", a.status, tt.wantCode, a.errors)
			}
			reqs := b.fake.Requests()
			if len(reqs) != 1 || reqs[0].Status != tt.wantCode {
				t.Fatalf("requests = %+v, want one with status %d", reqs, tt.wantCode)
			}
			if tt.wantCode == http.StatusAccepted {
				if id := a.header.Get("X-Message-Id"); len(id) != 22 || reqs[0].MessageID != id {
					t.Errorf("X-Message-Id = %q (recorded %q), want 22 characters", id, reqs[0].MessageID)
				}
				return
			}
			if n := b.fake.Count(); n != 0 {
				t.Errorf("Count = %d after a rejected request, want 0", n)
			}
			first := a.errors[0]
			field := ""
			if first.Field != nil {
				field = *first.Field
			}
			if field != tt.wantField || first.Message == "" || first.Help != nil {
				t.Errorf("first error = {field %q, message %q, help %v}, want field %q", field, first.Message, first.Help, tt.wantField)
			}
		})
	}
}

func TestRecordsWhatRecipientsReceive(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := `{
		"from": {"email": "news@example.com", "name": "News"},
		"headers": {"X-Campaign": "spring"},
		"categories": ["bulk"],
		"custom_args": {"tenant": "t1"},
		"content": [{"type": "text/plain", "value": "Hello -name-, -name-!"}, {"type": "text/html", "value": "<p>-body-</p>"}],
		"personalizations": [
			{"to": [{"email": "ann@example.com", "name": "Ann"}], "subject": "For -name-",
			 "substitutions": {"-name-": "Ann", "-body-": "ann's body", "-name": "never"},
			 "headers": {"List-Unsubscribe": "<https://x/u/1>"}, "custom_args": {"notifyd_delivery_id": "1"}},
			{"to": [{"email": "bob@example.com"}, {"email": "cy@example.com"}], "subject": "Plain",
			 "custom_args": {"notifyd_delivery_id": "2"}}
		]}`
	a := post(t, t.Context(), b.url, testKey, body)
	if a.status != http.StatusAccepted {
		t.Fatalf("status %d: %+v", a.status, a.errors)
	}
	msgs := b.fake.Messages()
	if len(msgs) != 3 || b.fake.Count() != 3 {
		t.Fatalf("got %d messages (Count %d), want 3", len(msgs), b.fake.Count())
	}
	ann, bob, cy := msgs[0], msgs[1], msgs[2]
	checks := []struct{ name, got, want string }{
		{"ann to", ann.To, "ann@example.com"},
		{"ann name", ann.ToName, "Ann"},
		{"ann from", ann.From, "news@example.com"},
		{"ann subject", ann.Subject, "For Ann"},
		{"ann text", ann.Text, "Hello Ann, Ann!"},
		{"ann html", ann.HTML, "<p>ann's body</p>"},
		{"ann unsubscribe", ann.Headers["List-Unsubscribe"], "<https://x/u/1>"},
		{"ann campaign header", ann.Headers["X-Campaign"], "spring"},
		{"ann delivery", ann.CustomArgs["notifyd_delivery_id"], "1"},
		{"ann tenant", ann.CustomArgs["tenant"], "t1"},
		{"bob subject", bob.Subject, "Plain"},
		{"bob text", bob.Text, "Hello -name-, -name-!"},
		{"bob delivery", bob.CustomArgs["notifyd_delivery_id"], "2"},
		{"cy to", cy.To, "cy@example.com"},
		{"message id", bob.MessageID, a.header.Get("X-Message-Id")},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if len(ann.Categories) != 1 || ann.Categories[0] != "bulk" {
		t.Errorf("categories = %v, want [bulk]", ann.Categories)
	}
	if ann.RequestSeq != 1 || ann.RequestStart.IsZero() || ann.ReceivedAt.Before(ann.RequestStart) {
		t.Errorf("request seq/start/received = %d/%v/%v", ann.RequestSeq, ann.RequestStart, ann.ReceivedAt)
	}
	reqs := b.fake.Requests()
	if len(reqs) != 1 || reqs[0].Personalizations != 2 || reqs[0].Recipients != 3 || reqs[0].End.Before(reqs[0].Start) {
		t.Errorf("requests = %+v, want one with 2 personalizations and 3 recipients", reqs)
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	body := mailJSON("Hi", "a@example.com")
	tests := []struct {
		name       string
		inject     func(*sendgridfake.Server)
		wantStatus int
		wantHeader map[string]string
		wantFault  string
	}{
		{name: "fail next with retry-after", wantStatus: 503, wantFault: "fail_next",
			inject:     func(f *sendgridfake.Server) { f.FailNext(1, 503, 2500*time.Millisecond) },
			wantHeader: map[string]string{"Retry-After": "3"}},
		{name: "fail next 413", wantStatus: 413, wantFault: "fail_next",
			inject: func(f *sendgridfake.Server) { f.FailNext(1, 413, 0) }},
		{name: "503 window", wantStatus: 503, wantFault: "status_503",
			inject: func(f *sendgridfake.Server) {
				f.SetBehavior(sendgridfake.Behavior{Status503Until: time.Now().Add(time.Hour), RetryAfter: time.Second})
			},
			wantHeader: map[string]string{"Retry-After": "1"}},
		{name: "503 window over", wantStatus: 202,
			inject: func(f *sendgridfake.Server) {
				f.SetBehavior(sendgridfake.Behavior{Status503Until: time.Now().Add(-time.Second)})
			}},
		{name: "500", wantStatus: 500, wantFault: "fail_500",
			inject: func(f *sendgridfake.Server) { f.SetBehavior(sendgridfake.Behavior{FailRate500: 1}) }},
		{name: "429", wantStatus: 429, wantFault: "rate_limit",
			inject: func(f *sendgridfake.Server) {
				f.SetBehavior(sendgridfake.Behavior{RateLimitRate: 1, RetryAfter: 4 * time.Second})
			},
			wantHeader: map[string]string{"Retry-After": "4", "X-RateLimit-Remaining": "0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			tt.inject(b.fake)
			a := post(t, t.Context(), b.url, testKey, body)
			if a.status != tt.wantStatus {
				t.Fatalf("status = %d, want %d", a.status, tt.wantStatus)
			}
			for k, v := range tt.wantHeader {
				if got := a.header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			wantCount := 0
			if tt.wantStatus == http.StatusAccepted {
				wantCount = 1
			}
			if got := b.fake.Count(); got != wantCount {
				t.Errorf("Count = %d, want %d", got, wantCount)
			}
			reqs := b.fake.Requests()
			if len(reqs) != 1 || reqs[0].Fault != tt.wantFault || reqs[0].Status != tt.wantStatus {
				t.Errorf("requests = %+v, want one with fault %q", reqs, tt.wantFault)
			}
		})
	}
}

func TestFailNextQueuesThenRecovers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.fake.FailNext(2, 500, 0)
	b.fake.FailNext(1, 429, time.Second)
	var got []int
	for range 4 {
		got = append(got, post(t, t.Context(), b.url, testKey, mailJSON("Hi", "a@example.com")).status)
	}
	want := []int{500, 500, 429, 202}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("statuses = %v, want %v", got, want)
	}
}

func TestAuthIsCheckedBeforeFaults(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.fake.FailNext(1, 500, 0)
	if a := post(t, t.Context(), b.url, "SG.wrong", mailJSON("Hi", "a@example.com")); a.status != 401 {
		t.Errorf("status = %d, want 401", a.status)
	}
	if a := post(t, t.Context(), b.url, testKey, mailJSON("Hi", "a@example.com")); a.status != 500 {
		t.Errorf("status = %d, want the queued 500", a.status)
	}
}

func TestTimeoutHangsUntilClientGivesUp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.fake.SetBehavior(sendgridfake.Behavior{TimeoutRate: 1})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.url+"/v3/mail/send", strings.NewReader(mailJSON("Hi", "a@example.com")))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testKey)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("got status %d, want the client to time out", resp.StatusCode)
	}
	// The handler records the request once it sees the client gone.
	deadline := time.Now().Add(5 * time.Second)
	for len(b.fake.Requests()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	reqs := b.fake.Requests()
	if len(reqs) != 1 || reqs[0].Status != 0 || reqs[0].Fault != "timeout" {
		t.Errorf("requests = %+v, want one unanswered timeout", reqs)
	}
	if b.fake.Count() != 0 {
		t.Errorf("Count = %d, want 0", b.fake.Count())
	}
}

func TestDelay(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.fake.SetBehavior(sendgridfake.Behavior{Delay: 50 * time.Millisecond})
	start := time.Now()
	if a := post(t, t.Context(), b.url, testKey, mailJSON("Hi", "a@example.com")); a.status != 202 {
		t.Fatalf("status = %d", a.status)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("answered after %s, want at least the 50ms delay", d)
	}
}

func TestWaitFor(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Not post: t.Fatal must not be called from another goroutine.
	go func() {
		for i := range 3 {
			time.Sleep(10 * time.Millisecond)
			req, _ := http.NewRequest(http.MethodPost, b.url+"/v3/mail/send",
				strings.NewReader(mailJSON("Hi", fmt.Sprintf("u%d@example.com", i), fmt.Sprintf("v%d@example.com", i))))
			req.Header.Set("Authorization", "Bearer "+testKey)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := b.fake.WaitFor(ctx, 6); err != nil {
		t.Fatal(err)
	}

	short, cancel2 := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel2()
	if err := b.fake.WaitFor(short, 7); err == nil {
		t.Error("WaitFor(7) returned nil, want a deadline error")
	}
}

func TestResetAndRetention(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.fake.SetRetention(3)
	var mu sync.Mutex
	var observed []string
	b.fake.SetObserver(func(m sendgridfake.Message) {
		mu.Lock()
		observed = append(observed, m.To)
		mu.Unlock()
	})
	for i := range 5 {
		post(t, t.Context(), b.url, testKey, mailJSON(fmt.Sprint(i), fmt.Sprintf("u%d@example.com", i), fmt.Sprintf("v%d@example.com", i)))
	}
	msgs := b.fake.Messages()
	if len(msgs) != 3 || b.fake.Count() != 10 {
		t.Fatalf("retained %d (Count %d), want 3 of 10", len(msgs), b.fake.Count())
	}
	if msgs[2].To != "v4@example.com" || msgs[0].To != "v3@example.com" {
		t.Errorf("retained %s..%s, want the newest three", msgs[0].To, msgs[2].To)
	}
	mu.Lock()
	if len(observed) != 10 || observed[0] != "u0@example.com" || observed[9] != "v4@example.com" {
		t.Errorf("observed %v, want all 10 accepted messages in order", observed)
	}
	mu.Unlock()
	b.fake.Reset()
	if b.fake.Count() != 0 || len(b.fake.Messages()) != 0 || len(b.fake.Requests()) != 0 {
		t.Error("Reset left records behind")
	}
}

func TestViews(t *testing.T) {
	t.Parallel()
	b := setup(t)
	post(t, t.Context(), b.url, testKey, mailJSON("First", "a@example.com"))
	post(t, t.Context(), b.url, testKey, mailJSON("<b>Second</b>", "b@example.com"))

	get := func(path string) (string, string) {
		t.Helper()
		resp, err := http.Get(b.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
		}
		return resp.Header.Get("Content-Type"), string(body)
	}

	ct, body := get("/_fake/messages?limit=1")
	var msgs []sendgridfake.Message
	if err := json.Unmarshal([]byte(body), &msgs); err != nil || !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("messages JSON (%s): %v", ct, err)
	}
	if len(msgs) != 1 || msgs[0].Subject != "<b>Second</b>" {
		t.Errorf("messages?limit=1 = %+v, want the newest only", msgs)
	}

	ct, body = get("/_fake/")
	if !strings.HasPrefix(ct, "text/html") || !strings.Contains(body, "a@example.com") ||
		!strings.Contains(body, "&lt;b&gt;Second&lt;/b&gt;") || strings.Index(body, "b@example.com") > strings.Index(body, "a@example.com") {
		t.Errorf("page does not list both emails, escaped, newest first:\n%s", body)
	}
}

func TestListen(t *testing.T) {
	t.Parallel()
	fake := sendgridfake.New(testKey)
	baseURL, closeFn, err := fake.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if a := post(t, t.Context(), baseURL, testKey, mailJSON("Hi", "a@example.com")); a.status != 202 {
		t.Errorf("status = %d, want 202", a.status)
	}
	if err := closeFn(); err != nil {
		t.Fatal(err)
	}
}
