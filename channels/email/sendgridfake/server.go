// Package sendgridfake is a SendGrid v3 mail send server for tests and for
// `notifyd dev`. It speaks SendGrid's wire format, so the real sendgrid-go code
// runs against it: it checks the key and the essentials of the JSON the way
// SendGrid does, answers with SendGrid's statuses, headers and error shape, and
// records every accepted email as the recipient would receive it. Faults can be
// injected to test rate limiting, retries and timeouts.
//
// It has no dependency on the testing package, so a CLI can serve it too.
package sendgridfake

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"html/template"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

const (
	sendPath = "/v3/mail/send"
	// maxRequestBytes is SendGrid's limit on a whole mail send request.
	maxRequestBytes = 30 << 20
)

// Message is one accepted email for one recipient: one (personalization, to)
// pair of a request, with substitutions applied. Its maps and slices are
// shared with other records and must not be modified.
type Message struct {
	To         string            `json:"to"`
	ToName     string            `json:"to_name,omitempty"`
	From       string            `json:"from"`
	Subject    string            `json:"subject"`
	Text       string            `json:"text,omitempty"`
	HTML       string            `json:"html,omitempty"`
	TemplateID string            `json:"template_id,omitempty"`
	Headers    map[string]string `json:"headers,omitempty"`
	CustomArgs map[string]string `json:"custom_args,omitempty"`
	Categories []string          `json:"categories,omitempty"`
	// MessageID is the X-Message-Id answered for the request.
	MessageID string `json:"message_id"`
	// RequestSeq numbers requests from 1 in the order they arrived.
	RequestSeq   int64     `json:"request_seq"`
	RequestStart time.Time `json:"request_start"`
	ReceivedAt   time.Time `json:"received_at"`
}

// RequestRecord describes one request to the mail send endpoint, accepted or not.
type RequestRecord struct {
	Seq   int64
	Start time.Time
	End   time.Time
	// Status is the HTTP status answered; 0 if the client gave up first.
	Status int
	// Personalizations and Recipients are counted for accepted requests only.
	Personalizations int
	Recipients       int
	MessageID        string
	// Fault names the injected fault that decided the answer, if any:
	// "fail_next", "status_503", "timeout", "fail_500", "rate_limit".
	Fault string
	// Error is the first error message answered, if any.
	Error string
}

// Behavior injects faults into the mail send endpoint. The zero value injects
// none. Rates are probabilities between 0 and 1. Faults apply only to requests
// with the right key, after Delay, in this order: FailNext, Status503Until,
// TimeoutRate, FailRate500, RateLimitRate; the first that fires answers.
type Behavior struct {
	// Delay is added to every authorized request before it is answered.
	Delay time.Duration
	// FailRate500 answers 500.
	FailRate500 float64
	// RateLimitRate answers 429 with Retry-After and X-RateLimit-* headers.
	RateLimitRate float64
	// RetryAfter is sent as Retry-After (whole seconds, rounded up) with 429
	// and 503 answers; for 429 it also sets X-RateLimit-Reset. Zero sends no
	// Retry-After, and a reset one second ahead.
	RetryAfter time.Duration
	// TimeoutRate never answers: the request hangs until the client gives up.
	TimeoutRate float64
	// Status503Until answers 503 to every request until this time.
	Status503Until time.Time
}

type injected struct {
	status     int
	retryAfter time.Duration
}

// Server is the fake. It is an http.Handler and safe for concurrent use.
type Server struct {
	apiKey string
	page   *template.Template
	bufs   sync.Pool // *bytes.Buffer for request bodies

	mu       sync.Mutex
	behavior Behavior
	failNext []injected
	seq      int64
	count    int
	retain   int
	msgs     []Message
	reqs     []RequestRecord
	observe  func(Message)
	// changed is closed and replaced whenever messages are accepted.
	changed chan struct{}
}

// New returns a fake that accepts requests authorized with apiKey.
func New(apiKey string) *Server {
	return &Server{
		apiKey:  apiKey,
		page:    template.Must(template.New("page").Parse(pageHTML)),
		bufs:    sync.Pool{New: func() any { return new(bytes.Buffer) }},
		changed: make(chan struct{}),
	}
}

// Listen serves the fake on addr (e.g. "127.0.0.1:0") until closeFn is called,
// and returns the base URL to give sendgrid-go.
func (s *Server) Listen(addr string) (baseURL string, closeFn func() error, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("sendgridfake: %w", err)
	}
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln) //nolint:errcheck // Serve returns ErrServerClosed after closeFn.

	host, port, _ := net.SplitHostPort(ln.Addr().String())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port), hs.Close, nil
}

// SetBehavior replaces the injected faults.
func (s *Server) SetBehavior(b Behavior) {
	s.mu.Lock()
	s.behavior = b
	s.mu.Unlock()
}

// FailNext answers the next n mail send requests with status (after the key is
// checked), with Retry-After if retryAfter > 0. Calls queue up in order.
func (s *Server) FailNext(n int, status int, retryAfter time.Duration) {
	s.mu.Lock()
	for range n {
		s.failNext = append(s.failNext, injected{status: status, retryAfter: retryAfter})
	}
	s.mu.Unlock()
}

// SetRetention keeps only the newest n messages (0: all, the default). Count
// and WaitFor still see every accepted message; for long runs and benchmarks.
func (s *Server) SetRetention(n int) {
	s.mu.Lock()
	s.retain = n
	s.trimLocked()
	s.mu.Unlock()
}

// SetObserver calls observe with every message accepted from now on, after it
// is recorded and before the answer is sent. It runs on the request's
// goroutine, so it must be quick and safe for concurrent use. Benchmarks count
// what arrived with it, without keeping it.
func (s *Server) SetObserver(observe func(Message)) {
	s.mu.Lock()
	s.observe = observe
	s.mu.Unlock()
}

// Reset forgets recorded messages and requests and restarts the count. Injected
// faults stay as they are.
func (s *Server) Reset() {
	s.mu.Lock()
	s.msgs = nil
	s.reqs = nil
	s.count = 0
	s.mu.Unlock()
}

// Messages returns the retained accepted messages, oldest first.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := 0
	if s.retain > 0 && len(s.msgs) > s.retain {
		start = len(s.msgs) - s.retain
	}
	out := make([]Message, len(s.msgs)-start)
	copy(out, s.msgs[start:])
	return out
}

// Count is how many messages were accepted since New or Reset.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// Requests returns every mail send request since New or Reset, in the order
// they finished.
func (s *Server) Requests() []RequestRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]RequestRecord, len(s.reqs))
	copy(out, s.reqs)
	return out
}

// WaitFor blocks until at least n messages were accepted or ctx ends.
func (s *Server) WaitFor(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		count, changed := s.count, s.changed
		s.mu.Unlock()
		if count >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("sendgridfake: %d of %d messages accepted: %w", count, n, ctx.Err())
		}
	}
}

// ServeHTTP routes SendGrid's mail send endpoint and the fake's own views.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case sendPath:
		s.handleSend(w, r)
	case "/_fake/messages":
		s.handleMessagesJSON(w, r)
	case "/_fake", "/_fake/":
		s.handlePage(w, r)
	default:
		writeErrors(w, http.StatusNotFound, apiError{Message: "not found"})
	}
}

func (s *Server) handleSend(w http.ResponseWriter, r *http.Request) {
	rec := RequestRecord{Start: time.Now()}
	s.mu.Lock()
	s.seq++
	rec.Seq = s.seq
	s.mu.Unlock()

	status, errs, msgs := s.serveSend(w, r, &rec)
	rec.End = time.Now()
	rec.Status = status
	if len(errs) > 0 {
		rec.Error = errs[0].Message
	}

	// Record before answering, so that whoever got the answer finds the
	// request and its messages recorded.
	s.mu.Lock()
	s.reqs = append(s.reqs, rec)
	if len(msgs) > 0 {
		s.msgs = append(s.msgs, msgs...)
		s.count += len(msgs)
		s.trimLocked()
		close(s.changed)
		s.changed = make(chan struct{})
	}
	observe := s.observe
	s.mu.Unlock()
	if observe != nil {
		for _, m := range msgs {
			observe(m)
		}
	}

	switch {
	case status == 0: // the client is gone
	case len(errs) > 0:
		writeErrors(w, status, errs...)
	default:
		w.WriteHeader(status)
	}
}

// serveSend decides the answer to one mail send request: the status (0 for
// none), SendGrid's errors for a failure, the accepted messages for a 202.
// Headers go straight on w; the caller writes the status and body.
func (s *Server) serveSend(w http.ResponseWriter, r *http.Request, rec *RequestRecord) (status int, errs []apiError, msgs []Message) {
	if r.Method != http.MethodPost {
		return http.StatusMethodNotAllowed, []apiError{{Message: "method not allowed"}}, nil
	}

	// Read the whole body before answering anything: answering early leaves
	// the client writing into a closed connection, and it would see a network
	// error instead of our status.
	buf := s.bufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer s.bufs.Put(buf)
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, maxRequestBytes)); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return http.StatusRequestEntityTooLarge, []apiError{{Message: "The request body exceeds the 30 MB limit."}}, nil
		}
		return 0, []apiError{{Message: "reading the body: " + err.Error()}}, nil
	}

	if r.Header.Get("Authorization") != "Bearer "+s.apiKey {
		return http.StatusUnauthorized, []apiError{{Message: "The provided authorization grant is invalid, expired, or revoked"}}, nil
	}

	b, next := s.takeFault()
	if b.Delay > 0 {
		t := time.NewTimer(b.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return 0, []apiError{{Message: "the client gave up during the delay"}}, nil
		}
	}
	if st, msg, fault := s.fault(w, r, b, next); fault != "" {
		rec.Fault = fault
		return st, []apiError{{Message: msg}}, nil
	}

	var m wireMail
	if err := decodeMail(buf.Bytes(), &m); err != nil {
		return http.StatusBadRequest, []apiError{{Message: "Bad Request: the request body is not valid JSON for mail send: " + err.Error()}}, nil
	}
	if errs := validateMail(&m); len(errs) > 0 {
		return http.StatusBadRequest, errs, nil
	}

	id := newMessageID()
	msgs = expand(&m, id, rec.Seq, rec.Start, time.Now())
	rec.Personalizations = len(m.Personalizations)
	rec.Recipients = len(msgs)
	rec.MessageID = id
	w.Header().Set("X-Message-Id", id)
	return http.StatusAccepted, nil, msgs
}

// takeFault reads the behavior and pops one FailNext entry, under one lock.
func (s *Server) takeFault() (Behavior, *injected) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.behavior
	if len(s.failNext) == 0 {
		return b, nil
	}
	next := s.failNext[0]
	s.failNext = s.failNext[1:]
	return b, &next
}

// fault decides an injected fault: it returns the status to answer (0 for a
// request left hanging until the client gave up), the error message, and the
// fault's name, "" when the request should go on normally.
func (s *Server) fault(w http.ResponseWriter, r *http.Request, b Behavior, next *injected) (status int, msg, fault string) {
	switch {
	case next != nil:
		setRetryAfter(w, next.retryAfter)
		return next.status, "injected failure", "fail_next"
	case !b.Status503Until.IsZero() && time.Now().Before(b.Status503Until):
		setRetryAfter(w, b.RetryAfter)
		return http.StatusServiceUnavailable, "Service Unavailable", "status_503"
	case chance(b.TimeoutRate):
		<-r.Context().Done()
		return 0, "the client gave up waiting", "timeout"
	case chance(b.FailRate500):
		return http.StatusInternalServerError, "Internal Server Error", "fail_500"
	case chance(b.RateLimitRate):
		setRetryAfter(w, b.RetryAfter)
		reset := time.Now().Add(max(b.RetryAfter, time.Second))
		w.Header().Set("X-RateLimit-Limit", "600")
		w.Header().Set("X-RateLimit-Remaining", "0")
		w.Header().Set("X-RateLimit-Reset", strconv.FormatInt(int64(math.Ceil(float64(reset.UnixNano())/1e9)), 10))
		return http.StatusTooManyRequests, "too many requests", "rate_limit"
	}
	return 0, "", ""
}

func chance(p float64) bool {
	return p > 0 && rand.Float64() < p
}

func setRetryAfter(w http.ResponseWriter, d time.Duration) {
	if d > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(d.Seconds())), 10))
	}
}

// newMessageID makes an id shaped like SendGrid's X-Message-Id: 22 characters
// of URL-safe base64.
func newMessageID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// trimLocked drops old messages beyond the retention, in steps, so that
// appends stay amortised O(1).
func (s *Server) trimLocked() {
	if s.retain <= 0 || len(s.msgs) <= 2*s.retain {
		return
	}
	kept := make([]Message, s.retain, 2*s.retain)
	copy(kept, s.msgs[len(s.msgs)-s.retain:])
	s.msgs = kept
}
