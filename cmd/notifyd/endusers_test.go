package main

import (
	"bytes"
	"crypto/ecdsa"
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
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/channels/email/sendgridfake"
)

// TestUnsubscribeLinkAndWebhookEndToEnd follows what end users and SendGrid do
// after a broadcast: the link in the email as the fake SendGrid received it
// unsubscribes with one POST, a forged one does not, and a signed bounce event
// keeps the address out of the next broadcast.
func TestUnsubscribeLinkAndWebhookEndToEnd(t *testing.T) {
	t.Parallel()
	webhookKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&webhookKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	e := startE2E(t, map[string]string{"NOTIFYD_SENDGRID_WEBHOOK_KEY": base64.StdEncoding.EncodeToString(der)})
	e.seed(t, "u", 3, "pro")

	body := broadcastBody("first")
	body["channels"] = []string{"email"}
	_, _, out := e.call(t, "POST", "/v1/broadcasts", "first", body)
	e.waitStatus(t, out["id"], "completed", time.Minute)
	byTo := map[string]sendgridfake.Message{}
	for _, m := range e.sendgrid.Messages() {
		byTo[m.To] = m
	}
	m := byTo["u00001@example.com"]
	link := strings.TrimSuffix(strings.TrimPrefix(m.Headers["List-Unsubscribe"], "<"), ">")
	if !strings.HasPrefix(link, "https://notify.example.test/unsubscribe/") || m.Headers["List-Unsubscribe-Post"] != "List-Unsubscribe=One-Click" {
		t.Fatalf("headers as SendGrid received them = %v", m.Headers)
	}
	path := strings.TrimPrefix(link, "https://notify.example.test")

	post := func(path string) int {
		t.Helper()
		// A mail client's one-click POST: no credentials, RFC 8058's body.
		resp, err := http.Post(e.base+path, "application/x-www-form-urlencoded", strings.NewReader("List-Unsubscribe=One-Click"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// A forged link: u00002's id put in u00001's token.
	token := strings.TrimPrefix(path, "/unsubscribe/")
	raw, _ := base64.RawURLEncoding.DecodeString(token)
	forgedRaw := bytes.Replace(raw, []byte("u00001"), []byte("u00002"), 1)
	if status := post("/unsubscribe/" + base64.RawURLEncoding.EncodeToString(forgedRaw)); status != 403 {
		t.Fatalf("forged link = %d, want 403", status)
	}
	if status := post(path); status != 200 {
		t.Fatalf("one-click unsubscribe = %d", status)
	}
	for id, want := range map[string]any{"u00001": false, "u00002": nil} {
		_, _, prefs := e.call(t, "GET", "/v1/recipients/"+id+"/preferences", "", nil)
		var got any
		if news, ok := prefs["categories"].(map[string]any)["news"].(map[string]any); ok {
			got = news["email"]
		}
		if got != want {
			t.Fatalf("%s news.email = %v, want %v (%v)", id, got, want, prefs)
		}
	}

	// SendGrid reports that u00002's address bounced.
	events, _ := json.Marshal([]map[string]any{{
		"sg_event_id": "bounce-1", "event": "bounce", "type": "bounce", "email": "u00002@example.com",
		"timestamp": time.Now().Unix(), "notifyd_delivery_id": byTo["u00002@example.com"].CustomArgs["notifyd_delivery_id"],
	}})
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	h := sha256.Sum256(append([]byte(ts), events...))
	sig, _ := ecdsa.SignASN1(rand.Reader, webhookKey, h[:])
	req, _ := http.NewRequest("POST", e.base+"/webhooks/sendgrid", bytes.NewReader(events))
	req.Header.Set("X-Twilio-Email-Event-Webhook-Timestamp", ts)
	req.Header.Set("X-Twilio-Email-Event-Webhook-Signature", base64.StdEncoding.EncodeToString(sig))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("webhook = %d %s", resp.StatusCode, answer)
	}

	before := e.sendgrid.Count()
	_, _, out2 := e.call(t, "POST", "/v1/broadcasts", "second", broadcastBody("second"))
	final := e.waitStatus(t, out2["id"], "completed", time.Minute)
	if c := final["counts"].(map[string]any); c["suppressed"] != float64(2) {
		t.Fatalf("second broadcast counts = %v, want 2 suppressed", c)
	}
	_, _, page := e.call(t, "GET", fmt.Sprintf("/v1/broadcasts/%v/deliveries?channel=email", out2["id"]), "", nil)
	got := map[string]string{}
	for _, d := range page["deliveries"].([]any) {
		d := d.(map[string]any)
		got[d["recipient_id"].(string)] = fmt.Sprint(d["status"], " ", d["reason"])
	}
	want := map[string]string{"u00000": "sent <nil>", "u00001": "suppressed preference", "u00002": "suppressed suppressed_address"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("second broadcast's emails = %v, want %v", got, want)
	}
	if n := e.sendgrid.Count() - before; n != 1 {
		t.Fatalf("the second broadcast sent %d emails, want 1", n)
	}
	// The first broadcast's delivery shows the bounce.
	_, _, first := e.call(t, "GET", fmt.Sprintf("/v1/broadcasts/%v/deliveries?channel=email", out["id"]), "", nil)
	for _, d := range first["deliveries"].([]any) {
		d := d.(map[string]any)
		if d["recipient_id"] == "u00002" && (d["status"] != "sent" || d["event"] != "bounce") {
			t.Fatalf("bounced delivery = %v", d)
		}
	}

	// A required category's email has no unsubscribe link.
	_, _, note := e.call(t, "POST", "/v1/notifications", "note", map[string]any{
		"recipient": "u00000", "category": "security", "channels": []string{"email"},
		"email": map[string]any{"subject": "Sign-in code", "text": "1234"},
	})
	e.waitNotificationCompleted(t, note["id"])
	for _, m := range e.sendgrid.Messages() {
		if m.Subject == "Sign-in code" && m.Headers["List-Unsubscribe"] != "" {
			t.Fatalf("a security email carries List-Unsubscribe: %v", m.Headers)
		}
	}
}

func TestServeNeedsUnsubscribeSettingsWithEmail(t *testing.T) {
	t.Parallel()
	base := map[string]string{"NOTIFYD_SENDGRID_API_KEY": "SG.x", "NOTIFYD_EMAIL_FROM": "a@example.com"}
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"no secret, no public url", nil, "NOTIFYD_SECRET and NOTIFYD_PUBLIC_URL are required with the email channel"},
		{"no public url", map[string]string{"NOTIFYD_SECRET": strings.Repeat("s", 32)}, "NOTIFYD_PUBLIC_URL is required"},
		{"no secret", map[string]string{"NOTIFYD_PUBLIC_URL": "https://n.example.com"}, "NOTIFYD_SECRET is required"},
		{"short secret", map[string]string{"NOTIFYD_SECRET": "short", "NOTIFYD_PUBLIC_URL": "https://n.example.com"}, "NOTIFYD_SECRET must be at least 32 characters"},
		{"bad webhook key", map[string]string{"NOTIFYD_SENDGRID_WEBHOOK_KEY": "bm90IGEga2V5"}, "NOTIFYD_SENDGRID_WEBHOOK_KEY must be"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tt.env {
				env[k] = v
			}
			_, err := runCommand(t, env, "serve")
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("serve = %v, want one line containing %q", err, tt.want)
			}
		})
	}
}

// An API process that serves /unsubscribe beside the workers must verify their
// links: with their NOTIFYD_SECRET it does; without one it says the links are
// not configured (503), where a secret made up at start would call every link
// forged.
func TestAPIProcessVerifiesTheWorkersLinks(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil)
	e.seed(t, "u", 1, "pro")
	body := broadcastBody("links")
	body["channels"] = []string{"email"}
	_, _, out := e.call(t, "POST", "/v1/broadcasts", "links", body)
	e.waitStatus(t, out["id"], "completed", time.Minute)
	msgs := e.sendgrid.Messages()
	if len(msgs) != 1 {
		t.Fatalf("the fake received %d emails, want 1", len(msgs))
	}
	link := strings.TrimSuffix(strings.TrimPrefix(msgs[0].Headers["List-Unsubscribe"], "<"), ">")
	path := strings.TrimPrefix(link, "https://notify.example.test")

	for _, tc := range []struct {
		name, secret string
		status       int
		warning      string
	}{
		{"without the secret", "", http.StatusServiceUnavailable, "NOTIFYD_SECRET is not set: /unsubscribe answers 503"},
		{"with the workers' secret", e.env["NOTIFYD_SECRET"], http.StatusOK, ""},
	} {
		env := map[string]string{"DATABASE_URL": e.env["DATABASE_URL"], "NOTIFYD_ADDR": "127.0.0.1:0", "NOTIFYD_ROLE": "api",
			"NOTIFYD_SECRET": tc.secret, "NOTIFYD_PUBLIC_URL": e.env["NOTIFYD_PUBLIC_URL"]}
		base, stderr, stop := serveInProcess(t, env)
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if err := stop(); err != nil {
			t.Errorf("%s: serve: %v", tc.name, err)
		}
		if resp.StatusCode != tc.status {
			t.Errorf("%s: GET %s = %d, want %d", tc.name, path, resp.StatusCode, tc.status)
		}
		if tc.warning != "" && !strings.Contains(stderr.String(), tc.warning) {
			t.Errorf("%s: the log does not say %q:\n%s", tc.name, tc.warning, stderr.String())
		}
	}
}
