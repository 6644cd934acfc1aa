package email

import (
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/sendgrid/sendgrid-go/helpers/mail"

	"github.com/notifyd/notifyd/notifier"
)

// Limits of SendGrid's v3 mail send API that decide how messages are batched.
const (
	// maxPersonalizations is both the personalizations and the recipients limit
	// of one request; every personalization here has exactly one recipient.
	maxPersonalizations = 1000
	// maxSubstitutionBytes bounds the substitutions of one personalization.
	// SendGrid's documentation has said 10,000 and 50,000 bytes in different
	// places; we keep below the smaller.
	maxSubstitutionBytes = 10000
	// minSharedGroup is how many recipients with one identical body earn a
	// request of their own with the body sent once. Smaller groups ride in the
	// substitution request instead, so a batch of mostly personalised bodies with
	// a few coincidences still goes out in one request rather than dozens.
	minSharedGroup = 10
)

// Placeholders put in the request's content when bodies differ per recipient;
// each personalization's substitutions map them to that recipient's body.
const (
	textTag = "-notifyd-text-"
	htmlTag = "-notifyd-html-"
)

// Custom args every personalization carries, so webhook events can be matched
// to deliveries.
const (
	argDeliveryID     = "notifyd_delivery_id"
	argBroadcastID    = "notifyd_broadcast_id"
	argNotificationID = "notifyd_notification_id"
	argCategory       = "notifyd_category"
)

// toSendGridMail builds one v3 mail send request with one personalization per
// message. When every message has the same text and HTML body, the body is sent
// once as the request's content; otherwise the content holds placeholders and
// each personalization's substitutions carry that recipient's rendered body.
// msgs must be non-empty and already validated (see validate); the caller keeps
// the batch within SendGrid's limits (see planBatches). Headers maps are shared
// with msgs, not copied.
func toSendGridMail(from mail.Email, msgs []notifier.Message) *mail.SGMailV3 {
	m := mail.NewV3Mail()
	sender := from
	m.SetFrom(&sender)

	first := msgs[0].Email
	shared := true
	hasText, hasHTML := false, false
	for _, msg := range msgs {
		if msg.Email.Text != first.Text || msg.Email.HTML != first.HTML {
			shared = false
		}
		hasText = hasText || msg.Email.Text != ""
		hasHTML = hasHTML || msg.Email.HTML != ""
	}

	// SendGrid insists on text/plain before text/html.
	switch {
	case shared:
		if first.Text != "" {
			m.AddContent(mail.NewContent("text/plain", first.Text))
		}
		if first.HTML != "" {
			m.AddContent(mail.NewContent("text/html", first.HTML))
		}
	default:
		if hasText {
			m.AddContent(mail.NewContent("text/plain", textTag))
		}
		if hasHTML {
			m.AddContent(mail.NewContent("text/html", htmlTag))
		}
	}

	m.Personalizations = make([]*mail.Personalization, 0, len(msgs))
	for _, msg := range msgs {
		p := &mail.Personalization{
			To:         []*mail.Email{recipient(msg.Email.To)},
			Subject:    msg.Email.Subject,
			Headers:    msg.Email.Headers,
			CustomArgs: customArgs(msg),
		}
		if !shared {
			p.Substitutions = make(map[string]string, 2)
			if hasText {
				p.Substitutions[textTag] = msg.Email.Text
			}
			if hasHTML {
				p.Substitutions[htmlTag] = msg.Email.HTML
			}
		}
		m.AddPersonalizations(p)
	}
	return m
}

func customArgs(msg notifier.Message) map[string]string {
	args := make(map[string]string, 4)
	args[argDeliveryID] = strconv.FormatInt(msg.DeliveryID, 10)
	args[argBroadcastID] = strconv.FormatInt(msg.BroadcastID, 10)
	if msg.BroadcastID == 0 {
		args[argNotificationID] = strconv.FormatInt(msg.NotificationID, 10)
	}
	if msg.Category != "" {
		args[argCategory] = msg.Category
	}
	return args
}

// recipient turns EmailMessage.To, a bare address or "Name <address>", into a
// SendGrid email object. It skips the RFC 5322 parser for bare addresses, which
// are nearly all of them, because it runs once per recipient per request.
func recipient(to string) *mail.Email {
	if isBareAddress(to) {
		return &mail.Email{Address: to}
	}
	e, err := mail.ParseEmail(to)
	if err != nil {
		// validate rejects these before a request is built.
		return &mail.Email{Address: to}
	}
	return e
}

func isBareAddress(s string) bool {
	return !strings.ContainsAny(s, "<>\" \t(),;:")
}

// planBatches groups messages into requests, each as large as SendGrid allows,
// and returns the indices of msgs in each. Messages are validated.
//
//   - Recipients sharing a body in groups of minSharedGroup or more (or every
//     message, when all bodies are equal) go out with the body sent once.
//   - Other messages go into substitution requests, one per combination of body
//     parts present, since a request has one content list.
//   - A message whose body is too large for substitutions (or contains one of
//     our placeholders) can only share a request with identical bodies; if none
//     exist it goes alone.
//
// SendGrid rejects a whole request that names an address twice, so a repeated
// address always starts another request.
func planBatches(msgs []notifier.Message) [][]int {
	type bodyKey struct{ text, html string }
	groups := make(map[bodyKey][]int)
	var order []bodyKey
	for i, m := range msgs {
		k := bodyKey{m.Email.Text, m.Email.HTML}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], i)
	}

	var batches [][]int
	type shape struct{ text, html bool }
	pools := make(map[shape][]int)
	var poolOrder []shape
	for _, k := range order {
		g := groups[k]
		if len(order) == 1 || len(g) >= minSharedGroup {
			batches = append(batches, chunk(msgs, g)...)
			continue
		}
		var alone []int
		for _, i := range g {
			if !substitutable(msgs[i].Email) {
				alone = append(alone, i)
				continue
			}
			s := shape{k.text != "", k.html != ""}
			if _, ok := pools[s]; !ok {
				poolOrder = append(poolOrder, s)
			}
			pools[s] = append(pools[s], i)
		}
		if len(alone) > 0 {
			batches = append(batches, chunk(msgs, alone)...)
		}
	}
	for _, s := range poolOrder {
		batches = append(batches, chunk(msgs, pools[s])...)
	}
	return batches
}

// chunk splits idx into requests of at most maxPersonalizations, none naming an
// address twice. Each message goes into the first request with room that does
// not have its address yet; with no repeated addresses that is plain slicing.
func chunk(msgs []notifier.Message, idx []int) [][]int {
	type open struct {
		idx   []int
		addrs map[string]struct{}
	}
	var chunks []*open
	var out [][]int
	for _, i := range idx {
		addr := addressKey(msgs[i].Email.To)
		var c *open
		for _, o := range chunks {
			if _, dup := o.addrs[addr]; !dup {
				c = o
				break
			}
		}
		if c == nil {
			c = &open{addrs: make(map[string]struct{}, min(len(idx), maxPersonalizations))}
			chunks = append(chunks, c)
		}
		c.idx = append(c.idx, i)
		c.addrs[addr] = struct{}{}
		if len(c.idx) == maxPersonalizations {
			out = append(out, c.idx)
			chunks = slices.DeleteFunc(chunks, func(o *open) bool { return o == c })
		}
	}
	for _, c := range chunks {
		out = append(out, c.idx)
	}
	return out
}

// addressKey is the address as SendGrid compares it for duplicates.
func addressKey(to string) string {
	return strings.ToLower(recipient(to).Address)
}

// substitutable reports whether e's body can travel in a personalization's
// substitutions: within the size limit, and free of our placeholders, which
// SendGrid would replace inside the subject or the body itself.
func substitutable(e *notifier.EmailMessage) bool {
	raw := 0
	if e.Text != "" {
		raw += len(textTag) + len(e.Text)
	}
	if e.HTML != "" {
		raw += len(htmlTag) + len(e.HTML)
	}
	// Escaping at most sextuples a byte, so the exact count is only needed
	// near the limit.
	if raw >= maxSubstitutionBytes {
		return false
	}
	if 6*raw >= maxSubstitutionBytes {
		size := 0
		if e.Text != "" {
			size += jsonLen(textTag) + jsonLen(e.Text)
		}
		if e.HTML != "" {
			size += jsonLen(htmlTag) + jsonLen(e.HTML)
		}
		if size >= maxSubstitutionBytes {
			return false
		}
	}
	for _, s := range []string{e.Subject, e.Text, e.HTML} {
		if strings.Contains(s, textTag) || strings.Contains(s, htmlTag) {
			return false
		}
	}
	return true
}

// jsonLen is the length of s as encoding/json writes it (without quotes).
// SendGrid does not say whether its substitution limit counts escaped or
// decoded bytes, so we count the larger.
func jsonLen(s string) int {
	n := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f':
				n += 2
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				n += 6 // \u00XX
			default:
				n++
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			n += 6 // invalid bytes become \ufffd
		case r == '\u2028' || r == '\u2029':
			n += 6
		default:
			n += size
		}
		i += size
	}
	return n
}
