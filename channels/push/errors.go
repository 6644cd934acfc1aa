package push

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"

	"github.com/notifyd/notifyd/notifier"
)

// defaultRetryAfter is the wait for a rate limit when FCM names none.
const defaultRetryAfter = time.Second

// classify turns an error from the messaging client into a *notifier.SendError.
// It must see the SDK's error unwrapped: messaging.Is* and errorutils.* use type
// assertions, not errors.As.
//
// Only errors about this message or this token are Permanent. Errors that say the
// whole project is misconfigured (bad credentials, APNs auth, unknown project) are
// Transient: they are fixed by an operator, and failing every delivery meanwhile
// would lose messages.
func classify(err error) *notifier.SendError {
	se := &notifier.SendError{Class: notifier.Transient, Err: err}

	resp := errorutils.HTTPResponse(err)
	if resp != nil {
		se.StatusCode = resp.StatusCode
		se.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), time.Now())
	}

	switch {
	case resp != nil && notifier.NotSentReason(resp.StatusCode, resp.Header) != "":
		// notifier.GateTransport answered: the request never left the process.
		se.Reason = notifier.NotSentReason(resp.StatusCode, resp.Header)
	case errors.Is(err, context.DeadlineExceeded):
		// The SDK returns the bare context error when a deadline ends its retry wait.
		se.Reason = "timeout"
	case errors.Is(err, context.Canceled):
		se.Reason = "canceled"

	case messaging.IsUnregistered(err):
		se.Class, se.Reason = notifier.Permanent, "UNREGISTERED"
	case messaging.IsSenderIDMismatch(err):
		se.Class, se.Reason = notifier.Permanent, "SENDER_ID_MISMATCH"
	case messaging.IsInvalidArgument(err):
		se.Class, se.Reason = notifier.Permanent, "INVALID_ARGUMENT"
	case messaging.IsQuotaExceeded(err):
		se.Class, se.Reason = notifier.RateLimited, "QUOTA_EXCEEDED"
	case messaging.IsUnavailable(err):
		se.Reason = "UNAVAILABLE"
	case messaging.IsInternal(err):
		se.Reason = "INTERNAL"
	case messaging.IsThirdPartyAuthError(err):
		se.Reason = "THIRD_PARTY_AUTH_ERROR"

	// No FcmError detail: fall back to the canonical status and the HTTP status.
	case se.StatusCode == http.StatusTooManyRequests || errorutils.IsResourceExhausted(err):
		se.Class, se.Reason = notifier.RateLimited, "RESOURCE_EXHAUSTED"
	case errorutils.IsInvalidArgument(err):
		// FCM answers a malformed request with 400 INVALID_ARGUMENT and no detail;
		// sending the same message again cannot succeed.
		se.Class, se.Reason = notifier.Permanent, "INVALID_ARGUMENT"
	case errorutils.IsDeadlineExceeded(err):
		se.Reason = "timeout"
	case errorutils.IsUnavailable(err):
		se.Reason = "UNAVAILABLE"
	case se.StatusCode != 0:
		se.Reason = "fcm_" + strconv.Itoa(se.StatusCode)
	default:
		// Network errors and anything the SDK did not classify.
		se.Reason = "network"
	}

	// Without an answer we cannot know whether FCM accepted the message.
	se.MaybeSent = resp == nil && (se.Reason == "timeout" || se.Reason == "network")

	if se.Class == notifier.RateLimited && se.RetryAfter <= 0 {
		se.RetryAfter = defaultRetryAfter
	}
	return se
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
