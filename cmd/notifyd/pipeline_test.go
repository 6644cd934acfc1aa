package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/channels/email/sendgridfake"
	"github.com/notifyd/notifyd/channels/push/fcmfake"
	"github.com/notifyd/notifyd/migrations/pgtest"
)

// e2e is a running notifyd (through run(), role all) against the fake providers.
type e2e struct {
	base     string
	key      string
	pool     *pgxpool.Pool
	sendgrid *sendgridfake.Server
	fcm      *fcmfake.Server
	env      map[string]string
}

func startE2E(t *testing.T, extraEnv map[string]string) *e2e {
	t.Helper()
	sg := sendgridfake.New("SG.test")
	sgServer := httptest.NewServer(sg)
	t.Cleanup(sgServer.Close)
	fcm := fcmfake.NewServer("demo-project")
	fcmServer := httptest.NewServer(fcm)
	t.Cleanup(fcmServer.Close)

	dbURL := pgtest.NewDatabase(t)
	env := map[string]string{
		"DATABASE_URL":              dbURL,
		"NOTIFYD_ADDR":              "127.0.0.1:0",
		"NOTIFYD_SENDGRID_API_KEY":  "SG.test",
		"NOTIFYD_SENDGRID_BASE_URL": sgServer.URL,
		"NOTIFYD_EMAIL_FROM":        "news@example.com",
		"NOTIFYD_FCM_PROJECT_ID":    "demo-project",
		"NOTIFYD_FCM_CREDENTIALS":   "none",
		"NOTIFYD_FCM_ENDPOINT":      fcmServer.URL + "/v1",
		"NOTIFYD_EMAIL_RATE":        "100000",
		"NOTIFYD_PUSH_RATE":         "100000",
		"NOTIFYD_SECRET":            "e2e-secret-that-is-long-enough-0123456789",
		"NOTIFYD_PUBLIC_URL":        "https://notify.example.test",
	}
	for k, v := range extraEnv {
		env[k] = v
	}
	if _, err := runCommand(t, env, "migrate"); err != nil {
		t.Fatal(err)
	}
	out, err := runCommand(t, env, "apikey", "create", "--name", "e2e", "--scopes", "send,admin")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")

	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"notifyd", "serve"}, envOf(env), &syncBuffer{}, &stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("serve did not stop")
		}
	})
	base := waitListening(t, &stderr)
	waitReady(t, base)
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return &e2e{base: base, key: lines[len(lines)-1], pool: pool, sendgrid: sg, fcm: fcm, env: env}
}

func (e *e2e) call(t *testing.T, method, path, idemKey string, body any) (int, http.Header, map[string]any) {
	t.Helper()
	var reader io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		reader = strings.NewReader(string(raw))
	}
	req, _ := http.NewRequest(method, e.base+path, reader)
	req.Header.Set("Authorization", "Bearer "+e.key)
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, resp.Header, out
}

// seed imports n recipients r00000.. through the batch endpoint, each with an
// email, and gives every one a push device (devices are written directly: the
// API registers them one at a time).
func (e *e2e) seed(t *testing.T, prefix string, n int, plan string) {
	t.Helper()
	for start := 0; start < n; start += 5000 {
		var batch []map[string]any
		for i := start; i < min(start+5000, n); i++ {
			batch = append(batch, map[string]any{"id": fmt.Sprintf("%s%05d", prefix, i), "email": fmt.Sprintf("%s%05d@example.com", prefix, i),
				"attributes": map[string]any{"name": fmt.Sprintf("Person %d", i), "plan": plan}})
		}
		if status, _, body := e.call(t, "POST", "/v1/recipients/batch", "", map[string]any{"recipients": batch}); status != 200 {
			t.Fatalf("seed batch = %d %v", status, body)
		}
	}
	_, err := e.pool.Exec(context.Background(), `INSERT INTO devices (recipient_id, token, platform)
		SELECT id, 'tok-' || id, 'android' FROM recipients WHERE id LIKE $1 || '%'`, prefix)
	if err != nil {
		t.Fatal(err)
	}
}

func (e *e2e) waitStatus(t *testing.T, id any, want string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last map[string]any
	for time.Now().Before(deadline) {
		_, _, last = e.call(t, "GET", fmt.Sprintf("/v1/broadcasts/%v", id), "", nil)
		if last["status"] == want {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("broadcast %v never reached %s; last: %v", id, want, last)
	return nil
}

// waitNotificationCompleted polls GET /v1/notifications/{id} until it is
// completed (or fails the test after 30 s) and returns it.
func (e *e2e) waitNotificationCompleted(t *testing.T, id any) map[string]any {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _, n := e.call(t, "GET", fmt.Sprintf("/v1/notifications/%v", id), "", nil)
		if n["status"] == "completed" {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("notification %v never completed: %v", id, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func broadcastBody(name string) map[string]any {
	return map[string]any{
		"name": name, "category": "news", "segment": "all", "channels": []string{"email", "push"},
		"email": map[string]any{"subject": "Hello {{.Recipient.Attributes.name}}", "text": "Hi {{.Recipient.Attributes.name}}, news inside.",
			"html": "<p>Hi {{.Recipient.Attributes.name}}</p>"},
		"push": map[string]any{"title": "News", "body": "For {{.Recipient.Attributes.name}}"},
	}
}

func TestBroadcastEndToEnd(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil)
	const n = 10000
	e.seed(t, "r", n, "pro")

	// A replay storm: 30 identical requests racing; exactly one broadcast.
	body := broadcastBody("launch")
	var wg sync.WaitGroup
	statuses := make([]int, 30)
	ids := make([]any, 30)
	replayed := make([]bool, 30)
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, header, out := e.call(t, "POST", "/v1/broadcasts", "launch-1", body)
			statuses[i], ids[i], replayed[i] = status, out["id"], header.Get("Idempotent-Replayed") == "true"
		}()
	}
	wg.Wait()
	var id any
	created := 0
	for i, s := range statuses {
		switch s {
		case 202:
			if id == nil {
				id = ids[i]
			} else if ids[i] != id {
				t.Fatalf("two broadcast ids answered: %v and %v", id, ids[i])
			}
			if !replayed[i] {
				created++
			}
		case 409:
		default:
			t.Fatalf("storm request answered %d", s)
		}
	}
	if created != 1 {
		t.Fatalf("%d requests created a broadcast, want 1", created)
	}
	// After the storm, a replay answers the original, and another body is refused.
	status, header, out := e.call(t, "POST", "/v1/broadcasts", "launch-1", body)
	if status != 202 || header.Get("Idempotent-Replayed") != "true" || out["id"] != id {
		t.Fatalf("replay = %d %v %v", status, header.Get("Idempotent-Replayed"), out)
	}
	// Replays of a finished request, racing each other, all answer the original.
	var replays sync.WaitGroup
	replayStatus := make([]string, 30)
	for i := range 30 {
		replays.Add(1)
		go func() {
			defer replays.Done()
			status, header, out := e.call(t, "POST", "/v1/broadcasts", "launch-1", body)
			replayStatus[i] = fmt.Sprint(status, header.Get("Idempotent-Replayed"), out["id"] == id)
		}()
	}
	replays.Wait()
	for _, s := range replayStatus {
		if s != "202truetrue" {
			t.Fatalf("a concurrent replay of a finished request answered %s, want 202 replayed with the same id", s)
		}
	}
	other := broadcastBody("something else")
	if status, _, _ := e.call(t, "POST", "/v1/broadcasts", "launch-1", other); status != 422 {
		t.Fatalf("same key, other body = %d, want 422", status)
	}
	if status, _, _ := e.call(t, "POST", "/v1/broadcasts", "", body); status != 400 {
		t.Fatalf("no key = %d, want 400", status)
	}
	var count int
	if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM broadcasts").Scan(&count); err != nil || count != 1 {
		t.Fatalf("broadcasts in the database = %d (%v), want 1", count, err)
	}

	final := e.waitStatus(t, id, "completed", 3*time.Minute)
	counts := final["counts"].(map[string]any)
	if counts["recipients"] != float64(n) || counts["sent"] != float64(2*n) {
		t.Fatalf("counts = %v, want %d recipients and %d sent", counts, n, 2*n)
	}
	// Each person got exactly one email and one push, rendered for them and
	// carrying the delivery's identity.
	seen := map[string]int{}
	for _, m := range e.sendgrid.Messages() {
		seen[m.To]++
		if m.CustomArgs["notifyd_broadcast_id"] != fmt.Sprint(id) || m.CustomArgs["notifyd_delivery_id"] == "" {
			t.Fatalf("custom_args = %v", m.CustomArgs)
		}
		if !strings.HasPrefix(m.Subject, "Hello Person ") {
			t.Fatalf("subject = %q", m.Subject)
		}
	}
	if len(seen) != n || e.sendgrid.Count() != n {
		t.Fatalf("emails: %d distinct addresses in %d messages, want %d each", len(seen), e.sendgrid.Count(), n)
	}
	tokens := map[string]int{}
	for _, m := range e.fcm.Messages() {
		tokens[m.Token]++
		if m.Data["notifyd_broadcast_id"] != fmt.Sprint(id) || m.Data["notifyd_delivery_id"] == "" {
			t.Fatalf("push data = %v", m.Data)
		}
	}
	if len(tokens) != n || e.fcm.Count() != n {
		t.Fatalf("pushes: %d distinct tokens in %d messages, want %d each", len(tokens), e.fcm.Count(), n)
	}
	// The deliveries listing is the stored snapshot with provider ids.
	_, _, page := e.call(t, "GET", fmt.Sprintf("/v1/broadcasts/%v/deliveries?limit=3&channel=email", id), "", nil)
	list := page["deliveries"].([]any)
	if len(list) != 3 || page["next_cursor"] == "" {
		t.Fatalf("deliveries page = %v", page)
	}
	first := list[0].(map[string]any)
	if first["status"] != "sent" || first["provider_id"] == "" || first["recipient_id"] != "r00000" || first["attempts"] != float64(1) {
		t.Fatalf("first delivery = %v", first)
	}
}

func TestCutoffSnapshotAndDedupe(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil)
	e.seed(t, "c", 50, "pro")
	if status, _, _ := e.call(t, "PUT", "/v1/segments/pro", "", map[string]any{"filter": map[string]any{"attr": "plan", "op": "eq", "value": "pro"}}); status != 201 {
		t.Fatal("segment")
	}
	cutoff := time.Now().UTC()
	time.Sleep(50 * time.Millisecond)
	// After the cut-off: ten leave the segment, twenty join as new people.
	for i := range 10 {
		e.call(t, "PUT", fmt.Sprintf("/v1/recipients/c%05d", i), "", map[string]any{"email": fmt.Sprintf("c%05d@example.com", i), "attributes": map[string]any{"name": "x", "plan": "free"}})
	}
	e.seed(t, "late", 20, "pro")

	body := broadcastBody("snapshot")
	body["segment"] = "pro"
	body["channels"] = []string{"email"}
	body["cutoff_at"] = cutoff.Format(time.RFC3339Nano)
	body["dedupe_key"] = "welcome-2026"
	status, _, out := e.call(t, "POST", "/v1/broadcasts", "snap-1", body)
	if status != 202 {
		t.Fatalf("create = %d %v", status, out)
	}
	final := e.waitStatus(t, out["id"], "completed", time.Minute)
	if c := final["counts"].(map[string]any); c["recipients"] != float64(50) || c["sent"] != float64(50) {
		t.Fatalf("counts = %v; want the 50 of the cut-off, not who joined or left later", c)
	}
	for _, m := range e.sendgrid.Messages() {
		if strings.HasPrefix(m.To, "late") {
			t.Fatalf("%s joined after the cut-off but was sent to", m.To)
		}
	}

	// A second broadcast with the same dedupe key, to everyone now: the 50 already
	// sent are suppressed as duplicates; only the 20 late joiners get it.
	body2 := broadcastBody("snapshot again")
	body2["channels"] = []string{"email"}
	body2["dedupe_key"] = "welcome-2026"
	_, _, out2 := e.call(t, "POST", "/v1/broadcasts", "snap-2", body2)
	final2 := e.waitStatus(t, out2["id"], "completed", time.Minute)
	if c := final2["counts"].(map[string]any); c["sent"] != float64(20) || c["suppressed"] != float64(50) {
		t.Fatalf("second broadcast counts = %v, want 20 sent and 50 suppressed duplicates", c)
	}
	if got := e.sendgrid.Count(); got != 70 {
		t.Fatalf("the fake received %d emails, want 70", got)
	}
	_, _, dups := e.call(t, "GET", fmt.Sprintf("/v1/broadcasts/%v/deliveries?status=suppressed&limit=1", out2["id"]), "", nil)
	if d := dups["deliveries"].([]any)[0].(map[string]any); d["reason"] != "duplicate" {
		t.Fatalf("suppressed delivery = %v, want reason duplicate", d)
	}
}

func TestNotificationAndCrashBetweenClaimAndSend(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil)
	e.seed(t, "n", 3, "pro")
	status, _, out := e.call(t, "POST", "/v1/notifications", "note-1", map[string]any{
		"recipient": "n00001", "category": "security", "channels": []string{"email", "push", "inbox"},
		"email": map[string]any{"subject": "Your code", "text": "Code for {{.Recipient.Attributes.name}}: 1234"},
		"push":  map[string]any{"title": "Your code", "body": "1234"},
		"inbox": map[string]any{"title": "Sign-in code sent"},
	})
	if status != 202 {
		t.Fatalf("notification = %d %v", status, out)
	}
	n := e.waitNotificationCompleted(t, out["id"])
	for _, d := range n["deliveries"].([]any) {
		if d.(map[string]any)["status"] != "sent" {
			t.Fatalf("delivery = %v", d)
		}
	}

	// A worker that died after claiming (sending) and before recording: the
	// delivery is swept to unknown and never sent again, whatever River re-runs.
	ctx := context.Background()
	var bid int64
	err := e.pool.QueryRow(ctx, `INSERT INTO broadcasts (name, category, channels, content, cutoff_at, status, created_by, expanded)
		VALUES ('crash', 'news', '{email}', '{"email":{"subject":"s","text":"t"}}', now(), 'sending', 'test', true) RETURNING id`).Scan(&bid)
	if err != nil {
		t.Fatal(err)
	}
	var did int64
	err = e.pool.QueryRow(ctx, `INSERT INTO deliveries (broadcast_id, recipient_id, channel, status, address, attempts, claimed_at)
		VALUES ($1, 'n00002', 'email', 'sending', 'n00002@example.com', 1, now() - interval '10 minutes') RETURNING id`, bid).Scan(&did)
	if err != nil {
		t.Fatal(err)
	}
	before := e.sendgrid.Count()
	// River re-running the batch job (a retry or the rescuer) finds nothing to claim.
	if _, err := e.pool.Exec(ctx, `INSERT INTO river_job (args, kind, max_attempts, queue, state, priority)
		VALUES ($1, 'notifyd.deliver', 5, 'bulk_email', 'available', 2)`,
		fmt.Sprintf(`{"broadcast_id":%d,"channel":"email","first_id":%d,"last_id":%d,"count":1}`, bid, did, did)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(40 * time.Second)
	for {
		var st string
		if err := e.pool.QueryRow(ctx, "SELECT status FROM deliveries WHERE id = $1", did).Scan(&st); err != nil {
			t.Fatal(err)
		}
		if st == "unknown" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("interrupted delivery is %s, want unknown", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.waitStatus(t, bid, "completed", 30*time.Second)
	if got := e.sendgrid.Count(); got != before {
		t.Fatalf("the interrupted delivery was sent again (%d -> %d emails)", before, got)
	}
	var unknown int
	_ = e.pool.QueryRow(ctx, "SELECT count(*) FROM deliveries WHERE status = 'unknown'").Scan(&unknown)
	if unknown != 1 {
		t.Fatalf("unknown deliveries = %d, want 1", unknown)
	}
}

func (e *e2e) sendOnlyKey(t *testing.T) string {
	t.Helper()
	out, err := runCommand(t, e.env, "apikey", "create", "--name", fmt.Sprintf("send-only-%d", time.Now().UnixNano()), "--scopes", "send")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

func (e *e2e) callWith(t *testing.T, key, method, path string) (int, http.Header, map[string]any) {
	t.Helper()
	saved := *e
	saved.key = key
	return saved.call(t, method, path, "", nil)
}

func TestDryRunCountsAndRendersWithoutWriting(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil)
	e.seed(t, "d", 30, "pro")
	if status, _, _ := e.call(t, "PUT", "/v1/recipients/d00003/preferences", "", map[string]any{"categories": map[string]any{"news": map[string]any{"email": false, "push": false}}}); status != 200 {
		t.Fatal("preferences")
	}
	for _, id := range []string{"d00004", "d00005"} {
		if status, _, _ := e.call(t, "DELETE", "/v1/recipients/"+id+"/devices/tok-"+id, "", nil); status != 204 {
			t.Fatal("device delete")
		}
	}
	body := broadcastBody("dry")
	body["dry_run"] = true
	status, _, res := e.call(t, "POST", "/v1/broadcasts", "", body)
	if status != 200 || res["dry_run"] != true || res["recipients"] != float64(30) {
		t.Fatalf("dry run = %d %v", status, res)
	}
	channels := res["channels"].(map[string]any)
	email, push := channels["email"].(map[string]any), channels["push"].(map[string]any)
	if email["to_send"] != float64(29) || email["suppressed_by_reason"].(map[string]any)["preference"] != float64(1) {
		t.Fatalf("email = %v, want 29 to send and 1 opted out", email)
	}
	if push["to_send"] != float64(27) || push["suppressed_by_reason"].(map[string]any)["no_device"] != float64(2) {
		t.Fatalf("push = %v, want 27 to send, 2 without a device, 1 opted out", push)
	}
	sample := res["samples"].(map[string]any)["email"].(map[string]any)["email"].(map[string]any)
	if sample["subject"] != "Hello Person 0" {
		t.Fatalf("sample = %v", sample)
	}
	var broadcasts, deliveries int
	_ = e.pool.QueryRow(context.Background(), "SELECT (SELECT count(*) FROM broadcasts), (SELECT count(*) FROM deliveries)").Scan(&broadcasts, &deliveries)
	if broadcasts != 0 || deliveries != 0 {
		t.Fatalf("a dry run wrote %d broadcasts and %d deliveries", broadcasts, deliveries)
	}
	// Without dry_run, the missing key is still refused.
	delete(body, "dry_run")
	if status, _, _ := e.call(t, "POST", "/v1/broadcasts", "", body); status != 400 {
		t.Fatalf("no key = %d, want 400", status)
	}
}
