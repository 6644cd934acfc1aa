package adminui_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/migrations/pgtest"
	"github.com/notifyd/notifyd/notifier"
	"github.com/notifyd/notifyd/notifier/adminui"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// nopEnqueuer accepts jobs and drops them: these tests look at the page, not at
// delivery.
type nopEnqueuer struct{}

func (nopEnqueuer) EnqueueExpandTx(context.Context, pgx.Tx, int64, time.Time) error { return nil }
func (nopEnqueuer) EnqueueDeliveriesTx(context.Context, pgx.Tx, []notifier.DeliveryBatch, bool) error {
	return nil
}

type testBundle struct {
	pool     *pgxpool.Pool
	svc      *notifier.Service
	server   *httptest.Server
	adminKey string
	sendKey  string
}

// setup serves the whole API with the admin page mounted, as notifyd serve does.
func setup(t *testing.T) *testBundle {
	t.Helper()
	pool := pgtest.NewPool(t)
	svc := notifier.NewService(pool, nil, &notifier.ServiceOpts{Enqueuer: nopEnqueuer{}})
	srv := httptest.NewServer(notifier.NewServer(svc, nil, &notifier.ServerOpts{Admin: adminui.New(svc, nil, nil)}))
	t.Cleanup(srv.Close)
	b := &testBundle{pool: pool, svc: svc, server: srv}
	var err error
	if _, b.adminKey, err = svc.CreateAPIKey(context.Background(), "ops-alice", []string{notifier.ScopeAdmin}); err != nil {
		t.Fatal(err)
	}
	if _, b.sendKey, err = svc.CreateAPIKey(context.Background(), "backend", []string{notifier.ScopeSend}); err != nil {
		t.Fatal(err)
	}
	return b
}

// browser is a cookie-keeping client that does not follow redirects, so each
// answer can be checked.
type browser struct {
	t      *testing.T
	base   string
	client *http.Client
}

func (b *testBundle) browser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, base: b.server.URL, client: &http.Client{Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type answer struct {
	status int
	header http.Header
	body   string
}

func (br *browser) do(method, path string, form url.Values, header map[string]string) answer {
	br.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, br.base+path, body)
	if err != nil {
		br.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := br.client.Do(req)
	if err != nil {
		br.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: string(raw)}
}

func (br *browser) get(path string) answer { br.t.Helper(); return br.do("GET", path, nil, nil) }

var csrfRE = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

func csrfOf(t *testing.T, html string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(html)
	if m == nil {
		t.Fatalf("no csrf_token field in:\n%s", html)
	}
	return m[1]
}

// signIn signs br in with key and returns the session's CSRF token.
func (br *browser) signIn(key string) string {
	br.t.Helper()
	form := br.get("/admin/")
	if form.status != 200 || !strings.Contains(form.body, `action="/admin/signin"`) {
		br.t.Fatalf("GET /admin/ = %d, want the sign-in form:\n%s", form.status, form.body)
	}
	res := br.do("POST", "/admin/signin", url.Values{"csrf_token": {csrfOf(br.t, form.body)}, "key": {key}}, nil)
	if res.status != http.StatusSeeOther || res.header.Get("Location") != "/admin/" {
		br.t.Fatalf("sign in = %d %s:\n%s", res.status, res.header.Get("Location"), res.body)
	}
	list := br.get("/admin/")
	if list.status != 200 || !strings.Contains(list.body, "Signed in as") {
		br.t.Fatalf("after sign-in GET /admin/ = %d:\n%s", list.status, list.body)
	}
	return csrfOf(br.t, list.body)
}

// insertBroadcast writes a broadcast mid-way through sending, with one delivery
// in each interesting state.
func (b *testBundle) insertBroadcast(t *testing.T, name string) int64 {
	t.Helper()
	ctx := context.Background()
	var id int64
	err := b.pool.QueryRow(ctx, `INSERT INTO broadcasts (name, category, segment_key, channels, content, cutoff_at, status,
			created_by, expanded, audience_size)
		VALUES ($1, 'news', 'all', '{email,push}', '{}', now(), 'sending', 'backend', true, 3) RETURNING id`, name).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.pool.Exec(ctx, `INSERT INTO deliveries (broadcast_id, recipient_id, channel, status, reason, last_error, attempts) VALUES
		($1, 'r1', 'email', 'sent', NULL, NULL, 1),
		($1, 'r2', 'email', 'failed', 'invalid_address', 'sendgrid 400: does not contain a valid address', 1),
		($1, 'r3', 'email', 'pending', NULL, NULL, 0),
		($1, 'r1', 'push', 'sent', NULL, NULL, 1),
		($1, 'r2', 'push', 'suppressed', 'preference', NULL, 0),
		($1, 'r3', 'push', 'sending', NULL, NULL, 1)`, id)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func (b *testBundle) status(t *testing.T, id int64) string {
	t.Helper()
	s, err := b.svc.FindBroadcastStatus(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (b *testBundle) auditCount(t *testing.T, id int64) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log WHERE broadcast_id = $1`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func cookieNamed(h http.Header, name string) *http.Cookie {
	for _, c := range (&http.Response{Header: h}).Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func TestAdminSignIn(t *testing.T) {
	t.Parallel()
	b := setup(t)

	t.Run("a send key, a wrong key and a form without its token are refused", func(t *testing.T) {
		br := b.browser(t)
		form := br.get("/admin/")
		token := csrfOf(t, form.body)
		for _, tc := range []struct {
			name string
			form url.Values
			want int
			text string
		}{
			{"send scope", url.Values{"csrf_token": {token}, "key": {b.sendKey}}, 403, "lacks the admin scope"},
			{"wrong key", url.Values{"csrf_token": {token}, "key": {b.adminKey + "x"}}, 401, "not valid"},
			{"no token", url.Values{"key": {b.adminKey}}, 403, "Sign-in refused"},
			{"wrong token", url.Values{"csrf_token": {token + "x"}, "key": {b.adminKey}}, 403, "Sign-in refused"},
		} {
			res := br.do("POST", "/admin/signin", tc.form, nil)
			if res.status != tc.want || !strings.Contains(res.body, tc.text) {
				t.Errorf("%s: %d, want %d with %q:\n%s", tc.name, res.status, tc.want, tc.text, res.body)
			}
			if c := cookieNamed(res.header, "notifyd_admin"); c != nil && c.MaxAge >= 0 {
				t.Errorf("%s: a session cookie was set: %v", tc.name, c)
			}
		}
		if list := br.get("/admin/"); !strings.Contains(list.body, `action="/admin/signin"`) {
			t.Fatalf("after refused sign-ins the page is not the sign-in form:\n%s", list.body)
		}
		var n int
		if err := b.pool.QueryRow(context.Background(), `SELECT count(*) FROM admin_sessions`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("%d sessions stored (%v), want 0", n, err)
		}
	})

	t.Run("an admin key gets a strict cookie whose secret is stored only hashed", func(t *testing.T) {
		br := b.browser(t)
		form := br.get("/admin/")
		res := br.do("POST", "/admin/signin", url.Values{"csrf_token": {csrfOf(t, form.body)}, "key": {b.adminKey}}, nil)
		c := cookieNamed(res.header, "notifyd_admin")
		if res.status != 303 || c == nil {
			t.Fatalf("sign in = %d, cookie %v", res.status, c)
		}
		if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/admin" || c.Secure || c.MaxAge != 12*3600 {
			t.Fatalf("cookie = %+v; want HttpOnly, SameSite=Strict, Path=/admin, not Secure over http, 12 h", c)
		}
		var stored int
		if err := b.pool.QueryRow(context.Background(), `SELECT count(*) FROM admin_sessions
			WHERE id_hash <> convert_to($1, 'UTF8') AND expires_at BETWEEN now() + interval '11 hours' AND now() + interval '13 hours'`,
			c.Value).Scan(&stored); err != nil || stored != 1 {
			t.Fatalf("sessions stored = %d (%v), want 1 with a 12 h expiry", stored, err)
		}
	})

	t.Run("behind a TLS proxy the cookie is Secure", func(t *testing.T) {
		br := b.browser(t)
		https := map[string]string{"X-Forwarded-Proto": "https"}
		form := br.do("GET", "/admin/", nil, https)
		if c := cookieNamed(form.header, "notifyd_admin_login"); c == nil || !c.Secure {
			t.Fatalf("sign-in form cookie = %v, want Secure", c)
		}
		res := br.do("POST", "/admin/signin", url.Values{"csrf_token": {csrfOf(t, form.body)}, "key": {b.adminKey}}, https)
		if c := cookieNamed(res.header, "notifyd_admin"); res.status != 303 || c == nil || !c.Secure {
			t.Fatalf("sign in = %d, cookie %v; want Secure", res.status, c)
		}
	})

	t.Run("after sign-in the page returns to where it was asked for", func(t *testing.T) {
		br := b.browser(t)
		res := br.get("/admin/broadcasts/12345?status=failed")
		if res.status != 303 || res.header.Get("Location") != "/admin/?next="+url.QueryEscape("/admin/broadcasts/12345?status=failed") {
			t.Fatalf("signed-out detail = %d %s", res.status, res.header.Get("Location"))
		}
		form := br.get(res.header.Get("Location"))
		next := regexp.MustCompile(`name="next" value="([^"]*)"`).FindStringSubmatch(form.body)
		if next == nil {
			t.Fatalf("no next field:\n%s", form.body)
		}
		in := br.do("POST", "/admin/signin", url.Values{"csrf_token": {csrfOf(t, form.body)}, "key": {b.adminKey},
			"next": {strings.ReplaceAll(next[1], "&amp;", "&")}}, nil)
		if in.header.Get("Location") != "/admin/broadcasts/12345?status=failed" {
			t.Fatalf("sign in went to %q", in.header.Get("Location"))
		}
		// An open redirect is not possible.
		for _, evil := range []string{"https://evil.example/", "//evil.example/admin/", "/admin/\\evil"} {
			other := b.browser(t)
			f := other.get("/admin/")
			in := other.do("POST", "/admin/signin", url.Values{"csrf_token": {csrfOf(t, f.body)}, "key": {b.adminKey}, "next": {evil}}, nil)
			if in.header.Get("Location") != "/admin/" {
				t.Fatalf("next=%q redirected to %q", evil, in.header.Get("Location"))
			}
		}
	})
}

func TestAdminSessionEndsWithItsKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.insertBroadcast(t, "Spring sale")
	br := b.browser(t)
	br.signIn(b.adminKey)
	if res := br.get("/admin/broadcasts/" + itoa(id)); res.status != 200 {
		t.Fatalf("detail = %d", res.status)
	}
	if _, err := b.svc.RevokeAPIKey(context.Background(), "ops-alice"); err != nil {
		t.Fatal(err)
	}
	if res := br.get("/admin/"); !strings.Contains(res.body, `action="/admin/signin"`) {
		t.Fatalf("after revoking the key GET /admin/ = %d, want the sign-in form:\n%s", res.status, res.body)
	}
	if res := br.get("/admin/broadcasts/" + itoa(id)); res.status != 303 {
		t.Fatalf("after revoking the key the detail page = %d, want a redirect to sign in", res.status)
	}
	if res := br.get("/admin/progress.json?id=" + itoa(id)); res.status != 401 {
		t.Fatalf("after revoking the key progress.json = %d, want 401", res.status)
	}
}

func TestAdminSignOut(t *testing.T) {
	t.Parallel()
	b := setup(t)
	br := b.browser(t)
	token := br.signIn(b.adminKey)
	u, _ := url.Parse(b.server.URL + "/admin/")
	old := br.client.Jar.Cookies(u)

	// Without the token sign-out is refused too (a forged sign-out is a nuisance).
	if res := br.do("POST", "/admin/signout", url.Values{}, nil); res.status != 403 {
		t.Fatalf("sign out without token = %d, want 403", res.status)
	}
	res := br.do("POST", "/admin/signout", url.Values{"csrf_token": {token}}, nil)
	if res.status != 303 || res.header.Get("Location") != "/admin/" {
		t.Fatalf("sign out = %d %s", res.status, res.header.Get("Location"))
	}
	if c := cookieNamed(res.header, "notifyd_admin"); c == nil || c.MaxAge >= 0 {
		t.Fatalf("sign out did not clear the cookie: %v", c)
	}
	if res := br.get("/admin/"); !strings.Contains(res.body, `action="/admin/signin"`) {
		t.Fatalf("after sign out GET /admin/ is not the sign-in form:\n%s", res.body)
	}
	// The old cookie is dead on the server, not just forgotten by the browser.
	replay := b.browser(t)
	replay.client.Jar.SetCookies(u, old)
	if res := replay.get("/admin/"); !strings.Contains(res.body, `action="/admin/signin"`) {
		t.Fatal("the signed-out session's cookie still works")
	}
}

func TestAdminControlNeedsCSRFAndSameOrigin(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.insertBroadcast(t, "Spring sale")
	br := b.browser(t)
	token := br.signIn(b.adminKey)
	path := "/admin/broadcasts/" + itoa(id) + "/cancel"

	// A token one character off (never equal: the last character is changed).
	wrong := token[:len(token)-1] + "A"
	if token[len(token)-1] == 'A' {
		wrong = token[:len(token)-1] + "B"
	}
	for _, tc := range []struct {
		name   string
		form   url.Values
		header map[string]string
	}{
		{"no token", url.Values{}, nil},
		{"wrong token", url.Values{"csrf_token": {wrong}}, nil},
		{"token of another session", url.Values{"csrf_token": {b.browser(t).signIn(b.adminKey)}}, nil},
		{"cross-origin Origin", url.Values{"csrf_token": {token}}, map[string]string{"Origin": "https://evil.example"}},
		{"cross-site fetch", url.Values{"csrf_token": {token}}, map[string]string{"Sec-Fetch-Site": "cross-site"}},
	} {
		res := br.do("POST", path, tc.form, tc.header)
		if res.status != 403 {
			t.Errorf("%s: %d, want 403:\n%s", tc.name, res.status, res.body)
		}
	}
	if s := b.status(t, id); s != notifier.StatusSending {
		t.Fatalf("after forged posts the broadcast is %s, want still sending", s)
	}
	if n := b.auditCount(t, id); n != 0 {
		t.Fatalf("forged posts left %d audit entries", n)
	}

	// The real form, same origin, goes through and is audited under the key's name.
	res := br.do("POST", path, url.Values{"csrf_token": {token}}, map[string]string{"Origin": b.server.URL, "Sec-Fetch-Site": "same-origin"})
	if res.status != 303 || res.header.Get("Location") != "/admin/broadcasts/"+itoa(id)+"?done=cancel" {
		t.Fatalf("cancel = %d %s:\n%s", res.status, res.header.Get("Location"), res.body)
	}
	if s := b.status(t, id); s != notifier.StatusCancelled {
		t.Fatalf("status = %s, want cancelled", s)
	}
	audit, err := b.svc.FindAuditEntries(context.Background(), id, 10, "")
	if err != nil || len(audit.Entries) != 1 || audit.Entries[0].Actor != "ops-alice" || audit.Entries[0].Action != "cancel" {
		t.Fatalf("audit = %+v, %v; want one cancel by ops-alice", audit, err)
	}
	detail := br.get(res.header.Get("Location"))
	if !strings.Contains(detail.body, "Cancelled.") || !strings.Contains(detail.body, `<td class="actor">ops-alice</td>`) {
		t.Fatalf("detail after cancel lacks the flash or the audit entry:\n%s", detail.body)
	}
	// A cancelled broadcast offers nothing more, and a stale resume form is a 409.
	if res := br.get("/admin/broadcasts/" + itoa(id) + "/resume"); res.status != 409 || strings.Contains(res.body, `id="confirm"`) {
		t.Fatalf("resume confirmation of a cancelled broadcast = %d", res.status)
	}
	if res := br.do("POST", "/admin/broadcasts/"+itoa(id)+"/resume", url.Values{"csrf_token": {token}}, nil); res.status != 409 {
		t.Fatalf("resume of a cancelled broadcast = %d, want 409", res.status)
	}
}

func TestAdminPages(t *testing.T) {
	t.Parallel()
	b := setup(t)
	other := b.insertBroadcast(t, "Older news")
	id := b.insertBroadcast(t, "Spring <sale>")
	br := b.browser(t)
	token := br.signIn(b.adminKey)
	sid := itoa(id)

	t.Run("list", func(t *testing.T) {
		res := br.get("/admin/")
		for _, want := range []string{"Spring &lt;sale&gt;", "Older news", `data-broadcast="` + sid + `" data-live`,
			`data-bar="email"`, `data-bar="push"`, `class="seg seg-sent" data-seg="sent" x="0.000" y="0" width="33.333"`} {
			if !strings.Contains(res.body, want) {
				t.Errorf("list lacks %q", want)
			}
		}
		if strings.Index(res.body, "Spring &lt;sale&gt;") > strings.Index(res.body, "Older news") {
			t.Error("the list is not newest first")
		}
		if csp := res.header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || res.header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("security headers = %v", res.header)
		}
		if strings.Contains(res.body, "http://") || strings.Contains(res.body, "https://") {
			t.Error("the page refers to another origin")
		}
		paged := br.get("/admin/?status=sending")
		if !strings.Contains(paged.body, "Older news") {
			t.Error("status filter hides a sending broadcast")
		}
		if done := br.get("/admin/?status=completed"); strings.Contains(done.body, "Older news") {
			t.Error("status filter shows a sending broadcast as completed")
		}
	})

	t.Run("detail", func(t *testing.T) {
		res := br.get("/admin/broadcasts/" + sid)
		for _, want := range []string{"<h1>Spring &lt;sale&gt;</h1>", `id="togo">2</b>`, "sendgrid 400: does not contain a valid address",
			"invalid_address", "preference", `id="action-cancel"`, `href="/admin/broadcasts/` + sid + `/pause"`} {
			if !strings.Contains(res.body, want) {
				t.Errorf("detail lacks %q", want)
			}
		}
		if !regexp.MustCompile(`id="action-resume"[^>]*hidden`).MatchString(res.body) {
			t.Error("resume is offered for a sending broadcast")
		}
		failed := br.get("/admin/broadcasts/" + sid + "?status=failed")
		if !strings.Contains(failed.body, "sendgrid 400") || strings.Contains(failed.body, "<td>preference</td>") {
			t.Error("the status filter does not filter deliveries")
		}
		if bad := br.get("/admin/broadcasts/" + sid + "?status=bogus"); bad.status != 200 || !strings.Contains(bad.body, "filter is not valid") {
			t.Errorf("bad filter = %d", bad.status)
		}
		if res := br.get("/admin/broadcasts/999999"); res.status != 404 {
			t.Errorf("unknown broadcast = %d, want 404", res.status)
		}
		if res := br.get("/admin/broadcasts/abc"); res.status != 404 {
			t.Errorf("bad id = %d, want 404", res.status)
		}
	})

	t.Run("confirmation shows what is still to go", func(t *testing.T) {
		res := br.get("/admin/broadcasts/" + sid + "/pause")
		if res.status != 200 || !strings.Contains(res.body, `<b data-togo>2</b> messages are still to go`) ||
			!strings.Contains(res.body, "1 pending and 1 being sent") || !strings.Contains(res.body, `action="/admin/broadcasts/`+sid+`/pause"`) {
			t.Fatalf("pause confirmation = %d:\n%s", res.status, res.body)
		}
		if s := b.status(t, id); s != notifier.StatusSending {
			t.Fatalf("showing the confirmation changed the status to %s", s)
		}
		if res := br.get("/admin/broadcasts/" + sid + "/explode"); res.status != 404 {
			t.Fatalf("unknown action = %d", res.status)
		}
	})

	t.Run("pause and resume through the page", func(t *testing.T) {
		for _, step := range []struct{ action, status string }{{"pause", "paused"}, {"resume", "sending"}} {
			res := br.do("POST", "/admin/broadcasts/"+sid+"/"+step.action, url.Values{"csrf_token": {token}}, nil)
			if res.status != 303 {
				t.Fatalf("%s = %d:\n%s", step.action, res.status, res.body)
			}
			if s := b.status(t, id); s != step.status {
				t.Fatalf("after %s the status is %s", step.action, s)
			}
		}
	})

	t.Run("progress.json", func(t *testing.T) {
		res := br.get("/admin/progress.json?id=" + sid + "&id=" + itoa(other) + "&id=424242")
		var out struct {
			Broadcasts []struct {
				ID      int64    `json:"id"`
				Status  string   `json:"status"`
				ToGo    int64    `json:"to_go"`
				Actions []string `json:"actions"`
				Bars    []struct {
					Name     string `json:"name"`
					Segments []struct {
						Key string `json:"key"`
						N   int64  `json:"n"`
					} `json:"segments"`
				} `json:"bars"`
			} `json:"broadcasts"`
		}
		if err := json.Unmarshal([]byte(res.body), &out); err != nil || res.status != 200 {
			t.Fatalf("progress = %d %v: %s", res.status, err, res.body)
		}
		if len(out.Broadcasts) != 2 || out.Broadcasts[0].ID != id || out.Broadcasts[0].ToGo != 2 ||
			len(out.Broadcasts[0].Bars) != 3 || out.Broadcasts[0].Bars[0].Name != "all" || out.Broadcasts[0].Bars[0].Segments[0].N != 2 {
			t.Fatalf("progress = %+v", out)
		}
		one := br.get("/admin/broadcasts/" + sid + "/progress.json")
		if one.status != 200 || !strings.Contains(one.body, `"to_go":2`) {
			t.Fatalf("one progress = %d %s", one.status, one.body)
		}
		anon := b.browser(t).get("/admin/progress.json?id=" + sid)
		if anon.status != 401 {
			t.Fatalf("progress without a session = %d, want 401", anon.status)
		}
	})

	t.Run("assets are embedded", func(t *testing.T) {
		for path, ctype := range map[string]string{"/admin/static/admin.css": "text/css", "/admin/static/admin.js": "javascript",
			"/admin/static/icon.svg": "image/svg+xml"} {
			res := b.browser(t).get(path)
			if res.status != 200 || !strings.Contains(res.header.Get("Content-Type"), ctype) {
				t.Errorf("%s = %d %s", path, res.status, res.header.Get("Content-Type"))
			}
		}
		if res := b.browser(t).get("/admin/static/"); res.status != 404 {
			t.Errorf("static directory listing = %d", res.status)
		}
	})

	t.Run("the admin API beside the page is unchanged", func(t *testing.T) {
		req, _ := http.NewRequest("GET", b.server.URL+"/admin/v1/audit?broadcast="+sid, nil)
		req.Header.Set("Authorization", "Bearer "+b.adminKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("GET /admin/v1/audit = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if res := b.browser(t).get("/admin"); res.status/100 != 3 || res.header.Get("Location") != "/admin/" {
			t.Fatalf("GET /admin = %d, want a redirect to /admin/", res.status)
		}
	})
}

func itoa(id int64) string { return strconv.FormatInt(id, 10) }
