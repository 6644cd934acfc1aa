// Package fcmfake is a fake Firebase Cloud Messaging HTTP v1 server. It speaks the
// wire format firebase-admin-go's messaging client uses, so tests and `notifyd dev`
// run the real SDK against it:
//
//	srv := fcmfake.NewServer("demo-project")
//	ts := httptest.NewServer(srv)
//	// messaging endpoint, as option.WithEndpoint takes it: ts.URL + "/v1"
//
// The SDK posts to {endpoint}/projects/{project}/messages:send, so the fake answers
// POST /v1/projects/{project}/messages:send with {"name": "projects/{project}/messages/{id}"},
// or with FCM's error JSON (status plus a google.firebase.fcm.v1.FcmError detail) so that
// the SDK's own error helpers (messaging.IsUnregistered, ...) classify the answer.
//
// GET /_fake/messages and GET /_fake/ show what was received, for a developer.
package fcmfake

import (
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
)

// Message is one message the fake accepted.
type Message struct {
	Name         string            `json:"name"` // projects/{project}/messages/{id}
	Token        string            `json:"token"`
	Title        string            `json:"title,omitempty"`
	Body         string            `json:"body,omitempty"`
	Data         map[string]string `json:"data,omitempty"`
	ValidateOnly bool              `json:"validate_only,omitempty"`
	// AndroidPriority is android.priority ("high", "normal" or "").
	AndroidPriority string `json:"android_priority,omitempty"`
	// APNSHeaders are apns.headers, e.g. apns-priority and apns-push-type.
	APNSHeaders map[string]string `json:"apns_headers,omitempty"`
	// Start and End are when the request that carried the message arrived and was answered.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// RequestRecord is one HTTP request to the send endpoint, accepted or not.
type RequestRecord struct {
	Start time.Time
	End   time.Time
	// Status is the HTTP status answered; 0 when the fake simulated a timeout and
	// the client gave up before an answer.
	Status int
	Token  string
	// Name is the message name for an accepted message.
	Name string
	// ErrorCode is the FCM error code (UNREGISTERED, QUOTA_EXCEEDED, ...) or the
	// canonical status when FCM sends no FcmError detail.
	ErrorCode string
}

// Behavior injects faults into every request to the send endpoint. Rates are
// probabilities in [0, 1] and are tried in the order of the fields below.
type Behavior struct {
	// Delay is added before any answer.
	Delay time.Duration
	// Status503Until answers 503 UNAVAILABLE to every request until that time.
	Status503Until time.Time
	// TimeoutRate holds requests without an answer until the client gives up.
	TimeoutRate float64
	// RateLimitRate answers 429 QUOTA_EXCEEDED.
	RateLimitRate float64
	// FailRate500 answers 500 INTERNAL.
	FailRate500 float64
	// RetryAfter, when positive, is sent as Retry-After (whole seconds, rounded
	// up) with 429 and 503 answers.
	RetryAfter time.Duration
}

// Server is the fake. It is an http.Handler and safe for concurrent use.
type Server struct {
	projectID string
	mux       *http.ServeMux
	page      *template.Template

	mu           sync.Mutex
	msgs         []Message
	reqs         []RequestRecord
	count        int // messages accepted, retained or not
	retain       int // keep only the newest retain messages and requests (0: all)
	observe      func(Message)
	unregistered map[string]struct{}
	behavior     Behavior
	failNext     failNext
	nextID       int64
	// changed is closed (and cleared) when a message is recorded; it exists only
	// while someone waits in WaitFor, so the hot path allocates nothing for it.
	changed chan struct{}
}

type failNext struct {
	n          int
	status     int
	retryAfter time.Duration
}

// timeoutHang bounds how long a simulated timeout holds a request whose client
// never gives up, so a server shutdown is not blocked forever.
const timeoutHang = 2 * time.Minute

// NewServer returns a fake FCM server for projectID.
func NewServer(projectID string) *Server {
	s := &Server{
		projectID:    projectID,
		unregistered: make(map[string]struct{}),
		page:         template.Must(template.New("page").Parse(pageHTML)),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/projects/{project}/messages:send", s.handleSend)
	mux.HandleFunc("GET /_fake/messages", s.handleMessagesJSON)
	mux.HandleFunc("GET /_fake/{$}", s.handleMessagesHTML)
	mux.HandleFunc("/", s.handleNotFound)
	s.mux = mux
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// Unregister makes the fake answer UNREGISTERED for token from now on.
func (s *Server) Unregister(token string) {
	s.mu.Lock()
	s.unregistered[token] = struct{}{}
	s.mu.Unlock()
}

// SetBehavior replaces the injected faults.
func (s *Server) SetBehavior(b Behavior) {
	s.mu.Lock()
	s.behavior = b
	s.mu.Unlock()
}

// FailNext answers the next n send requests with status (and an FCM error body
// matching it: 400 INVALID_ARGUMENT, 401 THIRD_PARTY_AUTH_ERROR, 403
// SENDER_ID_MISMATCH, 404 UNREGISTERED, 429 QUOTA_EXCEEDED, 500 INTERNAL, 503
// UNAVAILABLE), with Retry-After when retryAfter is positive. It goes before Behavior.
func (s *Server) FailNext(n int, status int, retryAfter time.Duration) {
	s.mu.Lock()
	s.failNext = failNext{n: n, status: status, retryAfter: retryAfter}
	s.mu.Unlock()
}

// SetRetention keeps only the newest n messages and n requests (0: all, the
// default). Count and WaitFor still see every accepted message; for long runs
// and benchmarks, where a million kept messages would weigh on the process.
func (s *Server) SetRetention(n int) {
	s.mu.Lock()
	s.retain = n
	s.trimLocked()
	s.mu.Unlock()
}

// SetObserver calls observe with every message accepted from now on (not
// validate_only ones), after it is recorded and before the answer is sent.
// It runs on the request's goroutine, so it must be quick and safe for
// concurrent use. Benchmarks count what arrived with it, without keeping it.
func (s *Server) SetObserver(observe func(Message)) {
	s.mu.Lock()
	s.observe = observe
	s.mu.Unlock()
}

// Messages returns the retained accepted messages, oldest first. The Data and
// APNSHeaders maps are shared with the fake and must not be modified.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.msgs))
	copy(out, s.msgs)
	return out
}

// Count returns how many messages were accepted.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// Requests returns the retained requests to the send endpoint, in the order
// they were answered.
func (s *Server) Requests() []RequestRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]RequestRecord, len(s.reqs))
	copy(out, s.reqs)
	return out
}

// trimLocked drops old messages and requests beyond the retention, in steps,
// so that appends stay amortised O(1).
func (s *Server) trimLocked() {
	if s.retain <= 0 {
		return
	}
	if len(s.msgs) > 2*s.retain {
		s.msgs = append(make([]Message, 0, 2*s.retain), s.msgs[len(s.msgs)-s.retain:]...)
	}
	if len(s.reqs) > 2*s.retain {
		s.reqs = append(make([]RequestRecord, 0, 2*s.retain), s.reqs[len(s.reqs)-s.retain:]...)
	}
}

// Reset forgets recorded messages and requests, unregistered tokens and injected faults.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = nil
	s.reqs = nil
	s.count = 0
	s.unregistered = make(map[string]struct{})
	s.behavior = Behavior{}
	s.failNext = failNext{}
}

// WaitFor blocks until at least n messages were accepted or ctx is done.
func (s *Server) WaitFor(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		if s.count >= n {
			s.mu.Unlock()
			return nil
		}
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		ch := s.changed
		s.mu.Unlock()

		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("fcmfake: waiting for %d messages, have %d: %w", n, s.Count(), ctx.Err())
		}
	}
}

// sendRequest is the part of the SDK's request body the fake looks at; decoding
// into small structs keeps the handler cheap at thousands of requests a second.
type sendRequest struct {
	ValidateOnly bool `json:"validate_only"`
	Message      *struct {
		Token        string `json:"token"`
		Topic        string `json:"topic"`
		Condition    string `json:"condition"`
		Notification *struct {
			Title string `json:"title"`
			Body  string `json:"body"`
		} `json:"notification"`
		Data    map[string]string `json:"data"`
		Android *struct {
			Priority string `json:"priority"`
		} `json:"android"`
		APNS *struct {
			Headers map[string]string `json:"headers"`
		} `json:"apns"`
	} `json:"message"`
}

func (s *Server) handleSend(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := RequestRecord{Start: start}

	if project := r.PathValue("project"); project != s.projectID {
		s.answerError(w, &rec, fcmError{
			status: http.StatusNotFound, canonical: "NOT_FOUND",
			message: fmt.Sprintf("Requested entity was not found: project %q (this fake serves %q).", project, s.projectID),
		}, 0)
		return
	}

	// JSON v2, as sendgridfake's decodeMail: decoding was a large part of the
	// fakes' CPU, which the bench's fakes otherwise take from notifyd.
	var req sendRequest
	if err := jsonv2.UnmarshalRead(r.Body, &req); err != nil || req.Message == nil {
		s.answerError(w, &rec, fcmError{
			status: http.StatusBadRequest, canonical: "INVALID_ARGUMENT",
			message: "Invalid JSON payload received.",
		}, 0)
		return
	}
	m := req.Message
	rec.Token = m.Token

	s.mu.Lock()
	b := s.behavior
	fail := s.failNext.n > 0
	failStatus, failRetryAfter := s.failNext.status, s.failNext.retryAfter
	if fail {
		s.failNext.n--
	}
	_, unregistered := s.unregistered[m.Token]
	s.mu.Unlock()

	if fail {
		s.answerError(w, &rec, errorForStatus(failStatus), failRetryAfter)
		return
	}
	if b.Delay > 0 {
		select {
		case <-time.After(b.Delay):
		case <-r.Context().Done():
		}
	}
	switch {
	case !b.Status503Until.IsZero() && time.Now().Before(b.Status503Until):
		s.answerError(w, &rec, errorForStatus(http.StatusServiceUnavailable), b.RetryAfter)
		return
	case chance(b.TimeoutRate):
		s.hang(r, &rec)
		return
	case chance(b.RateLimitRate):
		s.answerError(w, &rec, errorForStatus(http.StatusTooManyRequests), b.RetryAfter)
		return
	case chance(b.FailRate500):
		s.answerError(w, &rec, errorForStatus(http.StatusInternalServerError), 0)
		return
	}

	if m.Topic != "" || m.Condition != "" {
		s.answerError(w, &rec, fcmError{
			status: http.StatusBadRequest, canonical: "INVALID_ARGUMENT", code: "INVALID_ARGUMENT",
			message: "This fake only delivers to registration tokens.",
		}, 0)
		return
	}
	if strings.TrimSpace(m.Token) == "" {
		s.answerError(w, &rec, fcmError{
			status: http.StatusBadRequest, canonical: "INVALID_ARGUMENT", code: "INVALID_ARGUMENT",
			message: "The registration token is not a valid FCM registration token",
		}, 0)
		return
	}
	if key, ok := reservedDataKey(m.Data); ok {
		s.answerError(w, &rec, fcmError{
			status: http.StatusBadRequest, canonical: "INVALID_ARGUMENT", code: "INVALID_ARGUMENT",
			message: fmt.Sprintf("Invalid data payload key: %s", key),
		}, 0)
		return
	}
	if unregistered {
		s.answerError(w, &rec, errorForStatus(http.StatusNotFound), 0)
		return
	}

	msg := Message{
		Token:        m.Token,
		Data:         m.Data,
		ValidateOnly: req.ValidateOnly,
		Start:        start,
	}
	if m.Notification != nil {
		msg.Title, msg.Body = m.Notification.Title, m.Notification.Body
	}
	if m.Android != nil {
		msg.AndroidPriority = m.Android.Priority
	}
	if m.APNS != nil {
		msg.APNSHeaders = m.APNS.Headers
	}

	s.mu.Lock()
	s.nextID++
	msg.Name = "projects/" + s.projectID + "/messages/" + strconv.FormatInt(s.nextID, 10)
	msg.End = time.Now()
	rec.End, rec.Status, rec.Name = msg.End, http.StatusOK, msg.Name
	// A validate_only request is checked but, as with FCM, not delivered.
	observe := s.observe
	if req.ValidateOnly {
		observe = nil
	} else {
		s.msgs = append(s.msgs, msg)
		s.count++
		if s.changed != nil {
			close(s.changed)
			s.changed = nil
		}
	}
	s.reqs = append(s.reqs, rec)
	s.trimLocked()
	s.mu.Unlock()
	if observe != nil {
		observe(msg)
	}

	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.Write([]byte(`{"name":"` + msg.Name + `"}`))
}

// hang simulates a provider that never answers: it holds the request until the
// client gives up (or timeoutHang passes) and records it with status 0.
func (s *Server) hang(r *http.Request, rec *RequestRecord) {
	t := time.NewTimer(timeoutHang)
	defer t.Stop()
	select {
	case <-r.Context().Done():
	case <-t.C:
	}
	rec.End = time.Now()
	rec.ErrorCode = "TIMEOUT"
	s.record(*rec)
}

func (s *Server) record(rec RequestRecord) {
	s.mu.Lock()
	s.reqs = append(s.reqs, rec)
	s.trimLocked()
	s.mu.Unlock()
}

func (s *Server) handleNotFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, fcmError{
		status: http.StatusNotFound, canonical: "NOT_FOUND",
		message: "fcmfake: no route for " + r.Method + " " + r.URL.Path +
			"; send to POST /v1/projects/{project}/messages:send (endpoint = server URL + \"/v1\")",
	}, 0)
}

// fcmError is one FCM error answer. code is the FcmError detail's errorCode; FCM
// leaves the detail out for errors that are not about the message (bad JSON,
// unknown project).
type fcmError struct {
	status    int
	canonical string
	code      string
	message   string
}

// errorForStatus returns the error FCM typically gives with status.
func errorForStatus(status int) fcmError {
	switch status {
	case http.StatusBadRequest:
		return fcmError{status, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Request contains an invalid argument."}
	case http.StatusUnauthorized:
		return fcmError{status, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "Auth error from APNS or Web Push Service"}
	case http.StatusForbidden:
		return fcmError{status, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"}
	case http.StatusNotFound:
		return fcmError{status, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."}
	case http.StatusTooManyRequests:
		return fcmError{status, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded for quota metric 'Send requests'."}
	case http.StatusServiceUnavailable:
		return fcmError{status, "UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."}
	default:
		return fcmError{status, "INTERNAL", "INTERNAL", "Internal error encountered."}
	}
}

func (s *Server) answerError(w http.ResponseWriter, rec *RequestRecord, e fcmError, retryAfter time.Duration) {
	rec.End = time.Now()
	rec.Status = e.status
	rec.ErrorCode = e.code
	if rec.ErrorCode == "" {
		rec.ErrorCode = e.canonical
	}
	s.record(*rec)
	writeError(w, e, retryAfter)
}

func writeError(w http.ResponseWriter, e fcmError, retryAfter time.Duration) {
	type detail struct {
		Type      string `json:"@type"`
		ErrorCode string `json:"errorCode"`
	}
	var body struct {
		Error struct {
			Code    int      `json:"code"`
			Message string   `json:"message"`
			Status  string   `json:"status"`
			Details []detail `json:"details,omitempty"`
		} `json:"error"`
	}
	body.Error.Code = e.status
	body.Error.Message = e.message
	body.Error.Status = e.canonical
	if e.code != "" {
		body.Error.Details = []detail{{Type: "type.googleapis.com/google.firebase.fcm.v1.FcmError", ErrorCode: e.code}}
	}
	if retryAfter > 0 {
		secs := int64((retryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(body)
}

// reservedDataKey reports a data key FCM refuses: "from", "notification",
// "message_type", and anything starting with "google" or "gcm".
func reservedDataKey(data map[string]string) (string, bool) {
	for k := range data {
		switch {
		case k == "from", k == "notification", k == "message_type",
			strings.HasPrefix(k, "google"), strings.HasPrefix(k, "gcm"):
			return k, true
		}
	}
	return "", false
}

func chance(rate float64) bool {
	return rate > 0 && rand.Float64() < rate
}
