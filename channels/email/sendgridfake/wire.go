package sendgridfake

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
)

// SendGrid's limits that the fake enforces.
const (
	maxPersonalizations  = 1000
	maxRecipients        = 1000
	maxSubstitutionBytes = 10000 // per personalization, exclusive
	maxCustomArgBytes    = 10000 // per personalization with the request's, exclusive
	maxErrorsAnswered    = 100
)

// The subset of the v3 mail send body the fake reads. Its own types, not
// sendgrid-go's, so that a mistake in how the SDK is used shows up here.
type wireMail struct {
	From             *wireEmail            `json:"from"`
	Subject          string                `json:"subject"`
	Personalizations []wirePersonalization `json:"personalizations"`
	Content          []wireContent         `json:"content"`
	TemplateID       string                `json:"template_id"`
	Headers          map[string]string     `json:"headers"`
	Categories       []string              `json:"categories"`
	CustomArgs       map[string]string     `json:"custom_args"`
}

type wirePersonalization struct {
	To            []wireEmail       `json:"to"`
	CC            []wireEmail       `json:"cc"`
	BCC           []wireEmail       `json:"bcc"`
	From          *wireEmail        `json:"from"`
	Subject       string            `json:"subject"`
	Headers       map[string]string `json:"headers"`
	Substitutions map[string]string `json:"substitutions"`
	CustomArgs    map[string]string `json:"custom_args"`
}

type wireEmail struct {
	Email string `json:"email"`
	Name  string `json:"name"`
}

type wireContent struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// apiError is one entry of SendGrid's error answer.
type apiError struct {
	Message string
	Field   string
}

// decodeMail parses a request body. Like SendGrid, it refuses non-string
// values in custom_args, substitutions and headers. It uses the JSON v2
// implementation (the standard library's encoding/json/v2, still behind a
// GOEXPERIMENT there): BenchmarkAccept1000 accepts twice as many messages per
// second as with encoding/json, CPU the bench's fake otherwise takes from
// notifyd.
func decodeMail(body []byte, m *wireMail) error {
	return jsonv2.Unmarshal(body, m)
}

// validateMail checks what SendGrid checks before accepting a request, as far
// as notifyd's requests go, with SendGrid's messages and field paths.
func validateMail(m *wireMail) []apiError {
	var errs []apiError
	add := func(field, msg string, args ...any) {
		if len(errs) < maxErrorsAnswered {
			errs = append(errs, apiError{Field: field, Message: fmt.Sprintf(msg, args...)})
		}
	}

	switch {
	case m.From == nil || m.From.Email == "":
		add("from.email", `The from object must be provided for every email send. It is an object that requires the email parameter, but may also contain a name parameter.  e.g. {"email" : "example@example.com"}  or {"email" : "example@example.com", "name" : "Example Recipient"}.`)
	case !plausibleAddress(m.From.Email):
		add("from.email", "The from email does not contain a valid address.")
	}

	n := len(m.Personalizations)
	switch {
	case n == 0:
		add("personalizations", "The personalizations field is required and must have at least one personalization.")
	case n > maxPersonalizations:
		add("personalizations", "The personalization block is limited to 1000 personalizations per API request. You have provided %d personalizations. Please consider splitting this into multiple requests and resending your request.", n)
	}

	recipients := 0
	everySubject := n > 0
	seen := make(map[string]struct{}, n)
	for i := range m.Personalizations {
		p := &m.Personalizations[i]
		recipients += len(p.To) + len(p.CC) + len(p.BCC)
		if p.Subject == "" {
			everySubject = false
		}
		if len(p.To) == 0 {
			add(fmt.Sprintf("personalizations.%d.to", i), "The to array is required for all personalization objects, and must have at least one email object with a valid email address.")
		}
		for j, to := range p.To {
			// Named only for an error, not for every recipient.
			field := func() string { return fmt.Sprintf("personalizations.%d.to.%d.email", i, j) }
			if !plausibleAddress(to.Email) {
				add(field(), "Does not contain a valid address.")
				continue
			}
			key := strings.ToLower(to.Email)
			if _, dup := seen[key]; dup {
				// SendGrid names the address here; the fake does not, because
				// these messages end up in notifyd's logs.
				add(field(), "Each unique email address in the personalizations array should only be included once. You have included an email address more than once.")
			}
			seen[key] = struct{}{}
		}
		if size := mapBytes(p.Substitutions); size >= maxSubstitutionBytes {
			add(fmt.Sprintf("personalizations.%d.substitutions", i), "The total size of your substitutions may not exceed 10,000 bytes per personalization object (got %d bytes).", size)
		}
		if size := mapBytes(p.CustomArgs) + mapBytes(m.CustomArgs); size >= maxCustomArgBytes {
			add(fmt.Sprintf("personalizations.%d.custom_args", i), "The total size of your custom_args may not exceed 10,000 bytes per personalization object (got %d bytes).", size)
		}
	}
	if recipients > maxRecipients {
		add("personalizations", "There is a limit of 1000 total recipients (to + cc + bcc) per request.")
	}

	if m.Subject == "" && !everySubject && m.TemplateID == "" {
		add("subject", "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.")
	}

	if len(m.Content) == 0 && m.TemplateID == "" {
		add("content", "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block. We typically suggest both text/plain and text/html blocks are included, but only one block is required.")
	}
	for i, c := range m.Content {
		if c.Type == "" {
			add(fmt.Sprintf("content.%d.type", i), "The content type cannot contain ';', or CRLF characters. The content type must be a string at least one character in length.")
		}
		if c.Value == "" {
			add(fmt.Sprintf("content.%d.value", i), "The content value must be a string at least one character in length.")
		}
		// SendGrid wants text/plain first, then text/html, then anything else.
		want := -1
		switch c.Type {
		case "text/plain":
			want = 0
		case "text/html":
			want = 0
			if m.Content[0].Type == "text/plain" {
				want = 1
			}
		}
		if want >= 0 && i != want {
			add(fmt.Sprintf("content.%d.type", i), "If present, text/plain content must be first, followed by text/html, followed by any other content.")
		}
	}
	return errs
}

func mapBytes(m map[string]string) int {
	n := 0
	for k, v := range m {
		n += len(k) + len(v)
	}
	return n
}

// plausibleAddress approximates SendGrid's address check: local@domain with a
// dotted domain and no characters that would need quoting.
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

// expand turns an accepted request into one Message per (personalization, to),
// rendered as SendGrid would: personalization values over the request's, and
// substitutions applied to the subject and bodies.
func expand(m *wireMail, messageID string, seq int64, start, received time.Time) []Message {
	var text, html string
	for _, c := range m.Content {
		switch c.Type {
		case "text/plain":
			text = c.Value
		case "text/html":
			html = c.Value
		}
	}
	total := 0
	for i := range m.Personalizations {
		total += len(m.Personalizations[i].To)
	}
	out := make([]Message, 0, total)
	for i := range m.Personalizations {
		p := &m.Personalizations[i]
		from := m.From
		if p.From != nil && p.From.Email != "" {
			from = p.From
		}
		subject, pText, pHTML := p.Subject, text, html
		if subject == "" {
			subject = m.Subject
		}
		if len(p.Substitutions) > 0 {
			keys := substitutionKeys(p.Substitutions)
			subject = substitute(subject, keys, p.Substitutions)
			pText = substitute(pText, keys, p.Substitutions)
			pHTML = substitute(pHTML, keys, p.Substitutions)
		}
		headers := merge(m.Headers, p.Headers)
		args := merge(m.CustomArgs, p.CustomArgs)
		for _, to := range p.To {
			out = append(out, Message{
				To:           to.Email,
				ToName:       to.Name,
				From:         from.Email,
				Subject:      subject,
				Text:         pText,
				HTML:         pHTML,
				TemplateID:   m.TemplateID,
				Headers:      headers,
				CustomArgs:   args,
				Categories:   m.Categories,
				MessageID:    messageID,
				RequestSeq:   seq,
				RequestStart: start,
				ReceivedAt:   received,
			})
		}
	}
	return out
}

// merge lays b over a; it returns one of them unchanged when the other is
// empty, which is the common case and saves a map per recipient.
func merge(a, b map[string]string) map[string]string {
	if len(a) == 0 {
		return b
	}
	if len(b) == 0 {
		return a
	}
	out := make(map[string]string, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// substitutionKeys lists the non-empty keys, longest first, so that where one
// key is a prefix of another the longer one wins, whatever the map order.
func substitutionKeys(subs map[string]string) []string {
	keys := make([]string, 0, len(subs))
	for k := range subs {
		if k != "" {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b string) int {
		if len(a) != len(b) {
			return len(b) - len(a)
		}
		return strings.Compare(a, b)
	})
	return keys
}

// substitute replaces every occurrence of the keys in s in one left-to-right
// pass; replaced values are not searched again.
func substitute(s string, keys []string, subs map[string]string) string {
	var b strings.Builder
	for {
		at, key := -1, ""
		for _, k := range keys {
			if i := strings.Index(s, k); i >= 0 && (at < 0 || i < at) {
				at, key = i, k
			}
		}
		if at < 0 {
			if b.Len() == 0 {
				return s
			}
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:at])
		b.WriteString(subs[key])
		s = s[at+len(key):]
	}
}

// writeErrors answers with SendGrid's error body,
// {"errors":[{"message":..,"field":..,"help":null}]}.
func writeErrors(w http.ResponseWriter, status int, errs ...apiError) {
	type item struct {
		Message string  `json:"message"`
		Field   *string `json:"field"`
		Help    *string `json:"help"`
	}
	body := struct {
		Errors []item `json:"errors"`
	}{Errors: make([]item, len(errs))}
	for i, e := range errs {
		body.Errors[i].Message = e.Message
		if e.Field != "" {
			body.Errors[i].Field = &e.Field
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body) // the client may be gone; nothing to do
}
