package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/notifyd/notifyd/channels/email/sendgridfake"
	"github.com/notifyd/notifyd/channels/push/fcmfake"
)

// chromiumPath is Debian's Chromium, which .ci/run installs.
const chromiumPath = "/usr/bin/chromium"

// startChromium starts a headless Chromium with a fresh profile for the test.
// A missing Chromium fails the test, unless NOTIFYD_SKIP_BROWSER=1 says to skip.
func startChromium(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("NOTIFYD_SKIP_BROWSER") == "1" {
			t.Skipf("%s is missing and NOTIFYD_SKIP_BROWSER=1", chromiumPath)
		}
		t.Fatalf("the admin page's browser test needs Chromium at %s (apt-get install -y chromium; "+
			"set NOTIFYD_SKIP_BROWSER=1 to skip it): %v", chromiumPath, err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox, // root in CI
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// The first run starts the browser; it must not carry a timeout (see chromedp.Run).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	return ctx
}

// tab drives one browser tab and fails the test on any error.
type tab struct {
	t   *testing.T
	ctx context.Context
}

func (b *tab) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 45*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

func (b *tab) text(sel chromedp.CSS) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(sel))
	if err != nil {
		b.t.Fatalf("text of %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

func evalIn[T any](b *tab, expr string, opts ...chromedp.EvaluateOption) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, opts...))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

func (b *tab) location() string {
	return evalIn[string](b, `location.pathname + location.search`)
}

func (b *tab) cookie(name string) *network.Cookie {
	b.t.Helper()
	res, err := chromedp.Call(b.ctx, network.GetCookies, network.GetCookiesParams{})
	if err != nil {
		b.t.Fatal(err)
	}
	for _, c := range res.Cookies {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// screenshot saves the page as a PNG under NOTIFYD_SCREENSHOTS, when set (the
// README's pictures in docs/ are made this way): the whole page when height is
// 0, else the top of it in a viewport width x height; a width under 500 is shown
// as a phone would.
func (b *tab) screenshot(name string, width, height int64) {
	b.t.Helper()
	dir := os.Getenv("NOTIFYD_SCREENSHOTS")
	if dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	shot := chromedp.FullScreenshot(100)
	if height > 0 {
		var opts []chromedp.EmulateViewportOption
		if width < 500 {
			opts = append(opts, chromedp.EmulateScale(2), chromedp.EmulateMobile)
		}
		if err := chromedp.Do(ctx, chromedp.EmulateViewport(width, height, opts...), chromedp.Sleep(300*time.Millisecond)); err != nil {
			b.t.Fatal(err)
		}
		defer chromedp.Do(b.ctx, chromedp.ResetViewport()) //nolint:errcheck
		shot = chromedp.CaptureScreenshot()
	}
	png, err := chromedp.Run(ctx, shot)
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// countOf reads a number the page shows, such as "1,234".
func countOf(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.ReplaceAll(strings.Fields(s)[0], ",", ""))
	if err != nil {
		t.Fatalf("not a count: %q", s)
	}
	return n
}

func createKey(t *testing.T, e *e2e, name, scopes string) string {
	t.Helper()
	out, err := runCommand(t, e.env, "apikey", "create", "--name", name, "--scopes", scopes)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// TestAdminPageInBrowser drives the admin page in headless Chromium: sign in,
// watch a broadcast progress live, cancel it through the confirmation, see the
// status and the audit entry, sign out; forged posts and a send key get nowhere.
func TestAdminPageInBrowser(t *testing.T) {
	t.Parallel()
	b := &tab{t: t, ctx: startChromium(t)}
	// One bulk worker and slow providers: the broadcast takes most of a minute,
	// one batch (1,000 emails, 500 pushes) at a time; pushes go 50 at a time, so
	// each push batch takes about 4 s.
	e := startE2E(t, map[string]string{"NOTIFYD_BULK_WORKERS": "1"})
	opsKey := createKey(t, e, "ops-alice", "admin")
	sendKey := createKey(t, e, "backend-svc", "send")
	const n = 5000
	e.seed(t, "a", n, "pro")

	// A few people have no device left and a few opted out of news by email, so
	// the bars and the deliveries show failures and suppressions too.
	if _, err := e.pool.Exec(context.Background(), `DELETE FROM devices WHERE recipient_id IN ('a00001', 'a00002', 'a00003')`); err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"a00004", "a00005"} {
		prefs := map[string]any{"categories": map[string]any{"news": map[string]any{"email": false}}}
		if status, _, body := e.call(t, "PUT", "/v1/recipients/"+who+"/preferences", "", prefs); status != 200 {
			t.Fatalf("opt out = %d %v", status, body)
		}
	}

	// A small broadcast that completes, so the list has more than one.
	small := broadcastBody("Welcome series")
	delete(small, "segment")
	var firstIDs []string
	for i := range 40 {
		firstIDs = append(firstIDs, fmt.Sprintf("a%05d", i))
	}
	small["recipients"] = firstIDs
	_, _, created := e.call(t, "POST", "/v1/broadcasts", "welcome-1", small)
	e.waitStatus(t, created["id"], "completed", time.Minute)

	e.sendgrid.SetBehavior(sendgridfake.Behavior{Delay: 300 * time.Millisecond})
	e.fcm.SetBehavior(fcmfake.Behavior{Delay: 400 * time.Millisecond})
	status, _, created := e.call(t, "POST", "/v1/broadcasts", "spring-1", broadcastBody("Spring sale"))
	if status != 202 {
		t.Fatalf("create = %d %v", status, created)
	}
	id := fmt.Sprint(created["id"])
	detailPath := "/admin/broadcasts/" + id

	// A key without the admin scope cannot sign in.
	b.do("open the sign-in page",
		chromedp.Navigate(e.base+"/admin/"),
		chromedp.WaitVisible(chromedp.ID("signin-form")),
		chromedp.SendKeys(chromedp.ID("key"), sendKey),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("signin-error")),
	)
	if msg := b.text("#signin-error"); !strings.Contains(msg, "admin scope") {
		t.Fatalf("send key sign-in says %q", msg)
	}
	if c := b.cookie("notifyd_admin"); c != nil {
		t.Fatalf("a send key got a session cookie: %+v", c)
	}

	// An admin key signs in and sees the list, with both broadcasts.
	// The form comes back with an empty key field.
	b.do("sign in",
		chromedp.SendKeys(chromedp.ID("key"), opsKey),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("broadcasts")),
	)
	if who := b.text("[data-who]"); who != "ops-alice" {
		t.Fatalf("signed in as %q", who)
	}
	c := b.cookie("notifyd_admin")
	if c == nil || !c.HTTPOnly || c.SameSite != network.CookieSameSiteStrict || c.Path != "/admin" {
		t.Fatalf("session cookie = %+v; want HttpOnly, SameSite=Strict, Path=/admin", c)
	}
	if evalIn[string](b, `document.cookie`) != "" {
		t.Fatal("the page's script can read a cookie")
	}
	list := b.text("#broadcasts")
	if !strings.Contains(list, "Spring sale") || !strings.Contains(list, "Welcome series") {
		t.Fatalf("the list lacks a broadcast:\n%s", list)
	}

	// Let it get going, then picture the list with its bars mid-way.
	deadline := time.Now().Add(time.Minute)
	for {
		_, _, got := e.call(t, "GET", "/v1/broadcasts/"+id, "", nil)
		if counts := got["counts"].(map[string]any); counts["sent"].(float64) > n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the broadcast never got going: %v", got)
		}
		time.Sleep(200 * time.Millisecond)
	}
	b.do("wait for the list to refresh", chromedp.Sleep(2500*time.Millisecond))
	b.screenshot("admin-list.png", 0, 0)

	// Open it: the progress number changes without a reload.
	b.do("open the broadcast",
		chromedp.Click(chromedp.CSS("#broadcast-"+id+" .card-title")),
		chromedp.WaitVisible(chromedp.ID("togo")),
		chromedp.WaitVisible(chromedp.CSS("[data-live-dot]")),
	)
	if got := b.location(); got != detailPath {
		t.Fatalf("opened %s, want %s", got, detailPath)
	}
	evalIn[chromedp.Void](b, `window.notifydSamePage = "yes"`)
	first := countOf(t, b.text("#togo"))
	firstSent := b.text(`[data-bar="all"] [data-n="sent"]`)
	if first == 0 {
		t.Fatalf("nothing to go on a broadcast that is still sending")
	}
	changed := false
	for range 300 {
		if now := countOf(t, b.text("#togo")); now < first && b.text(`[data-bar="all"] [data-n="sent"]`) != firstSent {
			changed = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !changed {
		t.Fatalf("the progress did not change within 30 s (still %d to go)", first)
	}
	if evalIn[string](b, `window.notifydSamePage || "reloaded"`) != "yes" {
		t.Fatal("the page reloaded to show progress")
	}

	// A forged POST without the CSRF token, from this very page with its
	// cookie, is refused and changes nothing.
	forged := evalIn[int](b, fmt.Sprintf(`fetch(%q, {method: "POST", headers: {"Content-Type": "application/x-www-form-urlencoded"},
		body: "confirm=yes"}).then(r => r.status)`, detailPath+"/cancel"), chromedp.EvalAwaitPromise)
	if forged != 403 {
		t.Fatalf("a POST without the CSRF token answered %d, want 403", forged)
	}
	// So is one with the right token and cookie from another origin.
	token := evalIn[string](b, `document.querySelector("input[name=csrf_token]").value`)
	req, _ := http.NewRequest("POST", e.base+detailPath+"/cancel", strings.NewReader(url.Values{"csrf_token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	req.AddCookie(&http.Cookie{Name: "notifyd_admin", Value: b.cookie("notifyd_admin").Value})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("a cross-origin POST answered %d, want 403", resp.StatusCode)
	}
	if _, _, got := e.call(t, "GET", "/v1/broadcasts/"+id, "", nil); got["status"] != "sending" {
		t.Fatalf("after forged posts the broadcast is %v, want still sending", got["status"])
	}
	if _, _, audit := e.call(t, "GET", "/admin/v1/audit?broadcast="+id, "", nil); len(audit["entries"].([]any)) != 0 {
		t.Fatalf("forged posts were audited: %v", audit)
	}

	// Cancel through the confirmation, which says how many are still to go.
	b.do("ask to cancel",
		chromedp.Click(chromedp.ID("action-cancel")),
		chromedp.WaitVisible(chromedp.ID("confirm-togo")),
	)
	if got := b.location(); got != detailPath+"/cancel" {
		t.Fatalf("confirmation at %s", got)
	}
	if togo := b.text("#confirm-togo"); countOf(t, togo) == 0 || !strings.Contains(togo, "messages are still to go") {
		t.Fatalf("confirmation says %q", togo)
	}
	b.do("confirm the cancel",
		chromedp.Click(chromedp.ID("confirm")),
		chromedp.WaitVisible(chromedp.ID("flash")),
	)
	if s := b.text("#broadcast [data-status]"); s != "cancelled" {
		t.Fatalf("status on the page = %q, want cancelled", s)
	}
	if deliveries := b.text("#deliveries"); !strings.Contains(deliveries, "no_device") || !strings.Contains(deliveries, "preference") {
		t.Fatalf("the deliveries lack the failure and the suppression:\n%s", deliveries)
	}
	if who, what := b.text("#audit .audit-entry .actor"), b.text("#audit .audit-entry .audit-action"); who != "ops-alice" || what != "cancel" {
		t.Fatalf("audit entry on the page = %q %q, want ops-alice cancel", who, what)
	}
	if n := evalIn[int](b, `document.querySelectorAll("[data-action]:not([hidden])").length`); n != 0 {
		t.Fatalf("%d actions still offered on a cancelled broadcast", n)
	}
	_, _, final := e.call(t, "GET", "/v1/broadcasts/"+id, "", nil)
	counts := final["counts"].(map[string]any)
	if final["status"] != "cancelled" || counts["cancelled"].(float64) == 0 || counts["pending"].(float64) != 0 {
		t.Fatalf("after the cancel the API says %v %v", final["status"], counts)
	}
	_, _, audit := e.call(t, "GET", "/admin/v1/audit?broadcast="+id, "", nil)
	entries := audit["entries"].([]any)
	if len(entries) != 1 || entries[0].(map[string]any)["actor"] != "ops-alice" {
		t.Fatalf("audit = %v, want one entry by ops-alice", audit)
	}
	b.screenshot("admin-detail.png", 1280, 1250)

	// Sign out: back to the sign-in form, and the pages stay closed.
	b.do("sign out",
		chromedp.Click(chromedp.ID("signout")),
		chromedp.WaitVisible(chromedp.ID("signin-form")),
	)
	b.do("open the broadcast signed out",
		chromedp.Navigate(e.base+detailPath),
		chromedp.WaitVisible(chromedp.ID("signin-form")),
	)
	if got := b.location(); !strings.HasPrefix(got, "/admin/?next=") {
		t.Fatalf("signed out, the detail page went to %s", got)
	}
}
