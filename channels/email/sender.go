// Package email delivers notifyd messages through SendGrid's v3 mail send API
// with the sendgrid-go SDK, batching recipients into personalizations.
package email

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sendgrid/rest"
	"github.com/sendgrid/sendgrid-go"
	"github.com/sendgrid/sendgrid-go/helpers/mail"

	"github.com/notifyd/notifyd/notifier"
)

const (
	// DefaultBaseURL is SendGrid's global API host.
	DefaultBaseURL = "https://api.sendgrid.com"
	// DefaultTimeout bounds one mail send request, body upload included.
	DefaultTimeout = 30 * time.Second

	sendPath = "/v3/mail/send"
	// maxConcurrentRequests bounds the requests one Send call has in flight, so
	// a batch cannot fan out without limit at the provider.
	maxConcurrentRequests = 4
	// defaultRateLimitWait is used when a 429 says nothing about when to retry.
	defaultRateLimitWait = time.Second
	// maxRetryAfter caps what we believe from a Retry-After header.
	maxRetryAfter = 24 * time.Hour
	// maxErrorBody is how much of a non-JSON error body is kept in the error.
	maxErrorBody = 512
)

// Reasons of the SendErrors that are not a SendGrid HTTP status
// (those are "sendgrid_<status>", e.g. "sendgrid_429").
const (
	// ReasonInvalidMessage: rejected before any request, e.g. a missing subject.
	ReasonInvalidMessage = "invalid_message"
	// ReasonInvalidAddress: the recipient address would make SendGrid reject
	// the whole request it is in, so it is never sent.
	ReasonInvalidAddress = "invalid_address"
	// ReasonNetwork, ReasonTimeout and ReasonCanceled mean the request was not
	// fully written: SendGrid cannot have accepted it, and resending is safe.
	ReasonNetwork  = "network"
	ReasonTimeout  = "timeout"
	ReasonCanceled = "canceled"
	// AfterSendSuffix is appended to the three reasons above when the request
	// had been fully written before the failure ("timeout_after_send"): SendGrid
	// may have accepted it, so a resend may deliver the email twice.
	AfterSendSuffix = "_after_send"
)

// Config configures a Sender.
type Config struct {
	// APIKey is a SendGrid API key with mail send permission.
	APIKey string
	// BaseURL is scheme://host with no path; default DefaultBaseURL.
	BaseURL string
	// From is the sender address, "address" or "Name <address>".
	From string
	// FromName, if set, overrides any name in From.
	FromName string
	// Timeout bounds each request; default DefaultTimeout.
	Timeout time.Duration
	// HTTPClient, if set, sends the requests; otherwise the Sender builds its own
	// with connection and handshake timeouts. Timeout applies either way.
	HTTPClient *http.Client
}

// Sender sends email through SendGrid. It is safe for concurrent use: every
// request is built anew, since a shared *sendgrid.Client is not.
type Sender struct {
	apiKey  string
	baseURL string
	from    mail.Email
	timeout time.Duration
	// client only holds the *http.Client; rest.Client keeps no request state.
	client *rest.Client
}

var _ notifier.Channel = (*Sender)(nil)

// New validates cfg and returns a Sender.
func New(cfg Config) (*Sender, error) {
	if cfg.APIKey == "" {
		return nil, errors.New("email: APIKey is required")
	}
	baseURL, err := parseBaseURL(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	if cfg.From == "" {
		return nil, errors.New("email: From is required")
	}
	from, err := mail.ParseEmail(cfg.From)
	if err != nil || !plausibleAddress(from.Address) {
		return nil, fmt.Errorf("email: From %q is not a valid address", cfg.From)
	}
	if cfg.FromName != "" {
		from.Name = cfg.FromName
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("email: Timeout %s is negative", cfg.Timeout)
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = newHTTPClient(timeout)
	}
	return &Sender{
		apiKey:  cfg.APIKey,
		baseURL: baseURL,
		from:    *from,
		timeout: timeout,
		client:  &rest.Client{HTTPClient: hc},
	}, nil
}

func parseBaseURL(raw string) (string, error) {
	if raw == "" {
		return DefaultBaseURL, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("email: BaseURL %q: %w", raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("email: BaseURL %q must be scheme://host[:port] with no path, e.g. %s", raw, DefaultBaseURL)
	}
	return u.Scheme + "://" + u.Host, nil
}

func newHTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:   true,
			TLSHandshakeTimeout: 10 * time.Second,
			IdleConnTimeout:     90 * time.Second,
			MaxIdleConns:        64,
			// Every worker goroutine talks to the same host; the default of 2
			// idle connections would make most requests dial again.
			MaxIdleConnsPerHost: 32,
		},
	}
}

// Name is the channel name, "email".
func (s *Sender) Name() string { return notifier.ChannelEmail }

// MaxBatch is SendGrid's limit of personalizations per request.
func (s *Sender) MaxBatch() int { return maxPersonalizations }

// Send delivers msgs in as few requests as SendGrid's limits allow, at most
// maxConcurrentRequests at a time, and returns one result per message in order.
// Messages that SendGrid would reject, and that would fail every other message
// in their request, fail alone before any request is made.
func (s *Sender) Send(ctx context.Context, msgs []notifier.Message) []notifier.SendResult {
	results := make([]notifier.SendResult, len(msgs))
	valid := make([]notifier.Message, 0, len(msgs))
	pos := make([]int, 0, len(msgs)) // pos[j] is the index in msgs of valid[j]
	for i, m := range msgs {
		results[i].DeliveryID = m.DeliveryID
		if se := validate(m); se != nil {
			results[i].Err = se
			continue
		}
		valid = append(valid, m)
		pos = append(pos, i)
	}
	if len(valid) == 0 {
		return results
	}

	// Each goroutine writes only the results of its own batch.
	sem := make(chan struct{}, maxConcurrentRequests)
	var wg sync.WaitGroup
	for _, batch := range planBatches(valid) {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			se := notSentError(ctx.Err())
			for _, j := range batch {
				results[pos[j]].Err = se
			}
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			batchMsgs := make([]notifier.Message, len(batch))
			for k, j := range batch {
				batchMsgs[k] = valid[j]
			}
			id, se := s.post(ctx, toSendGridMail(s.from, batchMsgs))
			for _, j := range batch {
				if se != nil {
					results[pos[j]].Err = se
				} else {
					results[pos[j]].ProviderID = id
				}
			}
		})
	}
	wg.Wait()
	return results
}

// validate catches what would make SendGrid reject a request: one bad message
// must not fail the up to 999 others batched with it.
func validate(m notifier.Message) *notifier.SendError {
	e := m.Email
	if e == nil {
		return &notifier.SendError{Class: notifier.Permanent, Reason: ReasonInvalidMessage,
			Err: errors.New("message has no email content")}
	}
	// The address stays out of the error: errors get logged.
	addr := e.To
	if !isBareAddress(addr) {
		to, err := mail.ParseEmail(addr)
		if err != nil {
			return &notifier.SendError{Class: notifier.Permanent, Reason: ReasonInvalidAddress,
				Err: errors.New("recipient address does not parse")}
		}
		addr = to.Address
	}
	if !plausibleAddress(addr) {
		return &notifier.SendError{Class: notifier.Permanent, Reason: ReasonInvalidAddress,
			Err: errors.New("recipient address is not valid")}
	}
	if strings.TrimSpace(e.Subject) == "" {
		return &notifier.SendError{Class: notifier.Permanent, Reason: ReasonInvalidMessage,
			Err: errors.New("subject is empty")}
	}
	if e.Text == "" && e.HTML == "" {
		return &notifier.SendError{Class: notifier.Permanent, Reason: ReasonInvalidMessage,
			Err: errors.New("both text and html bodies are empty")}
	}
	return nil
}

// plausibleAddress is SendGrid's own check as far as we know it: local@domain
// with a dotted domain and nothing that needs quoting. net/mail accepts more
// (a@localhost, quoted local parts), and SendGrid would answer 400 for the
// whole request.
func plausibleAddress(addr string) bool {
	if len(addr) > 320 {
		return false
	}
	at := strings.IndexByte(addr, '@')
	if at < 1 || at != strings.LastIndexByte(addr, '@') || at > 64 {
		return false
	}
	domain := addr[at+1:]
	if len(domain) < 3 || len(domain) > 255 || !strings.Contains(domain, ".") ||
		domain[0] == '.' || domain[len(domain)-1] == '.' || strings.Contains(domain, "..") {
		return false
	}
	for i := 0; i < len(addr); i++ {
		c := addr[i]
		if c <= ' ' || c == 0x7f || strings.IndexByte("\"(),:;<>[\\]", c) >= 0 {
			return false
		}
	}
	return true
}

// post sends one mail send request. It returns SendGrid's X-Message-Id, or a
// SendError classified from the raw response before anything wraps it.
func (s *Sender) post(ctx context.Context, m *mail.SGMailV3) (string, *notifier.SendError) {
	req := sendgrid.GetRequest(s.apiKey, sendPath, s.baseURL)
	req.Method = rest.Post
	req.Body = mail.GetRequestBody(m)

	reqCtx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	// Whether the whole request went out decides if a failure is safe to retry.
	var written atomic.Bool
	reqCtx = httptrace.WithClientTrace(reqCtx, &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				written.Store(true)
			}
		},
	})

	// rest returns the response and an error together when reading the body
	// failed; the status line already says what SendGrid decided.
	resp, err := s.client.SendWithContext(reqCtx, req)
	if resp != nil {
		return classifyResponse(resp.StatusCode, http.Header(resp.Headers), resp.Body, time.Now())
	}
	return "", transportError(ctx, err, written.Load())
}

// classifyResponse maps SendGrid's answer to a provider id or a SendError.
// sendgrid-go returns non-2xx answers with a nil error, so the status decides.
func classifyResponse(status int, h http.Header, body string, now time.Time) (string, *notifier.SendError) {
	if status >= 200 && status < 300 {
		return h.Get("X-Message-Id"), nil
	}
	se := &notifier.SendError{
		StatusCode: status,
		Reason:     "sendgrid_" + strconv.Itoa(status),
		Err:        newAPIError(status, body),
	}
	switch {
	case notifier.NotSentReason(status, h) != "":
		// notifier.GateTransport answered: the request never left the process.
		se.Class, se.Reason = notifier.Transient, notifier.NotSentReason(status, h)
	case status == http.StatusTooManyRequests:
		se.Class = notifier.RateLimited
		se.RetryAfter = rateLimitWait(h, now)
	case status >= 500:
		se.Class = notifier.Transient
		se.RetryAfter = retryAfter(h, now)
	case status >= 400:
		se.Class = notifier.Permanent
	default:
		// 1xx/3xx did not come from SendGrid's mail send; a proxy or a wrong
		// base URL must not fail deliveries for good.
		se.Class = notifier.Transient
	}
	return "", se
}

// rateLimitWait is how long a 429 asks us to wait: Retry-After, else
// X-RateLimit-Reset (unix seconds, what SendGrid sends), else a second.
func rateLimitWait(h http.Header, now time.Time) time.Duration {
	if d := retryAfter(h, now); d > 0 {
		return d
	}
	if v := h.Get("X-RateLimit-Reset"); v != "" {
		if unix, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			if d := time.Unix(unix, 0).Sub(now); d > 0 {
				return min(d, maxRetryAfter)
			}
		}
	}
	return defaultRateLimitWait
}

// retryAfter parses Retry-After as seconds or an HTTP date; 0 if absent or past.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return min(d, maxRetryAfter)
		}
	}
	return 0
}

// transportError classifies a request that got no HTTP answer. Everything here
// is transient; the reason says whether SendGrid may have accepted it.
func transportError(ctx context.Context, err error, written bool) *notifier.SendError {
	reason := ReasonNetwork
	var ne net.Error
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		reason = ReasonCanceled
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		reason = ReasonTimeout
	}
	if written {
		reason += AfterSendSuffix
	}
	return &notifier.SendError{Class: notifier.Transient, Reason: reason, MaybeSent: written, Err: fmt.Errorf("sendgrid: %w", err)}
}

// notSentError is for batches never started because ctx ended first.
func notSentError(err error) *notifier.SendError {
	reason := ReasonCanceled
	if errors.Is(err, context.DeadlineExceeded) {
		reason = ReasonTimeout
	}
	return &notifier.SendError{Class: notifier.Transient, Reason: reason, Err: fmt.Errorf("sendgrid: not sent: %w", err)}
}

// APIError is SendGrid's error answer: {"errors":[{"message":..,"field":..}]}.
// It is the Err inside a SendError for an HTTP failure.
type APIError struct {
	StatusCode int
	Errors     []APIErrorItem
	// Body holds the start of a body that was not SendGrid's error JSON.
	Body string
}

// APIErrorItem is one entry of SendGrid's errors list.
type APIErrorItem struct {
	Message string `json:"message"`
	Field   string `json:"field"`
}

func newAPIError(status int, body string) *APIError {
	e := &APIError{StatusCode: status}
	var parsed struct {
		Errors []APIErrorItem `json:"errors"`
	}
	if err := json.Unmarshal([]byte(body), &parsed); err == nil && len(parsed.Errors) > 0 {
		e.Errors = parsed.Errors
		return e
	}
	if len(body) > maxErrorBody {
		body = body[:maxErrorBody]
	}
	e.Body = body
	return e
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sendgrid: HTTP %d", e.StatusCode)
	for i, item := range e.Errors {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		if item.Field != "" {
			b.WriteString(item.Field)
			b.WriteString(": ")
		}
		b.WriteString(item.Message)
	}
	if len(e.Errors) == 0 && e.Body != "" {
		b.WriteString(": ")
		b.WriteString(e.Body)
	}
	return b.String()
}
