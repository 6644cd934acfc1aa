package notifier

import (
	"errors"
	"fmt"
	"net/http"
)

// Error codes. Each maps to exactly one HTTP status, in statusByCode.
const (
	EINVALID      = "invalid"      // a field's value is wrong: 422
	EBADREQUEST   = "bad_request"  // the request itself is malformed: 400
	EUNAUTHORIZED = "unauthorized" // no or bad credentials: 401
	EFORBIDDEN    = "forbidden"    // credentials lack the scope: 403
	ENOTFOUND     = "not_found"    // 404
	ECONFLICT     = "conflict"     // state does not allow it, or in flight: 409
	ETOOLARGE     = "too_large"    // body over the limit: 413
	EUNSUPPORTED  = "unsupported"  // wrong content type: 415
	EUNAVAILABLE  = "unavailable"  // dependency down: 503
	EINTERNAL     = "internal"     // anything else: 500
	EMISMATCH     = "key_mismatch" // idempotency key reused with another body: 422
	ERATELIMITED  = "rate_limited" // 429
)

var statusByCode = map[string]int{
	EINVALID:      http.StatusUnprocessableEntity,
	EBADREQUEST:   http.StatusBadRequest,
	EUNAUTHORIZED: http.StatusUnauthorized,
	EFORBIDDEN:    http.StatusForbidden,
	ENOTFOUND:     http.StatusNotFound,
	ECONFLICT:     http.StatusConflict,
	ETOOLARGE:     http.StatusRequestEntityTooLarge,
	EUNAVAILABLE:  http.StatusServiceUnavailable,
	EINTERNAL:     http.StatusInternalServerError,
	EMISMATCH:     http.StatusUnprocessableEntity,
	ERATELIMITED:  http.StatusTooManyRequests,
}

// Error is the one error type the API shows to callers. Message is safe to show;
// Fields maps a JSON path (e.g. "recipients[3].email") to what is wrong with it.
type Error struct {
	Code    string
	Message string
	Fields  map[string]string
}

func (e *Error) Error() string {
	if len(e.Fields) > 0 {
		return fmt.Sprintf("%s: %s %v", e.Code, e.Message, e.Fields)
	}
	return e.Code + ": " + e.Message
}

// Errorf returns an *Error with code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Invalid returns an EINVALID error for the given field problems, or nil if there
// are none, so validators can `return Invalid(problems)`.
func Invalid(fields map[string]string) error {
	if len(fields) == 0 {
		return nil
	}
	return &Error{Code: EINVALID, Message: "the request has invalid fields", Fields: fields}
}

// ErrorCode returns the code of err's *Error, or EINTERNAL.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// StatusOf maps err to its HTTP status.
func StatusOf(err error) int {
	if s, ok := statusByCode[ErrorCode(err)]; ok {
		return s
	}
	return http.StatusInternalServerError
}
