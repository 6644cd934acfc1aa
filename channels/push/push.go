// Package push delivers push messages through Firebase Cloud Messaging with the
// firebase-admin-go SDK (HTTP v1 API, one request per device token, sent with
// SendEach). Package fcmfake beside it is a fake FCM server for tests and dev.
package push

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"time"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/messaging"
	"google.golang.org/api/option"
	htransport "google.golang.org/api/transport/http"

	"github.com/notifyd/notifyd/notifier"
)

const (
	// DefaultEndpoint is FCM's HTTP v1 endpoint, in the form option.WithEndpoint takes.
	DefaultEndpoint = "https://fcm.googleapis.com/v1"
	// DefaultTimeout bounds one SendEach round (see Config.Timeout).
	DefaultTimeout = 30 * time.Second
	// CredentialsNone sends requests without authentication, for fakes and emulators.
	CredentialsNone = "none"

	// maxSendEach is the most messages SendEach takes in one call.
	maxSendEach = 500
	// maxBatch is how many notifier.Messages one Send should get: one SendEach
	// round when every recipient has a single device.
	maxBatch = 500
	// idleConnsPerHost keeps connections to FCM open between rounds. SendEach
	// runs 50 requests at a time; several deliver workers share the Sender.
	idleConnsPerHost = 256
)

// firebaseScopes are the OAuth2 scopes firebase-admin-go asks for
// (internal.FirebaseScopes); FCM needs cloud-platform or firebase.messaging.
var firebaseScopes = []string{
	"https://www.googleapis.com/auth/cloud-platform",
	"https://www.googleapis.com/auth/datastore",
	"https://www.googleapis.com/auth/devstorage.full_control",
	"https://www.googleapis.com/auth/firebase",
	"https://www.googleapis.com/auth/identitytoolkit",
	"https://www.googleapis.com/auth/userinfo.email",
}

// Config configures a Sender.
type Config struct {
	// ProjectID is the Firebase project (NOTIFYD_FCM_PROJECT_ID). Required.
	ProjectID string
	// Credentials is the path to a service-account JSON file
	// (NOTIFYD_FCM_CREDENTIALS), or "none" to send no credentials (fakes,
	// emulators). Empty means Google application default credentials.
	Credentials string
	// Endpoint is FCM's base URL as option.WithEndpoint takes it
	// (NOTIFYD_FCM_ENDPOINT); the SDK posts to {Endpoint}/projects/{ProjectID}/messages:send.
	// Default DefaultEndpoint. For fcmfake: the fake server's URL + "/v1".
	Endpoint string
	// Timeout bounds each SendEach round of up to 500 requests, including the SDK's
	// own retries (it retries 503s and network errors up to 4 times, honouring
	// Retry-After). Default DefaultTimeout.
	Timeout time.Duration
	// HTTPClient is the HTTP client the SDK sends with (default: a pooled one).
	// With credentials, requests are authenticated on top of its transport, so
	// that what it wraps (notifyd's send gate, metrics, tracing) sees every
	// request whatever the credentials.
	HTTPClient *http.Client
}

// Sender sends push messages through FCM. It is safe for concurrent use.
type Sender struct {
	client  *messaging.Client
	timeout time.Duration
}

var _ notifier.Channel = (*Sender)(nil)

// New builds a Sender. It reads the credentials file, if any, but makes no request.
func New(ctx context.Context, cfg Config) (*Sender, error) {
	if cfg.ProjectID == "" {
		return nil, errors.New("push: ProjectID is required (NOTIFYD_FCM_PROJECT_ID)")
	}
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = DefaultEndpoint
	}
	// The SDK appends "/projects/..." to the endpoint verbatim.
	endpoint = strings.TrimRight(endpoint, "/")
	if u, err := url.Parse(endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("push: Endpoint %q is not an http(s) URL (NOTIFYD_FCM_ENDPOINT)", cfg.Endpoint)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}

	hc := cfg.HTTPClient
	if hc == nil {
		hc = newHTTPClient()
	}
	// The SDK uses a given client as is, without authentication: with
	// credentials, put Google's authentication (FCM's scopes, the service
	// account file or application default credentials) on top of its transport,
	// as the SDK would on its own. Outermost, trackWrites sees each request the
	// SDK makes (see sendEach).
	transport := hc.Transport
	if transport == nil {
		transport = http.DefaultTransport
	}
	if cfg.Credentials != CredentialsNone {
		authOpts := []option.ClientOption{option.WithScopes(firebaseScopes...)}
		if cfg.Credentials != "" {
			authOpts = append(authOpts, option.WithCredentialsFile(cfg.Credentials))
		}
		var err error
		if transport, err = htransport.NewTransport(ctx, transport, authOpts...); err != nil {
			return nil, fmt.Errorf("push: credentials (NOTIFYD_FCM_CREDENTIALS %q): %w", cfg.Credentials, err)
		}
	}
	sdkClient := *hc
	sdkClient.Transport = trackWrites{base: transport}
	opts := []option.ClientOption{option.WithEndpoint(endpoint), option.WithHTTPClient(&sdkClient)}
	if cfg.Credentials == CredentialsNone {
		opts = append(opts, option.WithoutAuthentication())
	}

	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: cfg.ProjectID}, opts...)
	if err != nil {
		return nil, fmt.Errorf("push: firebase app: %w", err)
	}
	client, err := app.Messaging(ctx)
	if err != nil {
		return nil, fmt.Errorf("push: firebase messaging client (NOTIFYD_FCM_CREDENTIALS %q): %w", cfg.Credentials, err)
	}
	return &Sender{client: client, timeout: timeout}, nil
}

func newHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = idleConnsPerHost
	tr.MaxIdleConnsPerHost = idleConnsPerHost
	return &http.Client{Transport: tr}
}

// Name returns notifier.ChannelPush.
func (s *Sender) Name() string { return notifier.ChannelPush }

// MaxBatch returns 500, the size of one SendEach call.
func (s *Sender) MaxBatch() int { return maxBatch }

// job is one FCM request: one token of one message.
type job struct {
	msg   int // index into msgs
	token string
}

// outcome is what FCM answered to one job.
type outcome struct {
	name string // message name when accepted
	err  *notifier.SendError
}

// Send delivers each message to every device token it carries, one FCM request
// per token, and returns one result per message in order.
//
// A message is one delivery whatever its number of tokens: it is sent when FCM
// accepted at least one token, and its ProviderID is the first accepted message
// name. Tokens FCM calls UNREGISTERED are returned in DeadTokens either way.
// When no token was accepted, a retryable failure (rate limit first, then
// transient) wins over a permanent one, so a message is never given up while a
// retry could still reach a device.
func (s *Sender) Send(ctx context.Context, msgs []notifier.Message) []notifier.SendResult {
	results := make([]notifier.SendResult, len(msgs))
	var jobs []job
	for i, m := range msgs {
		results[i].DeliveryID = m.DeliveryID
		if m.Push == nil {
			results[i].Err = &notifier.SendError{Class: notifier.Permanent, Reason: "no_push_content"}
			continue
		}
		tokens := usableTokens(m.Push.Tokens)
		if len(tokens) == 0 {
			results[i].Err = &notifier.SendError{Class: notifier.Permanent, Reason: "no_device"}
			continue
		}
		for _, t := range tokens {
			jobs = append(jobs, job{msg: i, token: t})
		}
	}

	outcomes := make([]outcome, len(jobs))
	for start := 0; start < len(jobs); start += maxSendEach {
		end := min(start+maxSendEach, len(jobs))
		s.sendEach(ctx, msgs, jobs[start:end], outcomes[start:end])
	}

	// Jobs are in message order, so each message's outcomes are one contiguous run.
	for start := 0; start < len(jobs); {
		end := start + 1
		for end < len(jobs) && jobs[end].msg == jobs[start].msg {
			end++
		}
		results[jobs[start].msg] = merge(results[jobs[start].msg], jobs[start:end], outcomes[start:end])
		start = end
	}
	return results
}

// sendEach runs one SendEach call (at most 500 jobs) and fills outs.
func (s *Sender) sendEach(ctx context.Context, msgs []notifier.Message, jobs []job, outs []outcome) {
	if err := ctx.Err(); err != nil {
		failAll(outs, err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()

	fcm := make([]*messaging.Message, len(jobs))
	for i, j := range jobs {
		fcm[i] = toFCMMessage(msgs[j.msg], j.token)
	}
	written := &writtenRequests{}
	br, err := s.client.SendEach(context.WithValue(ctx, writtenKey{}, written), fcm)
	if err != nil || br == nil || len(br.Responses) != len(jobs) {
		// SendEach only fails as a whole for messages it refuses before sending
		// (Send filters those out), so this is a bug or an SDK change.
		if err == nil {
			err = errors.New("push: SendEach returned no response per message")
		}
		failAll(outs, err)
		return
	}
	var wentOut map[string]bool // read only if a request was cancelled
	for i, r := range br.Responses {
		if r.Success {
			outs[i].name = r.MessageID
			continue
		}
		// Classify before anything wraps the SDK's error.
		outs[i].err = classify(r.Error)
		if outs[i].err.Reason != "canceled" {
			continue
		}
		if wentOut == nil {
			wentOut = written.tokens()
		}
		if wentOut[jobs[i].token] {
			// Cancelled after its request went out: FCM may have accepted it,
			// so it must not be sent again.
			outs[i].err.Reason, outs[i].err.MaybeSent = "canceled_after_send", true
		}
	}
}

// failAll gives every job the same classified error, each its own copy so that
// results never share a mutable *SendError.
func failAll(outs []outcome, err error) {
	se := classify(err)
	for i := range outs {
		c := *se
		outs[i].err = &c
	}
}

// merge folds the outcomes of one message's tokens into its result.
func merge(res notifier.SendResult, jobs []job, outs []outcome) notifier.SendResult {
	var permanent, transient, limited *notifier.SendError
	for i, o := range outs {
		if o.err == nil {
			if res.ProviderID == "" {
				res.ProviderID = o.name
			}
			continue
		}
		if o.err.Reason == "UNREGISTERED" {
			res.DeadTokens = append(res.DeadTokens, jobs[i].token)
		}
		switch o.err.Class {
		case notifier.RateLimited:
			if limited == nil || o.err.RetryAfter > limited.RetryAfter {
				limited = o.err
			}
		case notifier.Transient:
			if transient == nil || o.err.RetryAfter > transient.RetryAfter {
				transient = o.err
			}
		default:
			if permanent == nil {
				permanent = o.err
			}
		}
	}
	if res.ProviderID != "" {
		return res
	}
	switch {
	case limited != nil:
		res.Err = limited
	case transient != nil:
		res.Err = transient
	default:
		res.Err = permanent
	}
	return res
}

// usableTokens drops blank and repeated tokens: the SDK refuses a whole SendEach
// call over one empty token, and a repeated token would show the push twice.
func usableTokens(tokens []string) []string {
	out := make([]string, 0, len(tokens))
	seen := make(map[string]bool, len(tokens))
	for _, t := range tokens {
		if strings.TrimSpace(t) == "" || seen[t] {
			continue
		}
		seen[t] = true
		out = append(out, t)
	}
	return out
}

// writtenRequests records the requests of one SendEach call that were written
// to the wire: the SDK hides which of its requests went out, and a cancelled one
// that did may have been accepted. Only their bodies are kept; the tokens are
// read from them when a request was cancelled, not on every send.
type writtenRequests struct {
	mu     sync.Mutex
	bodies []func() (io.ReadCloser, error)
}

type writtenKey struct{}

// tokens returns the tokens of the requests written so far.
func (w *writtenRequests) tokens() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]bool, len(w.bodies))
	for _, body := range w.bodies {
		out[requestToken(body)] = true
	}
	return out
}

// trackWrites wraps the client's transport: a request whose context carries a
// writtenRequests is added to it once written.
type trackWrites struct{ base http.RoundTripper }

func (t trackWrites) RoundTrip(req *http.Request) (*http.Response, error) {
	w, ok := req.Context().Value(writtenKey{}).(*writtenRequests)
	if !ok || req.GetBody == nil {
		return t.base.RoundTrip(req)
	}
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) {
		w.mu.Lock()
		w.bodies = append(w.bodies, req.GetBody)
		w.mu.Unlock()
	}}
	return t.base.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
}

// requestToken is the registration token of an FCM send request, read from a
// copy of its body ({"message":{"token":"...",...}}); "" if there is none.
func requestToken(getBody func() (io.ReadCloser, error)) string {
	body, err := getBody()
	if err != nil {
		return ""
	}
	defer body.Close()
	b, err := io.ReadAll(body)
	if err != nil {
		return ""
	}
	const key = `"token":"`
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return ""
	}
	rest := b[i+len(key):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return ""
	}
	return string(rest[:end])
}
