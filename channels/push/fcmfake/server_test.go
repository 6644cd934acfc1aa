package fcmfake

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
)

const project = "demo-project"

type testBundle struct {
	url string // root URL; the FCM endpoint is url + "/v1"
}

func setup(t *testing.T) (*Server, *testBundle) {
	t.Helper()
	srv := NewServer(project)
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return srv, &testBundle{url: ts.URL}
}

// errorBody is FCM's error JSON, as the SDK reads it.
type errorBody struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
		Details []struct {
			Type      string `json:"@type"`
			ErrorCode string `json:"errorCode"`
		} `json:"details"`
	} `json:"error"`
}

type answer struct {
	status     int
	retryAfter string
	body       []byte
}

func (a answer) name(t *testing.T) string {
	t.Helper()
	var v struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(a.body, &v); err != nil {
		t.Fatalf("success body %q: %v", a.body, err)
	}
	return v.Name
}

func (a answer) fcmError(t *testing.T) errorBody {
	t.Helper()
	var v errorBody
	if err := json.Unmarshal(a.body, &v); err != nil {
		t.Fatalf("error body %q: %v", a.body, err)
	}
	return v
}

func post(t *testing.T, url, body string) answer {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), body: b}
}

func sendURL(b *testBundle) string {
	return b.url + "/v1/projects/" + project + "/messages:send"
}

func tokenBody(token string) string {
	return `{"message":{"token":"` + token + `","notification":{"title":"T","body":"B"},` +
		`"data":{"notifyd_delivery_id":"1"},"android":{"priority":"high"},` +
		`"apns":{"headers":{"apns-priority":"10"}}}}`
}

func TestSendAccepted(t *testing.T) {
	t.Parallel()
	srv, b := setup(t)

	a := post(t, sendURL(b), tokenBody("tok-1"))
	if a.status != http.StatusOK {
		t.Fatalf("status %d: %s", a.status, a.body)
	}
	name := a.name(t)
	if !strings.HasPrefix(name, "projects/"+project+"/messages/") {
		t.Errorf("name = %q", name)
	}

	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("Messages() has %d, want 1", len(msgs))
	}
	m := msgs[0]
	if m.Name != name || m.Token != "tok-1" || m.Title != "T" || m.Body != "B" ||
		m.Data["notifyd_delivery_id"] != "1" || m.AndroidPriority != "high" || m.APNSHeaders["apns-priority"] != "10" {
		t.Errorf("recorded %+v", m)
	}
	if m.Start.IsZero() || m.End.Before(m.Start) {
		t.Errorf("times start=%v end=%v", m.Start, m.End)
	}
	reqs := srv.Requests()
	if len(reqs) != 1 || reqs[0].Status != http.StatusOK || reqs[0].Name != name {
		t.Errorf("Requests() = %+v", reqs)
	}
}

func TestSendErrors(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		arrange func(s *Server)
		url     func(b *testBundle) string
		body    string

		wantStatus     int
		wantCanonical  string
		wantCode       string // FcmError detail; "" for none
		wantRetryAfter string
	}{
		{
			name:       "unregistered token",
			arrange:    func(s *Server) { s.Unregister("dead") },
			body:       tokenBody("dead"),
			wantStatus: 404, wantCanonical: "NOT_FOUND", wantCode: "UNREGISTERED",
		},
		{
			name:       "blank token",
			body:       tokenBody(" "),
			wantStatus: 400, wantCanonical: "INVALID_ARGUMENT", wantCode: "INVALID_ARGUMENT",
		},
		{
			name:       "topic is not supported",
			body:       `{"message":{"topic":"news"}}`,
			wantStatus: 400, wantCanonical: "INVALID_ARGUMENT", wantCode: "INVALID_ARGUMENT",
		},
		{
			name:       "reserved data key",
			body:       `{"message":{"token":"t","data":{"google.x":"1"}}}`,
			wantStatus: 400, wantCanonical: "INVALID_ARGUMENT", wantCode: "INVALID_ARGUMENT",
		},
		{
			name:       "bad json",
			body:       `{"message":`,
			wantStatus: 400, wantCanonical: "INVALID_ARGUMENT",
		},
		{
			name:       "wrong project",
			url:        func(b *testBundle) string { return b.url + "/v1/projects/other/messages:send" },
			body:       tokenBody("t"),
			wantStatus: 404, wantCanonical: "NOT_FOUND",
		},
		{
			name:       "endpoint without /v1",
			url:        func(b *testBundle) string { return b.url + "/projects/" + project + "/messages:send" },
			body:       tokenBody("t"),
			wantStatus: 404, wantCanonical: "NOT_FOUND",
		},
		{
			name:       "fail next 429",
			arrange:    func(s *Server) { s.FailNext(1, 429, 1500*time.Millisecond) },
			body:       tokenBody("t"),
			wantStatus: 429, wantCanonical: "RESOURCE_EXHAUSTED", wantCode: "QUOTA_EXCEEDED", wantRetryAfter: "2",
		},
		{
			name:       "fail next 503",
			arrange:    func(s *Server) { s.FailNext(1, 503, 0) },
			body:       tokenBody("t"),
			wantStatus: 503, wantCanonical: "UNAVAILABLE", wantCode: "UNAVAILABLE",
		},
		{
			name:       "fail next 403",
			arrange:    func(s *Server) { s.FailNext(1, 403, 0) },
			body:       tokenBody("t"),
			wantStatus: 403, wantCanonical: "PERMISSION_DENIED", wantCode: "SENDER_ID_MISMATCH",
		},
		{
			name:       "500 rate",
			arrange:    func(s *Server) { s.SetBehavior(Behavior{FailRate500: 1}) },
			body:       tokenBody("t"),
			wantStatus: 500, wantCanonical: "INTERNAL", wantCode: "INTERNAL",
		},
		{
			name:       "rate limit rate",
			arrange:    func(s *Server) { s.SetBehavior(Behavior{RateLimitRate: 1, RetryAfter: 3 * time.Second}) },
			body:       tokenBody("t"),
			wantStatus: 429, wantCanonical: "RESOURCE_EXHAUSTED", wantCode: "QUOTA_EXCEEDED", wantRetryAfter: "3",
		},
		{
			name: "503 until later",
			arrange: func(s *Server) {
				s.SetBehavior(Behavior{Status503Until: time.Now().Add(time.Hour), RetryAfter: time.Second})
			},
			body:       tokenBody("t"),
			wantStatus: 503, wantCanonical: "UNAVAILABLE", wantCode: "UNAVAILABLE", wantRetryAfter: "1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, b := setup(t)
			if tt.arrange != nil {
				tt.arrange(srv)
			}
			url := sendURL(b)
			if tt.url != nil {
				url = tt.url(b)
			}

			a := post(t, url, tt.body)
			if a.status != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", a.status, tt.wantStatus, a.body)
			}
			e := a.fcmError(t)
			if e.Error.Code != tt.wantStatus || e.Error.Status != tt.wantCanonical || e.Error.Message == "" {
				t.Errorf("error = %+v", e.Error)
			}
			var code string
			if len(e.Error.Details) == 1 && e.Error.Details[0].Type == "type.googleapis.com/google.firebase.fcm.v1.FcmError" {
				code = e.Error.Details[0].ErrorCode
			}
			if code != tt.wantCode {
				t.Errorf("FcmError code = %q, want %q (details %+v)", code, tt.wantCode, e.Error.Details)
			}
			if a.retryAfter != tt.wantRetryAfter {
				t.Errorf("Retry-After = %q, want %q", a.retryAfter, tt.wantRetryAfter)
			}
			if n := srv.Count(); n != 0 {
				t.Errorf("Count() = %d after a rejected request", n)
			}
		})
	}
}

func TestFailNextCountsDown(t *testing.T) {
	t.Parallel()
	srv, b := setup(t)
	srv.FailNext(2, 500, 0)

	var statuses []int
	for range 3 {
		statuses = append(statuses, post(t, sendURL(b), tokenBody("t")).status)
	}
	if fmt.Sprint(statuses) != "[500 500 200]" {
		t.Errorf("statuses = %v, want [500 500 200]", statuses)
	}
	reqs := srv.Requests()
	if len(reqs) != 3 || reqs[0].ErrorCode != "INTERNAL" || reqs[2].Status != 200 {
		t.Errorf("Requests() = %+v", reqs)
	}
	if srv.Count() != 1 {
		t.Errorf("Count() = %d, want 1", srv.Count())
	}
}

func TestValidateOnlyIsNotDelivered(t *testing.T) {
	t.Parallel()
	srv, b := setup(t)
	a := post(t, sendURL(b), `{"validate_only":true,"message":{"token":"t"}}`)
	if a.status != 200 || a.name(t) == "" {
		t.Fatalf("answer %d %s", a.status, a.body)
	}
	if srv.Count() != 0 || len(srv.Requests()) != 1 {
		t.Errorf("Count() = %d, requests = %d; want 0, 1", srv.Count(), len(srv.Requests()))
	}
}

func TestRetentionAndObserver(t *testing.T) {
	t.Parallel()
	srv, b := setup(t)
	srv.SetRetention(2)
	var mu sync.Mutex
	var observed []string
	srv.SetObserver(func(m Message) {
		mu.Lock()
		observed = append(observed, m.Token)
		mu.Unlock()
	})
	for i := range 6 {
		if a := post(t, sendURL(b), tokenBody(fmt.Sprintf("tok-%d", i))); a.status != http.StatusOK {
			t.Fatalf("status %d: %s", a.status, a.body)
		}
	}
	// Neither observed nor counted: validate_only and a refused request.
	post(t, sendURL(b), `{"validate_only":true,"message":{"token":"t"}}`)
	post(t, sendURL(b), `{"message":{"token":""}}`)

	msgs := srv.Messages()
	if srv.Count() != 6 || len(msgs) < 2 || len(msgs) > 4 || msgs[len(msgs)-1].Token != "tok-5" {
		t.Fatalf("Count() = %d, kept %d messages (last %+v); want 6, the newest 2 to 4", srv.Count(), len(msgs), msgs)
	}
	if reqs := srv.Requests(); len(reqs) < 2 || len(reqs) > 4 {
		t.Errorf("kept %d requests, want 2 to 4", len(reqs))
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(observed) != "[tok-0 tok-1 tok-2 tok-3 tok-4 tok-5]" {
		t.Errorf("observed %v, want every accepted message in order", observed)
	}
}

func TestTimeoutRecordsUnansweredRequest(t *testing.T) {
	t.Parallel()
	srv, b := setup(t)
	srv.SetBehavior(Behavior{TimeoutRate: 1})

	client := &http.Client{Timeout: 100 * time.Millisecond}
	resp, err := client.Post(sendURL(b), "application/json", strings.NewReader(tokenBody("t")))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("got status %d, want a client timeout", resp.StatusCode)
	}

	// The fake records the request once it sees the client hang up.
	deadline := time.Now().Add(5 * time.Second)
	for len(srv.Requests()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	reqs := srv.Requests()
	if len(reqs) != 1 || reqs[0].Status != 0 || reqs[0].ErrorCode != "TIMEOUT" {
		t.Errorf("Requests() = %+v", reqs)
	}
	if srv.Count() != 0 {
		t.Errorf("Count() = %d", srv.Count())
	}
}

func TestDelay(t *testing.T) {
	t.Parallel()
	srv, b := setup(t)
	srv.SetBehavior(Behavior{Delay: 50 * time.Millisecond})
	start := time.Now()
	if a := post(t, sendURL(b), tokenBody("t")); a.status != 200 {
		t.Fatalf("status %d", a.status)
	}
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Errorf("answered after %v, want >= 50ms", took)
	}
}

func TestWaitForAndReset(t *testing.T) {
	t.Parallel()
	srv, b := setup(t)

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			resp, err := http.Post(sendURL(b), "application/json", strings.NewReader(tokenBody(fmt.Sprint("t", i))))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
		})
	}
	if err := srv.WaitFor(ctx, 20); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	short, cancelShort := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancelShort()
	if err := srv.WaitFor(short, 21); err == nil {
		t.Error("WaitFor(21) returned nil with 20 messages")
	}

	srv.Unregister("t0")
	srv.SetBehavior(Behavior{FailRate500: 1})
	srv.Reset()
	if srv.Count() != 0 || len(srv.Messages()) != 0 || len(srv.Requests()) != 0 {
		t.Errorf("after Reset: count %d, requests %d", srv.Count(), len(srv.Requests()))
	}
	if a := post(t, sendURL(b), tokenBody("t0")); a.status != 200 {
		t.Errorf("after Reset, t0 answered %d, want 200", a.status)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestViews(t *testing.T) {
	t.Parallel()
	srv, b := setup(t)
	for _, tok := range []string{"first", "second", "third"} {
		post(t, sendURL(b), tokenBody(tok))
	}
	post(t, sendURL(b), `{"message":{"token":"x","notification":{"title":"<script>alert(1)</script>"}}}`)
	if srv.Count() != 4 {
		t.Fatalf("Count() = %d", srv.Count())
	}

	status, body := get(t, b.url+"/_fake/messages?limit=2")
	if status != 200 {
		t.Fatalf("GET /_fake/messages: %d %s", status, body)
	}
	var list struct {
		Count    int       `json:"count"`
		Messages []Message `json:"messages"`
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatal(err)
	}
	if list.Count != 4 || len(list.Messages) != 2 || list.Messages[0].Token != "x" || list.Messages[1].Token != "third" {
		t.Errorf("list = %+v, want count 4 and [x third]", list)
	}

	if status, _ := get(t, b.url+"/_fake/messages?limit=zero"); status != http.StatusBadRequest {
		t.Errorf("bad limit answered %d", status)
	}

	status, page := get(t, b.url+"/_fake/")
	if status != 200 || !strings.Contains(page, "second") || !strings.Contains(page, "&lt;script&gt;") || strings.Contains(page, "<script>") {
		t.Errorf("GET /_fake/: %d\n%s", status, page)
	}
}
