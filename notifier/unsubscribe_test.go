package notifier_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/notifyd/notifyd/migrations/pgtest"
	"github.com/notifyd/notifyd/notifier"
)

const (
	testSecret    = "test-secret-of-at-least-thirty-two-bytes"
	testPublicURL = "https://notify.example.test"
)

// fakeEnqueuer keeps the delivery batches instead of queueing jobs, so a test
// can claim them itself.
type fakeEnqueuer struct {
	mu      sync.Mutex
	batches []notifier.DeliveryBatch
}

func (f *fakeEnqueuer) EnqueueExpandTx(context.Context, pgx.Tx, int64, time.Time) error { return nil }

func (f *fakeEnqueuer) EnqueueDeliveriesTx(_ context.Context, _ pgx.Tx, batches []notifier.DeliveryBatch, _ bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batches = append(f.batches, batches...)
	return nil
}

func (f *fakeEnqueuer) of(broadcastID int64) []notifier.DeliveryBatch {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []notifier.DeliveryBatch
	for _, b := range f.batches {
		if b.BroadcastID == broadcastID {
			out = append(out, b)
		}
	}
	return out
}

// endUserBundle is a server whose service signs unsubscribe links and verifies
// webhooks with a key the test holds.
type endUserBundle struct {
	*testBundle
	enq        *fakeEnqueuer
	key        *notifier.APIKey
	webhookKey *ecdsa.PrivateKey
}

// setupEndUsers starts the bundle; each option may change the service's options.
func setupEndUsers(t *testing.T, options ...func(*notifier.ServiceOpts)) *endUserBundle {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := notifier.ParseSendGridWebhookKey(base64.StdEncoding.EncodeToString(der))
	if err != nil {
		t.Fatal(err)
	}
	pool := pgtest.NewPool(t)
	enq := &fakeEnqueuer{}
	opts := &notifier.ServiceOpts{
		RequiredCategories: []string{"security"}, Enqueuer: enq,
		Secret: []byte(testSecret), PublicURL: testPublicURL + "/", SendGridWebhookKey: pub,
	}
	for _, option := range options {
		option(opts)
	}
	svc := notifier.NewService(pool, nil, opts)
	srv := httptest.NewServer(notifier.NewServer(svc, nil, nil))
	t.Cleanup(srv.Close)
	b := &endUserBundle{testBundle: &testBundle{pool: pool, svc: svc, server: srv}, enq: enq, webhookKey: priv}
	if b.key, b.sendKey, err = svc.CreateAPIKey(context.Background(), "sender", []string{notifier.ScopeSend}); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *endUserBundle) putRecipient(t *testing.T, id, email string) {
	t.Helper()
	if r := b.do(t, "PUT", "/v1/recipients/"+id, b.sendKey, map[string]any{"email": email}); r.status != 201 && r.status != 200 {
		t.Fatalf("PUT recipient %s = %d %s", id, r.status, r.body)
	}
}

// broadcast creates an email broadcast to recipients and expands it.
func (b *endUserBundle) broadcast(t *testing.T, category string, cutoff time.Time, recipients ...string) int64 {
	t.Helper()
	ctx := context.Background()
	bc, err := b.svc.CreateBroadcast(ctx, b.key, notifier.BroadcastInput{
		Name: "b", Category: category, Recipients: recipients, Channels: []string{"email"},
		Email: &notifier.EmailContent{Subject: "Hello", Text: "Hi {{.Recipient.ID}}"}, CutoffAt: &cutoff,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := b.svc.ExpandBroadcast(ctx, bc.ID, time.Minute); err != nil || !res.Done {
		t.Fatalf("expand = %+v, %v", res, err)
	}
	return bc.ID
}

// claim claims every batch of the broadcast, as the deliver worker does right
// before the provider call, and records the claimed messages as sent.
func (b *endUserBundle) claim(t *testing.T, broadcastID int64) map[string]notifier.Message {
	t.Helper()
	ctx := context.Background()
	out := map[string]notifier.Message{}
	for _, batch := range b.enq.of(broadcastID) {
		c, err := b.svc.ClaimBatch(ctx, b.pool, batch)
		if err != nil {
			t.Fatal(err)
		}
		var results []notifier.SendResult
		for _, m := range c.Messages {
			out[m.RecipientID] = m
			results = append(results, notifier.SendResult{DeliveryID: m.DeliveryID, ProviderID: "msg-" + m.RecipientID})
		}
		if _, err := b.svc.RecordResults(ctx, b.pool, results, notifier.RecordOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// delivery returns the status and reason of a recipient's email delivery.
func (b *endUserBundle) delivery(t *testing.T, broadcastID int64, recipient string) (status, reason string) {
	t.Helper()
	err := b.pool.QueryRow(context.Background(), `SELECT status, coalesce(reason, '') FROM deliveries
		WHERE broadcast_id = $1 AND recipient_id = $2 AND channel = 'email'`, broadcastID, recipient).Scan(&status, &reason)
	if err != nil {
		t.Fatal(err)
	}
	return status, reason
}

func (b *endUserBundle) preferences(t *testing.T, recipient string) map[string]map[string]bool {
	t.Helper()
	r := b.do(t, "GET", "/v1/recipients/"+recipient+"/preferences", b.sendKey, nil)
	if r.status != 200 {
		t.Fatalf("GET preferences = %d %s", r.status, r.body)
	}
	var p notifier.Preferences
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatal(err)
	}
	return p.Categories
}

// post sends a one-click unsubscribe as a mail client does (RFC 8058).
func (b *endUserBundle) oneClick(t *testing.T, token string) response {
	t.Helper()
	resp, err := http.Post(b.server.URL+"/unsubscribe/"+token, "application/x-www-form-urlencoded", strings.NewReader("List-Unsubscribe=One-Click"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: raw}
}

func tokenOf(t *testing.T, m notifier.Message) string {
	t.Helper()
	if m.Email == nil {
		t.Fatalf("message %+v has no email", m)
	}
	h := m.Email.Headers["List-Unsubscribe"]
	prefix := "<" + testPublicURL + "/unsubscribe/"
	if !strings.HasPrefix(h, prefix) || !strings.HasSuffix(h, ">") {
		t.Fatalf("List-Unsubscribe = %q, want %s{token}>", h, prefix)
	}
	if p := m.Email.Headers["List-Unsubscribe-Post"]; p != "List-Unsubscribe=One-Click" {
		t.Fatalf("List-Unsubscribe-Post = %q", p)
	}
	return strings.TrimSuffix(strings.TrimPrefix(h, prefix), ">")
}

func TestOptOutAfterTheCutoffSuppresses(t *testing.T) {
	t.Parallel()
	b := setupEndUsers(t)
	for _, id := range []string{"ada", "bob", "cy"} {
		b.putRecipient(t, id, id+"@example.com")
	}
	cutoff := time.Now()
	time.Sleep(20 * time.Millisecond)

	// Opted out after the cut-off, before the expansion: the expansion reads
	// preferences live, whatever the audience's snapshot time.
	if r := b.do(t, "PUT", "/v1/recipients/ada/preferences", b.sendKey,
		map[string]any{"categories": map[string]any{"news": map[string]any{"email": false}}}); r.status != 200 {
		t.Fatalf("PUT preferences = %d %s", r.status, r.body)
	}
	first := b.broadcast(t, "news", cutoff, "ada", "bob", "cy")
	if st, reason := b.delivery(t, first, "ada"); st != "suppressed" || reason != "preference" {
		t.Fatalf("ada after expansion = %s %s, want suppressed preference", st, reason)
	}

	// Opted out after the expansion, before the send (through the link of an
	// earlier email): the claim reads preferences live too.
	second := b.broadcast(t, "news", cutoff, "ada", "bob", "cy")
	if st, _ := b.delivery(t, second, "bob"); st != "pending" {
		t.Fatalf("bob after expansion = %s, want pending", st)
	}
	token, err := b.svc.UnsubscribeToken("bob", "news", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if r := b.oneClick(t, token); r.status != 200 {
		t.Fatalf("unsubscribe = %d %s", r.status, r.body)
	}
	sent := b.claim(t, second)
	if st, reason := b.delivery(t, second, "bob"); st != "suppressed" || reason != "preference" {
		t.Fatalf("bob at claim = %s %s, want suppressed preference", st, reason)
	}
	if _, ok := sent["bob"]; ok || len(sent) != 1 {
		t.Fatalf("claimed %v, want only cy", sent)
	}
	if st, _ := b.delivery(t, second, "cy"); st != "sent" {
		t.Fatalf("cy = %s, want sent", st)
	}
}

func TestEmailsCarryOneClickUnsubscribe(t *testing.T) {
	t.Parallel()
	b := setupEndUsers(t)
	b.putRecipient(t, "ada", "ada@example.com")
	b.putRecipient(t, "bob", "bob@example.com")
	// ada has other preferences, which unsubscribing must keep.
	b.do(t, "PUT", "/v1/recipients/ada/preferences", b.sendKey,
		map[string]any{"categories": map[string]any{"marketing": map[string]any{"push": false}}})

	news := b.claim(t, b.broadcast(t, "news", time.Now(), "ada", "bob"))
	token := tokenOf(t, news["ada"])
	link, err := b.svc.ParseUnsubscribeToken(token, time.Now())
	if err != nil || link.RecipientID != "ada" || link.Category != "news" {
		t.Fatalf("token says %+v, %v", link, err)
	}
	if d := time.Until(link.ExpiresAt); d < 360*24*time.Hour || d > 366*24*time.Hour {
		t.Fatalf("link expires in %s, want about a year", d)
	}
	if tokenOf(t, news["bob"]) == token {
		t.Fatal("two recipients share a token")
	}

	// GET shows a confirmation page and changes nothing (link scanners GET).
	page := b.do(t, "GET", "/unsubscribe/"+token, "", nil)
	if page.status != 200 || !strings.HasPrefix(page.header.Get("Content-Type"), "text/html") ||
		!strings.Contains(string(page.body), `<form method="post">`) || !strings.Contains(string(page.body), "news") {
		t.Fatalf("GET page = %d %s %s", page.status, page.header.Get("Content-Type"), page.body)
	}
	if page.header.Get("Referrer-Policy") != "no-referrer" {
		t.Fatal("the page may leak its token through Referer")
	}
	if p := b.preferences(t, "ada"); p["news"] != nil {
		t.Fatalf("GET changed preferences: %v", p)
	}

	// One POST, no login.
	if r := b.oneClick(t, token); r.status != 200 || !strings.Contains(string(r.body), "unsubscribed") {
		t.Fatalf("POST = %d %s", r.status, r.body)
	}
	p := b.preferences(t, "ada")
	if p["news"]["email"] != false || len(p["news"]) != 1 || p["marketing"]["push"] != false {
		t.Fatalf("preferences after unsubscribe = %v, want news.email off and marketing.push kept", p)
	}
	var source string
	_ = b.pool.QueryRow(context.Background(), `SELECT source FROM preferences WHERE recipient_id = 'ada'`).Scan(&source)
	if source != "unsubscribe" {
		t.Fatalf("source = %q, want unsubscribe", source)
	}
	// The previous preferences are in the history.
	if n := b.count(t, `SELECT count(*) FROM preference_history WHERE recipient_id = 'ada'
		AND categories = '{"marketing": {"push": false}}' AND source = 'api'`); n != 1 {
		t.Fatalf("history rows of the previous preferences = %d, want 1", n)
	}
	// A second click (or the mail client's retry) changes nothing.
	if r := b.oneClick(t, token); r.status != 200 {
		t.Fatalf("second POST = %d", r.status)
	}
	if n := b.count(t, `SELECT count(*) FROM preference_history WHERE recipient_id = 'ada'`); n != 1 {
		t.Fatalf("a repeated unsubscribe wrote history: %d rows", n)
	}
	// The page's own form posts another body; it works as well.
	tokenBob := tokenOf(t, news["bob"])
	resp, err := http.PostForm(b.server.URL+"/unsubscribe/"+tokenBob, map[string][]string{"List-Unsubscribe": {"One-Click"}, "x": {"y"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || b.preferences(t, "bob")["news"]["email"] != false {
		t.Fatalf("form POST = %d, preferences %v", resp.StatusCode, b.preferences(t, "bob"))
	}
}

func TestForgedTamperedAndExpiredLinksChangeNothing(t *testing.T) {
	t.Parallel()
	b := setupEndUsers(t)
	b.putRecipient(t, "ada", "ada@example.com")
	valid, err := b.svc.UnsubscribeToken("ada", "news", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// Another server's secret: a well-formed token nobody here signed.
	other := notifier.NewService(b.pool, nil, &notifier.ServiceOpts{Secret: []byte("another-secret-of-thirty-two-bytes!!"), PublicURL: testPublicURL})
	forged, _ := other.UnsubscribeToken("ada", "news", time.Now().Add(time.Hour))
	expired, _ := b.svc.UnsubscribeToken("ada", "news", time.Now().Add(-time.Second))
	// Tampered: one character of the payload changed.
	i := 4
	c := byte('A')
	if valid[i] == 'A' {
		c = 'B'
	}
	tampered := valid[:i] + string(c) + valid[i+1:]
	// Another recipient's token with ada's signature.
	bobToken, _ := b.svc.UnsubscribeToken("bob", "news", time.Now().Add(time.Hour))
	spliced := bobToken[:len(bobToken)-22] + valid[len(valid)-22:]

	tests := []struct {
		name, token string
		want        int
		says        string
	}{
		{"forged", forged, 403, "not valid"},
		{"tampered", tampered, 403, "not valid"},
		{"spliced signature", spliced, 403, "not valid"},
		{"expired", expired, 403, "expired"},
		{"not a token", "hello", 400, "not valid"},
		{"not base64", "!!!!~~~~", 400, "not valid"},
		{"huge", strings.Repeat("A", 1000), 400, "not valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, method := range []string{"GET", "POST"} {
				var r response
				if method == "POST" {
					r = b.oneClick(t, tt.token)
				} else {
					r = b.do(t, "GET", "/unsubscribe/"+tt.token, "", nil)
				}
				if r.status != tt.want || !strings.Contains(string(r.body), tt.says) {
					t.Fatalf("%s = %d %s, want %d saying %q", method, r.status, r.body, tt.want, tt.says)
				}
			}
		})
	}
	if n := b.count(t, `SELECT count(*) FROM preferences`); n != 0 {
		t.Fatalf("refused links wrote %d preferences", n)
	}
	// A service without a secret refuses every link.
	if _, err := other.ParseUnsubscribeToken(valid, time.Now()); notifier.ErrorCode(err) != notifier.EFORBIDDEN {
		t.Fatalf("other secret: %v, want forbidden", err)
	}
	if _, err := notifier.NewService(b.pool, nil, nil).ParseUnsubscribeToken(valid, time.Now()); err == nil {
		t.Fatal("a service without a secret accepted a link")
	}
}

func TestRequiredCategoriesCannotBeOptedOut(t *testing.T) {
	t.Parallel()
	b := setupEndUsers(t)
	b.putRecipient(t, "ada", "ada@example.com")
	r := b.do(t, "PUT", "/v1/recipients/ada/preferences", b.sendKey,
		map[string]any{"categories": map[string]any{"security": map[string]any{"email": false}, "news": map[string]any{"push": false}}})
	if r.status != 422 || !slices.Contains(r.problemFields(t), "categories.security.email") {
		t.Fatalf("opting out of security = %d %s, want 422 naming categories.security.email", r.status, r.body)
	}
	if n := b.count(t, `SELECT count(*) FROM preferences`); n != 0 {
		t.Fatal("a refused request wrote preferences")
	}
	// Their emails carry no unsubscribe link, and a signed link is refused.
	sent := b.claim(t, b.broadcast(t, "security", time.Now(), "ada"))
	if m, ok := sent["ada"]; !ok || m.Email.Headers != nil {
		t.Fatalf("security email = %+v, want it sent without List-Unsubscribe", m.Email)
	}
	token, _ := b.svc.UnsubscribeToken("ada", "security", time.Now().Add(time.Hour))
	if r := b.oneClick(t, token); r.status != 422 || !strings.Contains(string(r.body), "cannot be turned off") {
		t.Fatalf("unsubscribe from security = %d %s", r.status, r.body)
	}
	if r := b.do(t, "GET", "/unsubscribe/"+token, "", nil); r.status != 422 || strings.Contains(string(r.body), "<form") {
		t.Fatalf("page for security = %d %s", r.status, r.body)
	}
	if n := b.count(t, `SELECT count(*) FROM preferences`); n != 0 {
		t.Fatal("a refused unsubscribe wrote preferences")
	}
}

func TestUnsubscribeOfAnErasedRecipientWritesNothing(t *testing.T) {
	t.Parallel()
	b := setupEndUsers(t)
	b.putRecipient(t, "ada", "ada@example.com")
	token, _ := b.svc.UnsubscribeToken("ada", "news", time.Now().Add(time.Hour))
	if r := b.do(t, "DELETE", "/v1/recipients/ada", b.sendKey, nil); r.status != 204 {
		t.Fatalf("DELETE = %d", r.status)
	}
	if r := b.oneClick(t, token); r.status != 200 {
		t.Fatalf("POST = %d %s", r.status, r.body)
	}
	if n := b.count(t, `SELECT count(*) FROM preferences`); n != 0 {
		t.Fatal("unsubscribing an erased recipient wrote preferences")
	}
}

// Erasure reaches the recipient's deliveries of every broadcast and notification
// (and their provider events), and nobody else's, without an index on deliveries
// by recipient alone (migration 009).
func TestDeleteRecipientErasesDeliveryAddresses(t *testing.T) {
	t.Parallel()
	b := setupEndUsers(t)
	ctx := context.Background()
	for _, id := range []string{"eve", "bob"} {
		b.putRecipient(t, id, id+"@example.com")
	}
	b.broadcast(t, "news", time.Now(), "eve", "bob")
	b.broadcast(t, "offers", time.Now(), "eve", "bob")
	for _, r := range []string{"eve", "bob"} {
		tx, err := b.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = b.svc.CreateNotificationTx(ctx, tx, b.key, notifier.NotificationInput{Recipient: r, Category: "security",
			Channels: []string{"email"}, Email: &notifier.EmailContent{Subject: "Code", Text: "1234"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.pool.Exec(ctx, `INSERT INTO delivery_events (provider, event_id, event, delivery_id, detail, occurred_at)
		SELECT 'sendgrid', 'ev-' || id, 'bounce', id, 'mailbox full', now() FROM deliveries`); err != nil {
		t.Fatal(err)
	}
	held := func(recipient string) (addresses, details int) {
		t.Helper()
		err := b.pool.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM deliveries WHERE recipient_id = $1 AND address IS NOT NULL),
			(SELECT count(*) FROM delivery_events e JOIN deliveries d ON d.id = e.delivery_id WHERE d.recipient_id = $1 AND e.detail IS NOT NULL)`,
			recipient).Scan(&addresses, &details)
		if err != nil {
			t.Fatal(err)
		}
		return addresses, details
	}
	if a, d := held("eve"); a != 3 || d != 3 {
		t.Fatalf("before: eve's deliveries hold %d addresses and %d event details, want 3 and 3 (two broadcasts, one notification)", a, d)
	}
	if r := b.do(t, "DELETE", "/v1/recipients/eve", b.sendKey, nil); r.status != 204 {
		t.Fatalf("delete = %d %s", r.status, r.body)
	}
	if a, d := held("eve"); a != 0 || d != 0 {
		t.Fatalf("after: eve's deliveries still hold %d addresses and %d event details", a, d)
	}
	if a, d := held("bob"); a != 3 || d != 3 {
		t.Fatalf("bob's deliveries hold %d addresses and %d event details, want 3 and 3 (untouched)", a, d)
	}
}
