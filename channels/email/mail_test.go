package email

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/sendgrid/sendgrid-go/helpers/mail"

	"github.com/notifyd/notifyd/notifier"
)

// msg builds a broadcast delivery to to with the given bodies.
func msg(id int64, to, text, html string) notifier.Message {
	return notifier.Message{
		DeliveryID:  id,
		BroadcastID: 7,
		Email:       &notifier.EmailMessage{To: to, Subject: fmt.Sprintf("Subject %d", id), Text: text, HTML: html},
	}
}

func TestToSendGridMail(t *testing.T) {
	t.Parallel()
	from := mail.Email{Name: "News", Address: "news@example.com"}
	unsub := map[string]string{"List-Unsubscribe": "<https://n.example.com/unsubscribe/t1>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}

	type pers struct {
		to, name, subject string
		headers           map[string]string
		subs              map[string]string
		args              map[string]string
	}
	tests := []struct {
		name        string
		msgs        []notifier.Message
		wantContent []mail.Content
		want        []pers
	}{
		{
			name: "identical bodies are sent once",
			msgs: []notifier.Message{
				msg(1, "a@example.com", "Hi", "<p>Hi</p>"),
				msg(2, "b@example.com", "Hi", "<p>Hi</p>"),
			},
			wantContent: []mail.Content{{Type: "text/plain", Value: "Hi"}, {Type: "text/html", Value: "<p>Hi</p>"}},
			want: []pers{
				{to: "a@example.com", subject: "Subject 1", args: map[string]string{"notifyd_delivery_id": "1", "notifyd_broadcast_id": "7"}},
				{to: "b@example.com", subject: "Subject 2", args: map[string]string{"notifyd_delivery_id": "2", "notifyd_broadcast_id": "7"}},
			},
		},
		{
			name: "different bodies travel as substitutions",
			msgs: []notifier.Message{
				msg(1, "a@example.com", "Hi Ann", "<p>Hi Ann</p>"),
				msg(2, "b@example.com", "Hi Bob", "<p>Hi Bob</p>"),
			},
			wantContent: []mail.Content{{Type: "text/plain", Value: textTag}, {Type: "text/html", Value: htmlTag}},
			want: []pers{
				{to: "a@example.com", subject: "Subject 1", subs: map[string]string{textTag: "Hi Ann", htmlTag: "<p>Hi Ann</p>"},
					args: map[string]string{"notifyd_delivery_id": "1", "notifyd_broadcast_id": "7"}},
				{to: "b@example.com", subject: "Subject 2", subs: map[string]string{textTag: "Hi Bob", htmlTag: "<p>Hi Bob</p>"},
					args: map[string]string{"notifyd_delivery_id": "2", "notifyd_broadcast_id": "7"}},
			},
		},
		{
			name: "html only has no text part",
			msgs: []notifier.Message{
				msg(1, "a@example.com", "", "<p>A</p>"),
				msg(2, "b@example.com", "", "<p>B</p>"),
			},
			wantContent: []mail.Content{{Type: "text/html", Value: htmlTag}},
			want: []pers{
				{to: "a@example.com", subject: "Subject 1", subs: map[string]string{htmlTag: "<p>A</p>"},
					args: map[string]string{"notifyd_delivery_id": "1", "notifyd_broadcast_id": "7"}},
				{to: "b@example.com", subject: "Subject 2", subs: map[string]string{htmlTag: "<p>B</p>"},
					args: map[string]string{"notifyd_delivery_id": "2", "notifyd_broadcast_id": "7"}},
			},
		},
		{
			name: "notification with name, headers and category",
			msgs: []notifier.Message{{
				DeliveryID: 9, NotificationID: 4, Category: "security",
				Email: &notifier.EmailMessage{To: "Ann Lee <ann@example.com>", Subject: "Sign-in", Text: "New sign-in", Headers: unsub},
			}},
			wantContent: []mail.Content{{Type: "text/plain", Value: "New sign-in"}},
			want: []pers{{
				to: "ann@example.com", name: "Ann Lee", subject: "Sign-in", headers: unsub,
				args: map[string]string{"notifyd_delivery_id": "9", "notifyd_broadcast_id": "0", "notifyd_notification_id": "4", "notifyd_category": "security"},
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := toSendGridMail(from, tt.msgs)
			if m.From == nil || *m.From != from {
				t.Errorf("from = %+v, want %+v", m.From, from)
			}
			var content []mail.Content
			for _, c := range m.Content {
				content = append(content, *c)
			}
			if !reflect.DeepEqual(content, tt.wantContent) {
				t.Errorf("content = %+v, want %+v", content, tt.wantContent)
			}
			if len(m.Personalizations) != len(tt.want) {
				t.Fatalf("%d personalizations, want %d", len(m.Personalizations), len(tt.want))
			}
			for i, w := range tt.want {
				p := m.Personalizations[i]
				got := pers{subject: p.Subject, headers: p.Headers, subs: p.Substitutions, args: p.CustomArgs}
				if len(p.To) == 1 {
					got.to, got.name = p.To[0].Address, p.To[0].Name
				}
				if !reflect.DeepEqual(got, w) {
					t.Errorf("personalization %d = %+v, want %+v", i, got, w)
				}
			}
			// What goes on the wire: the SDK's own encoding.
			var wire map[string]any
			if err := json.Unmarshal(mail.GetRequestBody(m), &wire); err != nil {
				t.Fatal(err)
			}
			if _, ok := wire["subject"]; ok {
				t.Error("request has a top-level subject; subjects belong to personalizations")
			}
		})
	}
}

func TestPlanBatches(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", maxSubstitutionBytes)
	// addrs makes n messages with distinct addresses and the given body.
	addrs := func(start, n int, body func(i int) string) []notifier.Message {
		out := make([]notifier.Message, n)
		for i := range n {
			out[i] = msg(int64(start+i), fmt.Sprintf("u%d@example.com", start+i), body(start+i), "")
		}
		return out
	}
	same := func(string) func(int) string { return func(int) string { return "same" } }
	unique := func(i int) string { return fmt.Sprintf("body %d", i) }

	tests := []struct {
		name string
		msgs []notifier.Message
		// want is the batch sizes in order.
		want []int
	}{
		{name: "one body, one request", msgs: addrs(0, 5, same("")), want: []int{5}},
		{name: "one body, split at 1000", msgs: addrs(0, 2500, same("")), want: []int{1000, 1000, 500}},
		{name: "unique bodies share a substitution request", msgs: addrs(0, 1000, unique), want: []int{1000}},
		{name: "large shared group goes apart", msgs: append(addrs(0, 10, same("")), addrs(10, 5, unique)...), want: []int{10, 5}},
		{name: "small shared group joins substitutions", msgs: append(addrs(0, 3, same("")), addrs(3, 5, unique)...), want: []int{8}},
		{
			name: "oversize unique bodies go alone",
			msgs: append(addrs(0, 2, func(i int) string { return big + fmt.Sprint(i) }), addrs(2, 3, unique)...),
			want: []int{1, 1, 3},
		},
		{
			name: "oversize identical bodies share",
			msgs: append(addrs(0, 2, func(int) string { return big }), addrs(2, 3, unique)...),
			want: []int{2, 3},
		},
		{
			name: "text-only and html-only are different requests",
			msgs: []notifier.Message{
				msg(1, "a@example.com", "t1", ""), msg(2, "b@example.com", "", "h2"),
				msg(3, "c@example.com", "t3", ""), msg(4, "d@example.com", "", "h4"),
			},
			want: []int{2, 2},
		},
		{
			name: "repeated address starts another request",
			msgs: []notifier.Message{
				msg(1, "a@example.com", "x", ""), msg(2, "A@Example.com", "x", ""),
				msg(3, "b@example.com", "x", ""), msg(4, "Ann <a@example.com>", "x", ""),
			},
			want: []int{2, 1, 1},
		},
		{
			name: "placeholder in the subject keeps a message out of substitutions",
			msgs: []notifier.Message{
				{DeliveryID: 1, Email: &notifier.EmailMessage{To: "a@example.com", Subject: "about " + textTag, Text: "a"}},
				msg(2, "b@example.com", "b", ""), msg(3, "c@example.com", "c", ""),
			},
			want: []int{1, 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			batches := planBatches(tt.msgs)
			var sizes []int
			seen := make(map[int]bool)
			for _, b := range batches {
				sizes = append(sizes, len(b))
				addrs := make(map[string]bool)
				for _, i := range b {
					if seen[i] {
						t.Errorf("message %d planned twice", i)
					}
					seen[i] = true
					a := addressKey(tt.msgs[i].Email.To)
					if addrs[a] {
						t.Errorf("address of message %d repeated in one request", i)
					}
					addrs[a] = true
				}
				if !substitutionsFit(toSendGridMail(mail.Email{Address: "n@example.com"}, pick(tt.msgs, b))) {
					t.Errorf("batch %v has substitutions over the limit", b)
				}
			}
			if len(seen) != len(tt.msgs) {
				t.Errorf("planned %d of %d messages", len(seen), len(tt.msgs))
			}
			if !reflect.DeepEqual(sizes, tt.want) {
				t.Errorf("batch sizes = %v, want %v", sizes, tt.want)
			}
		})
	}
}

func pick(msgs []notifier.Message, idx []int) []notifier.Message {
	out := make([]notifier.Message, len(idx))
	for k, i := range idx {
		out[k] = msgs[i]
	}
	return out
}

func substitutionsFit(m *mail.SGMailV3) bool {
	for _, p := range m.Personalizations {
		n := 0
		for k, v := range p.Substitutions {
			n += len(k) + len(v)
		}
		if n >= maxSubstitutionBytes {
			return false
		}
	}
	return true
}

func TestJSONLen(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "plain", `<a href="x">&amp;</a>`, "tab\tnew\nline\x01", "héllo ✓ \u2028", "bad \xff byte"} {
		enc, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := jsonLen(s), len(enc)-2; got != want {
			t.Errorf("jsonLen(%q) = %d, encoding/json writes %d", s, got, want)
		}
	}
}
