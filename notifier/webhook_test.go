package notifier_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/notifyd/notifyd/notifier"
)

// signSendGrid signs like SendGrid's event webhook: ECDSA over
// sha256(timestamp + body), ASN.1 DER, base64.
func signSendGrid(t *testing.T, key *ecdsa.PrivateKey, timestamp string, body []byte) string {
	t.Helper()
	h := sha256.Sum256(append([]byte(timestamp), body...))
	sig, err := ecdsa.SignASN1(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

// webhook posts events signed with key at time at ("" headers leave them out).
func (b *endUserBundle) webhook(t *testing.T, key *ecdsa.PrivateKey, at time.Time, body []byte) response {
	t.Helper()
	req, err := http.NewRequest("POST", b.server.URL+"/webhooks/sendgrid", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != nil {
		ts := strconv.FormatInt(at.Unix(), 10)
		req.Header.Set("X-Twilio-Email-Event-Webhook-Timestamp", ts)
		req.Header.Set("X-Twilio-Email-Event-Webhook-Signature", signSendGrid(t, key, ts, body))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: raw}
}

func (b *endUserBundle) deliveryID(t *testing.T, broadcastID int64, recipient string) int64 {
	t.Helper()
	var id int64
	if err := b.pool.QueryRow(context.Background(), `SELECT id FROM deliveries WHERE broadcast_id = $1 AND recipient_id = $2 AND channel = 'email'`,
		broadcastID, recipient).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// state is everything a webhook can change, to compare before and after.
func (b *endUserBundle) state(t *testing.T) string {
	t.Helper()
	var s string
	err := b.pool.QueryRow(context.Background(), `SELECT concat_ws(' | ',
		(SELECT count(*) FROM delivery_events),
		(SELECT string_agg(concat(id, ':', event, '@', event_at), ',' ORDER BY id) FROM deliveries WHERE event IS NOT NULL),
		(SELECT string_agg(encode(address_hash, 'hex'), ',' ORDER BY address_hash) FROM suppressed_addresses),
		(SELECT string_agg(concat(recipient_id, categories::text, source, valid_from), ',' ORDER BY recipient_id) FROM preferences),
		(SELECT count(*) FROM preference_history))`).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type sgEvent map[string]any

func eventsJSON(t *testing.T, events ...sgEvent) []byte {
	t.Helper()
	raw, err := json.Marshal(events)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestSendGridWebhook(t *testing.T) {
	t.Parallel()
	b := setupEndUsers(t)
	ctx := context.Background()
	b.putRecipient(t, "ada", "ada@example.com")
	b.putRecipient(t, "bob", "Bob@Example.com")
	b.putRecipient(t, "cy", "cy@example.com")
	b.putRecipient(t, "di", "di@example.com")
	first := b.broadcast(t, "news", time.Now(), "ada", "bob", "cy", "di")
	b.claim(t, first)
	// Expanded before the events arrive; sent after: the claim must see them.
	pendingBefore := b.broadcast(t, "news", time.Now(), "ada", "bob", "cy", "di")

	now := time.Now()
	id := func(r string) string { return strconv.FormatInt(b.deliveryID(t, first, r), 10) }
	body := eventsJSON(t,
		sgEvent{"sg_event_id": "ev-1", "event": "delivered", "email": "ada@example.com", "timestamp": now.Unix() - 5, "notifyd_delivery_id": id("ada"), "notifyd_broadcast_id": strconv.FormatInt(first, 10)},
		sgEvent{"sg_event_id": "ev-2", "event": "delivered", "email": "bob@example.com", "timestamp": now.Unix() - 9, "notifyd_delivery_id": id("bob")},
		sgEvent{"sg_event_id": "ev-3", "event": "bounce", "type": "bounce", "bounce_classification": "Invalid Address",
			"reason": "550 5.1.1 <bob@example.com>: no such user", "email": "BOB@example.com", "timestamp": now.Unix() - 4, "notifyd_delivery_id": id("bob")},
		sgEvent{"sg_event_id": "ev-4", "event": "unsubscribe", "email": "cy@example.com", "timestamp": now.Unix() - 3, "notifyd_delivery_id": id("cy")},
		sgEvent{"sg_event_id": "ev-5", "event": "spamreport", "email": "di@example.com", "timestamp": now.Unix() - 2, "notifyd_delivery_id": id("di")},
		sgEvent{"sg_event_id": "ev-6", "event": "bounce", "type": "blocked", "email": "ada@example.com", "timestamp": now.Unix() - 10, "notifyd_delivery_id": id("ada")},
		sgEvent{"sg_event_id": "ev-7", "event": "open", "email": "ada@example.com", "timestamp": now.Unix(), "notifyd_delivery_id": id("ada")},
		sgEvent{"sg_event_id": "ev-1", "event": "delivered", "email": "ada@example.com", "timestamp": now.Unix() - 5, "notifyd_delivery_id": id("ada")},
		sgEvent{"sg_event_id": "ev-8", "event": "delivered", "email": "someone@else.com", "timestamp": now.Unix(), "notifyd_delivery_id": "999999"},
	)

	// Refused requests change nothing.
	before := b.state(t)
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	refused := []struct {
		name string
		do   func() response
	}{
		{"unsigned", func() response { return b.webhook(t, nil, now, body) }},
		{"signed by another key", func() response { return b.webhook(t, stranger, now, body) }},
		{"stale timestamp", func() response { return b.webhook(t, b.webhookKey, now.Add(-11*time.Minute), body) }},
		{"timestamp far ahead", func() response { return b.webhook(t, b.webhookKey, now.Add(time.Hour), body) }},
		{"body changed after signing", func() response {
			ts := strconv.FormatInt(now.Unix(), 10)
			req, _ := http.NewRequest("POST", b.server.URL+"/webhooks/sendgrid", bytes.NewReader(append(bytes.Clone(body[:len(body)-1]), ` ]`...)))
			req.Header.Set("X-Twilio-Email-Event-Webhook-Timestamp", ts)
			req.Header.Set("X-Twilio-Email-Event-Webhook-Signature", signSendGrid(t, b.webhookKey, ts, body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return response{status: resp.StatusCode}
		}},
		{"timestamp changed after signing", func() response {
			ts := strconv.FormatInt(now.Unix(), 10)
			req, _ := http.NewRequest("POST", b.server.URL+"/webhooks/sendgrid", bytes.NewReader(body))
			req.Header.Set("X-Twilio-Email-Event-Webhook-Timestamp", strconv.FormatInt(now.Unix()+1, 10))
			req.Header.Set("X-Twilio-Email-Event-Webhook-Signature", signSendGrid(t, b.webhookKey, ts, body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return response{status: resp.StatusCode}
		}},
	}
	for _, tt := range refused {
		if r := tt.do(); r.status != 401 {
			t.Fatalf("%s = %d %s, want 401", tt.name, r.status, r.body)
		}
	}
	if after := b.state(t); after != before {
		t.Fatalf("refused webhooks changed state:\n%s\n%s", before, after)
	}

	// Signed and fresh.
	r := b.webhook(t, b.webhookKey, now, body)
	if r.status != 200 {
		t.Fatalf("webhook = %d %s", r.status, r.body)
	}
	var res notifier.WebhookResult
	_ = json.Unmarshal(r.body, &res)
	want := notifier.WebhookResult{Received: 9, Recorded: 7, Duplicates: 1, Ignored: 1, Suppressed: 2, Unsubscribed: 1}
	if res != want {
		t.Fatalf("result = %+v, want %+v", res, want)
	}
	// Each delivery shows its latest event, whatever the order they came in.
	page := b.do(t, "GET", fmt.Sprintf("/v1/broadcasts/%d/deliveries", first), b.sendKey, nil).json(t)
	got := map[string]string{}
	for _, d := range page["deliveries"].([]any) {
		d := d.(map[string]any)
		got[d["recipient_id"].(string)] = fmt.Sprint(d["status"], " ", d["event"])
		if d["event_at"] == nil {
			t.Fatalf("delivery %v has no event_at", d)
		}
	}
	wantEvents := map[string]string{"ada": "sent delivered", "bob": "sent bounce", "cy": "sent unsubscribe", "di": "sent spamreport"}
	if fmt.Sprint(got) != fmt.Sprint(wantEvents) {
		t.Fatalf("deliveries = %v, want %v", got, wantEvents)
	}
	if n := b.count(t, `SELECT count(*) FROM delivery_events WHERE event_id = 'ev-3' AND detail = 'bounce: Invalid Address'`); n != 1 {
		t.Fatal("the bounce's detail is not kept")
	}
	if n := b.count(t, `SELECT count(*) FROM delivery_events WHERE event_id = 'ev-8' AND delivery_id IS NULL`); n != 1 {
		t.Fatal("an event naming an unknown delivery should be kept unlinked")
	}
	// The bounced and the spam-reporting addresses are suppressed, by hash only; a
	// block is not a bounce.
	if n := b.count(t, `SELECT count(*) FROM suppressed_addresses WHERE address_hash IN
		(sha256('bob@example.com'), sha256('di@example.com'))`); n != 2 {
		t.Fatalf("suppressed = %d, want bob and di", n)
	}
	// The unsubscribe turned the category off, from SendGrid.
	var source string
	_ = b.pool.QueryRow(ctx, `SELECT source FROM preferences WHERE recipient_id = 'cy'`).Scan(&source)
	if p := b.preferences(t, "cy"); p["news"]["email"] != false || source != "sendgrid" {
		t.Fatalf("cy's preferences = %v from %q", p, source)
	}

	// A replay (a retry, or someone resending a captured request with a fresh
	// signature) changes nothing, even after cy subscribed again.
	if r := b.do(t, "PUT", "/v1/recipients/cy/preferences", b.sendKey, map[string]any{"categories": map[string]any{}}); r.status != 200 {
		t.Fatal("resubscribe")
	}
	before = b.state(t)
	r = b.webhook(t, b.webhookKey, time.Now(), body)
	if r.status != 200 {
		t.Fatalf("replay = %d %s", r.status, r.body)
	}
	_ = json.Unmarshal(r.body, &res)
	if res.Recorded != 0 || res.Duplicates != 8 {
		t.Fatalf("replay result = %+v, want everything a duplicate", res)
	}
	if after := b.state(t); after != before {
		t.Fatalf("a replay changed state:\n%s\n%s", before, after)
	}

	// The next sends leave the suppressed addresses out: at claim for the
	// broadcast expanded before, at expansion for a new one.
	sent := b.claim(t, pendingBefore)
	for r, want := range map[string]string{"bob": "suppressed suppressed_address", "di": "suppressed suppressed_address", "cy": "sent ", "ada": "sent "} {
		if st, reason := b.delivery(t, pendingBefore, r); st+" "+reason != want {
			t.Fatalf("%s at claim = %s %s, want %s", r, st, reason, want)
		}
	}
	if len(sent) != 2 {
		t.Fatalf("sent to %d, want ada and cy", len(sent))
	}
	next := b.broadcast(t, "news", time.Now(), "ada", "bob", "cy", "di")
	for r, want := range map[string]string{"bob": "suppressed suppressed_address", "di": "suppressed suppressed_address", "cy": "pending ", "ada": "pending "} {
		if st, reason := b.delivery(t, next, r); st+" "+reason != want {
			t.Fatalf("%s at expansion = %s %s, want %s", r, st, reason, want)
		}
	}
	// Suppression holds for required categories too: the address cannot receive.
	security := b.broadcast(t, "security", time.Now(), "bob")
	if st, reason := b.delivery(t, security, "bob"); reason != "suppressed_address" {
		t.Fatalf("bob's security email = %s %s", st, reason)
	}
}

func TestErasureKeepsTheSuppressionAsAHash(t *testing.T) {
	t.Parallel()
	b := setupEndUsers(t)
	b.putRecipient(t, "bob", "bob@example.com")
	first := b.broadcast(t, "news", time.Now(), "bob")
	b.claim(t, first)
	body := eventsJSON(t, sgEvent{"sg_event_id": "ev-1", "event": "dropped", "reason": "Bounced Address", "email": "bob@example.com",
		"timestamp": time.Now().Unix(), "notifyd_delivery_id": strconv.FormatInt(b.deliveryID(t, first, "bob"), 10)})
	if r := b.webhook(t, b.webhookKey, time.Now(), body); r.status != 200 {
		t.Fatalf("webhook = %d %s", r.status, r.body)
	}
	if r := b.do(t, "DELETE", "/v1/recipients/bob", b.sendKey, nil); r.status != 204 {
		t.Fatalf("DELETE = %d", r.status)
	}
	// Nothing holds the address any more ...
	for _, q := range []string{
		`SELECT count(*) FROM recipients WHERE email IS NOT NULL`,
		`SELECT count(*) FROM recipient_history WHERE email IS NOT NULL`,
		`SELECT count(*) FROM deliveries WHERE address IS NOT NULL`,
		`SELECT count(*) FROM delivery_events WHERE detail IS NOT NULL`,
	} {
		if n := b.count(t, q); n != 0 {
			t.Fatalf("%s = %d after erasure", q, n)
		}
	}
	// ... but its hash: the address stays suppressed when it comes back.
	if n := b.count(t, `SELECT count(*) FROM suppressed_addresses WHERE address_hash = sha256('bob@example.com') AND reason = 'bounced'`); n != 1 {
		t.Fatal("erasure removed the suppression")
	}
	b.putRecipient(t, "robert", "BOB@example.com")
	next := b.broadcast(t, "news", time.Now(), "robert")
	if st, reason := b.delivery(t, next, "robert"); st != "suppressed" || reason != "suppressed_address" {
		t.Fatalf("the erased, bounced address came back as %s %s", st, reason)
	}
}

func TestWebhookRefusesWhatItCannotRead(t *testing.T) {
	t.Parallel()
	b := setupEndUsers(t)
	if r := b.webhook(t, b.webhookKey, time.Now(), []byte(`{"not": "an array"}`)); r.status != 400 {
		t.Fatalf("signed non-array = %d %s, want 400", r.status, r.body)
	}
	// Events it does not know or cannot use are acknowledged, so SendGrid does not
	// retry them forever.
	r := b.webhook(t, b.webhookKey, time.Now(), []byte(`[{"event": "delivered"}, {"sg_event_id": 5}, {"sg_event_id": "x", "event": "processed"}, 7]`))
	if r.status != 200 || !bytes.Contains(r.body, []byte(`"ignored":4`)) {
		t.Fatalf("unusable events = %d %s", r.status, r.body)
	}
	// Without a key the webhook is off.
	plain := setup(t)
	if r := plain.do(t, "POST", "/webhooks/sendgrid", "", "[]"); r.status != 503 {
		t.Fatalf("webhook without a key = %d, want 503", r.status)
	}
}

func TestParseSendGridWebhookKey(t *testing.T) {
	t.Parallel()
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	if _, err := notifier.ParseSendGridWebhookKey(" " + base64.StdEncoding.EncodeToString(der) + "\n"); err != nil {
		t.Fatalf("valid key: %v", err)
	}
	// An Ed25519 key would make the SDK's helper panic; it is refused instead.
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	edDER, _ := x509.MarshalPKIXPublicKey(edPub)
	for name, key := range map[string]string{
		"not base64": "%%%", "not a key": base64.StdEncoding.EncodeToString([]byte("hello")),
		"ed25519": base64.StdEncoding.EncodeToString(edDER), "empty": "",
	} {
		if _, err := notifier.ParseSendGridWebhookKey(key); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
