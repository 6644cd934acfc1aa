package notifier

import (
	"context"
	"io"
	"net/http"
	"strings"
)

// A send gate closes when a delivery batch no longer holds its broadcast's send
// lock: the lock's connection died (PostgreSQL restarted, say) while the batch
// was at the provider. From then on a cancel need not wait for the batch, so the
// batch must not start another provider request: not a retry inside an SDK, not
// the next message of a SendEach. Requests already under way finish and are
// recorded (invariant 3). The provider clients' transports (GateTransport) ask
// the gate before every request.

type sendGateKey struct{}

// WithSendGate returns ctx carrying a gate that is open while open reports true.
func WithSendGate(ctx context.Context, open func() bool) context.Context {
	return context.WithValue(ctx, sendGateKey{}, open)
}

// SendGateOpen reports whether a provider request may start under ctx: true
// unless ctx carries a send gate that has closed.
func SendGateOpen(ctx context.Context) bool {
	open, ok := ctx.Value(sendGateKey{}).(func() bool)
	return !ok || open()
}

// NotSentHeader marks the answer GateTransport gives in the provider's place
// when the gate is closed: the request never left this process, so the channel
// classifies it as not sent (retryable), reason "send_lock_lost".
const NotSentHeader = "X-Notifyd-Not-Sent"

// StatusNotSent is the status of that answer: outside what providers send, and
// not one the SDKs retry by themselves.
const StatusNotSent = 599

// NotSentReason is the reason of an answer GateTransport gave in the provider's
// place ("send_lock_lost"), or "" for a provider's own answer.
func NotSentReason(status int, h http.Header) string {
	if status != StatusNotSent {
		return ""
	}
	return h.Get(NotSentHeader)
}

// GateTransport wraps a provider client's transport: a request whose context
// carries a closed send gate is answered StatusNotSent with NotSentHeader, and
// never reaches base.
func GateTransport(base http.RoundTripper) http.RoundTripper {
	return gateTransport{base: base}
}

type gateTransport struct{ base http.RoundTripper }

func (t gateTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if SendGateOpen(req.Context()) {
		return t.base.RoundTrip(req)
	}
	if req.Body != nil {
		_ = req.Body.Close() // a RoundTripper must close the body, even on refusal
	}
	const msg = "notifyd: not sent: the batch lost its broadcast's send lock"
	return &http.Response{
		Status:        "599 Not Sent",
		StatusCode:    StatusNotSent,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{NotSentHeader: {"send_lock_lost"}, "Content-Type": {"text/plain"}},
		Body:          io.NopCloser(strings.NewReader(msg)),
		ContentLength: int64(len(msg)),
		Request:       req,
	}, nil
}
