package notifier

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
)

// Request body limits. Batch imports are large by design; everything else is small.
const (
	defaultBodyLimit = 1 << 20
	batchBodyLimit   = 32 << 20
)

// validator is implemented by request types: they name each bad field.
type validator interface {
	Valid() map[string]string
}

// decode reads a JSON body of at most limit bytes into a T and validates it.
// Unknown fields are refused, so a typo never silently does nothing.
func decode[T validator](w http.ResponseWriter, r *http.Request, limit int64) (T, error) {
	v, err := decodeUnvalidated[T](w, r, limit)
	if err != nil {
		return v, err
	}
	return v, Invalid(v.Valid())
}

// decodeUnvalidated is decode for types whose service method validates them
// together with other inputs (path parameters), to report every problem at once.
func decodeUnvalidated[T any](w http.ResponseWriter, r *http.Request, limit int64) (T, error) {
	var v T
	raw, err := readBody(w, r, limit)
	if err != nil {
		return v, err
	}
	return v, decodeJSON(raw, &v)
}

// readBody reads at most limit bytes of the request body.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	// The Content-Type is not checked: the body must be JSON whatever it says, and
	// refusing curl's default form type would only get in the way.
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		if isTooLarge(err) {
			return nil, Errorf(ETOOLARGE, "the body is larger than %d bytes", limit)
		}
		return nil, Errorf(EBADREQUEST, "the body could not be read: %v", err)
	}
	return raw, nil
}

// decodeJSON decodes exactly one JSON value into v, refusing unknown fields.
func decodeJSON(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		return Errorf(EBADREQUEST, "the body must hold exactly one JSON value")
	}
	return nil
}

func isTooLarge(err error) bool {
	var tooLarge *http.MaxBytesError
	return errors.As(err, &tooLarge)
}

func decodeError(err error) error {
	var syntax *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return Errorf(EBADREQUEST, "the body is empty; a JSON object is required")
	case errors.As(err, &syntax), errors.Is(err, io.ErrUnexpectedEOF):
		return Errorf(EBADREQUEST, "the body is not valid JSON: %v", err)
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			return Errorf(EBADREQUEST, "the body must be a JSON object")
		}
		return &Error{Code: EINVALID, Message: "the request has invalid fields",
			Fields: map[string]string{field: fmt.Sprintf("must be %s, not %s", jsonKind(typeErr.Type.Kind().String()), typeErr.Value)}}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return &Error{Code: EINVALID, Message: "the request has invalid fields", Fields: map[string]string{field: "unknown field"}}
	}
	return Errorf(EBADREQUEST, "the body could not be read: %v", err)
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "map", "struct":
		return "an object"
	case "slice", "array":
		return "an array"
	case "bool":
		return "a boolean"
	}
	return "a number"
}

func encode(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// problem is an RFC 9457 problem details document.
type problem struct {
	Type     string         `json:"type"`
	Title    string         `json:"title"`
	Status   int            `json:"status"`
	Detail   string         `json:"detail,omitempty"`
	Instance string         `json:"instance,omitempty"`
	Code     string         `json:"code"`
	Errors   []problemField `json:"errors,omitempty"`
}

type problemField struct {
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

// writeError answers with problem+json. Internal errors are logged and hidden.
func writeError(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err error) {
	var e *Error
	if !errors.As(err, &e) {
		logger.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		e = &Error{Code: EINTERNAL, Message: "internal error"}
	}
	status := StatusOf(e)
	p := problem{
		Type:     "urn:notifyd:problem:" + e.Code,
		Title:    http.StatusText(status),
		Status:   status,
		Detail:   e.Message,
		Instance: r.URL.Path,
		Code:     e.Code,
	}
	for field, detail := range e.Fields {
		p.Errors = append(p.Errors, problemField{Field: field, Detail: detail})
	}
	sort.Slice(p.Errors, func(i, j int) bool { return p.Errors[i].Field < p.Errors[j].Field })
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(p)
}
