package notifier

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
)

// One-click unsubscribe (RFC 8058). Every email of a category that can be opted
// out of carries
//
//	List-Unsubscribe: <PublicURL/unsubscribe/{token}>
//	List-Unsubscribe-Post: List-Unsubscribe=One-Click
//
// The token names the recipient, the category and an expiry, signed with
// HMAC-SHA256 under ServiceOpts.Secret, so the link needs no login and cannot be
// made up for someone else. GET shows a confirmation page (link scanners fetch
// links, so GET changes nothing); POST, with any body, unsubscribes: the body
// "List-Unsubscribe=One-Click" that mail clients send, or the page's own form.
// Required categories carry no link: they cannot be opted out of.

// DefaultUnsubscribeTTL is how long an unsubscribe link works by default: well
// past the 30 days CAN-SPAM asks for, since people unsubscribe from old mail.
const DefaultUnsubscribeTTL = 365 * 24 * time.Hour

// Token layout, before base64url (no padding):
//
//	version (1 byte) | expiry, unix seconds (uvarint) | len(recipient) (1 byte) |
//	recipient | category | HMAC-SHA256(secret, context | all before)[:16]
const (
	tokenVersion = 1
	tokenMACSize = 16 // 128 bits: RFC 2104 allows truncation to half the hash
	tokenContext = "notifyd unsubscribe\x00"
	// maxTokenLen bounds what is decoded: 128-byte id, 64-byte category and the rest.
	maxTokenLen = 400
)

// UnsubscribeLink is what a verified token says.
type UnsubscribeLink struct {
	RecipientID string
	Category    string
	ExpiresAt   time.Time
}

func (s *Service) unsubscribeConfigured() bool {
	return len(s.opts.Secret) > 0 && s.opts.PublicURL != ""
}

func (s *Service) tokenMAC(payload []byte) []byte {
	mac := hmac.New(sha256.New, s.opts.Secret)
	mac.Write([]byte(tokenContext))
	mac.Write(payload)
	return mac.Sum(nil)[:tokenMACSize]
}

// UnsubscribeToken signs a token that unsubscribes recipientID from the email of
// category until expires.
func (s *Service) UnsubscribeToken(recipientID, category string, expires time.Time) (string, error) {
	if len(s.opts.Secret) == 0 {
		return "", Errorf(EUNAVAILABLE, "unsubscribe links are not configured (NOTIFYD_SECRET)")
	}
	if !validRecipientID(recipientID) || !validCategory(category) {
		return "", Errorf(EINVALID, "cannot sign an unsubscribe link for recipient %q, category %q", recipientID, category)
	}
	payload := make([]byte, 0, 1+binary.MaxVarintLen64+1+len(recipientID)+len(category)+tokenMACSize)
	payload = append(payload, tokenVersion)
	payload = binary.AppendUvarint(payload, uint64(max(expires.Unix(), 0)))
	payload = append(payload, byte(len(recipientID)))
	payload = append(payload, recipientID...)
	payload = append(payload, category...)
	return base64.RawURLEncoding.EncodeToString(append(payload, s.tokenMAC(payload)...)), nil
}

// UnsubscribeURL is the link an email for recipientID in category carries, valid
// for the configured TTL from now; "" when links are not configured.
func (s *Service) UnsubscribeURL(recipientID, category string, now time.Time) string {
	if !s.unsubscribeConfigured() {
		return ""
	}
	ttl := s.opts.UnsubscribeTTL
	if ttl <= 0 {
		ttl = DefaultUnsubscribeTTL
	}
	token, err := s.UnsubscribeToken(recipientID, category, now.Add(ttl))
	if err != nil {
		return ""
	}
	return strings.TrimRight(s.opts.PublicURL, "/") + "/unsubscribe/" + token
}

// unsubscribeHeaders are the RFC 8058 headers of an email, or nil when the
// category is required or links are not configured.
func (s *Service) unsubscribeHeaders(recipientID, category string, now time.Time) map[string]string {
	if slices.Contains(s.opts.RequiredCategories, category) {
		return nil
	}
	link := s.UnsubscribeURL(recipientID, category, now)
	if link == "" {
		return nil
	}
	return map[string]string{
		"List-Unsubscribe":      "<" + link + ">",
		"List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
	}
}

// ParseUnsubscribeToken verifies a token and returns what it says. A token that
// does not decode is EBADREQUEST; a forged, tampered or expired one EFORBIDDEN.
func (s *Service) ParseUnsubscribeToken(token string, now time.Time) (*UnsubscribeLink, error) {
	if len(s.opts.Secret) == 0 {
		return nil, Errorf(EUNAVAILABLE, "unsubscribe links are not configured on this server")
	}
	malformed := Errorf(EBADREQUEST, "this unsubscribe link is not valid")
	if len(token) > maxTokenLen {
		return nil, malformed
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(token)
	if err != nil || len(raw) < 1+1+1+1+tokenMACSize {
		return nil, malformed
	}
	payload, mac := raw[:len(raw)-tokenMACSize], raw[len(raw)-tokenMACSize:]
	// The signature is checked before anything in the payload is believed.
	if !hmac.Equal(mac, s.tokenMAC(payload)) {
		return nil, Errorf(EFORBIDDEN, "this unsubscribe link is not valid")
	}
	if payload[0] != tokenVersion {
		return nil, malformed
	}
	expiry, n := binary.Uvarint(payload[1:])
	if n <= 0 || 1+n >= len(payload) {
		return nil, malformed
	}
	rest := payload[1+n:]
	idLen := int(rest[0])
	if 1+idLen > len(rest) {
		return nil, malformed
	}
	link := &UnsubscribeLink{RecipientID: string(rest[1 : 1+idLen]), Category: string(rest[1+idLen:]), ExpiresAt: time.Unix(int64(min(expiry, 1<<62)), 0).UTC()}
	if !validRecipientID(link.RecipientID) || !validCategory(link.Category) {
		return nil, malformed
	}
	if !now.Before(link.ExpiresAt) {
		return nil, Errorf(EFORBIDDEN, "this unsubscribe link has expired")
	}
	return link, nil
}

// UnsubscribeResult is what a one-click unsubscribe did.
type UnsubscribeResult struct {
	RecipientID string
	Category    string
	// Changed is false when the recipient was already unsubscribed (or is gone).
	Changed bool
}

// Unsubscribe turns off the email of the token's category for its recipient,
// like PutPreferences with source "unsubscribe" (so the previous preferences go
// to the history), keeping every other preference. Required categories are
// refused (EINVALID); unsubscribing twice changes nothing.
func (s *Service) Unsubscribe(ctx context.Context, token string) (*UnsubscribeResult, error) {
	link, err := s.ParseUnsubscribeToken(token, time.Now())
	if err != nil {
		return nil, err
	}
	if slices.Contains(s.opts.RequiredCategories, link.Category) {
		return nil, Invalid(map[string]string{"category": "category " + link.Category + " is required and cannot be turned off"})
	}
	n, err := optOutEmail(ctx, s.pool, []string{link.RecipientID}, []string{link.Category}, "unsubscribe")
	if err != nil {
		return nil, err
	}
	if n > 0 {
		s.logger.InfoContext(ctx, "unsubscribed", "recipient_id", link.RecipientID, "category", link.Category, "source", "unsubscribe")
	}
	return &UnsubscribeResult{RecipientID: link.RecipientID, Category: link.Category, Changed: n > 0}, nil
}

// optOutEmail sets {"email": false} for each (recipients[i], categories[i]) pair,
// keeping the rest of each recipient's preferences, in one statement. Erased or
// unknown recipients are skipped, and so are pairs already opted out, so their
// preferences keep their time and source. The trigger on preferences moves the
// previous version to preference_history. It returns how many recipients changed.
func optOutEmail(ctx context.Context, q DB, recipients, categories []string, source string) (int64, error) {
	if len(recipients) == 0 {
		return 0, nil
	}
	tag, err := q.Exec(ctx, `
		WITH pairs AS (
			SELECT DISTINCT u.recipient_id, u.category
			FROM unnest($1::text[], $2::text[]) AS u(recipient_id, category)
			JOIN recipients r ON r.id = u.recipient_id AND NOT r.erased
		), wanted AS (
			SELECT recipient_id, jsonb_object_agg(category, '{"email": false}'::jsonb) AS categories
			FROM pairs GROUP BY recipient_id
		)
		INSERT INTO preferences AS p (recipient_id, categories, source)
		SELECT recipient_id, categories, $3 FROM wanted
		ON CONFLICT (recipient_id) DO UPDATE SET
			categories = p.categories || (SELECT jsonb_object_agg(k, coalesce(p.categories -> k, '{}'::jsonb) || '{"email": false}'::jsonb)
				FROM jsonb_object_keys(excluded.categories) AS k),
			source = excluded.source
		WHERE EXISTS (SELECT 1 FROM jsonb_object_keys(excluded.categories) AS k
			WHERE p.categories -> k ->> 'email' IS DISTINCT FROM 'false')`,
		recipients, categories, source)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// The end-user pages: small, self-contained, no external assets.
var unsubscribePage = template.Must(template.New("unsubscribe").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{.Title}}</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; color: #222; background: #f6f6f6; margin: 0; }
main { max-width: 28rem; margin: 4rem auto; padding: 2rem; background: #fff; border-radius: 8px; }
h1 { font-size: 1.3rem; margin-top: 0; }
button { font: inherit; padding: .6rem 1.2rem; border: 0; border-radius: 6px; background: #1a5fb4; color: #fff; cursor: pointer; }
</style>
</head>
<body>
<main>
<h1>{{.Title}}</h1>
<p>{{.Message}}</p>
{{- if .Form}}
<form method="post">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button>
</form>
{{- end}}
</main>
</body>
</html>
`))

type unsubscribePageData struct {
	Title, Message string
	Form           bool
}

func writeUnsubscribePage(w http.ResponseWriter, status int, d unsubscribePageData) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// The token is in the URL: it must not leak through a Referer.
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	w.WriteHeader(status)
	_ = unsubscribePage.Execute(w, d)
}

// writeUnsubscribeError answers a refused link with a page, not problem+json:
// the reader is a person (or their mail client), not a backend.
func writeUnsubscribeError(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err error) {
	code := ErrorCode(err)
	d := unsubscribePageData{Title: "This link does not work"}
	switch code {
	case EBADREQUEST, EFORBIDDEN:
		if e := (*Error)(nil); errors.As(err, &e) {
			d.Message = strings.ToUpper(e.Message[:1]) + e.Message[1:] + ". Use the unsubscribe link of a recent email, or change your preferences in the app."
		}
	case EINVALID:
		d.Title = "These messages cannot be turned off"
		d.Message = "They are required for your account, for example security or legal notices."
	default:
		if code == EINTERNAL {
			logger.ErrorContext(r.Context(), "unsubscribe failed", "err", err)
		}
		d.Title = "Something went wrong"
		d.Message = "Please try again in a few minutes."
	}
	writeUnsubscribePage(w, StatusOf(err), d)
}

func handleUnsubscribePage(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		link, err := svc.ParseUnsubscribeToken(chi.URLParam(r, "token"), time.Now())
		if err == nil && slices.Contains(svc.opts.RequiredCategories, link.Category) {
			err = Invalid(map[string]string{"category": "is required"})
		}
		if err != nil {
			writeUnsubscribeError(w, r, logger, err)
			return
		}
		writeUnsubscribePage(w, http.StatusOK, unsubscribePageData{
			Title:   "Unsubscribe from " + link.Category + " emails?",
			Message: "You will no longer get " + link.Category + " emails. Other messages are not affected.",
			Form:    true,
		})
	}
}

// handleUnsubscribe is the one-click POST. The body is not needed (RFC 8058's is
// "List-Unsubscribe=One-Click"); it is read, within a limit, and dropped.
func handleUnsubscribe(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, 64<<10))
		res, err := svc.Unsubscribe(r.Context(), chi.URLParam(r, "token"))
		if err != nil {
			writeUnsubscribeError(w, r, logger, err)
			return
		}
		writeUnsubscribePage(w, http.StatusOK, unsubscribePageData{
			Title:   "You are unsubscribed",
			Message: "You will no longer get " + res.Category + " emails.",
		})
	}
}
