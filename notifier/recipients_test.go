package notifier_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestPutGetRecipient(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := map[string]any{"email": "ada@example.com", "locale": "en-GB", "timezone": "Europe/London", "attributes": map[string]any{"plan": "pro", "age": 36}}
	if r := b.do(t, "PUT", "/v1/recipients/ada", b.sendKey, body); r.status != 201 {
		t.Fatalf("create = %d %s", r.status, r.body)
	}
	body["email"] = "ada@lovelace.org"
	if r := b.do(t, "PUT", "/v1/recipients/ada", b.sendKey, body); r.status != 200 {
		t.Fatalf("replace = %d %s", r.status, r.body)
	}
	got := b.do(t, "GET", "/v1/recipients/ada", b.sendKey, nil).json(t)
	if got["email"] != "ada@lovelace.org" || got["locale"] != "en-GB" || got["timezone"] != "Europe/London" {
		t.Fatalf("recipient = %v", got)
	}
	if attrs := got["attributes"].(map[string]any); attrs["plan"] != "pro" || attrs["age"] != float64(36) {
		t.Fatalf("attributes = %v", attrs)
	}
	if n := b.count(t, "SELECT count(*) FROM recipient_history WHERE recipient_id = 'ada' AND email = 'ada@example.com'"); n != 1 {
		t.Fatalf("history rows of the old address = %d, want 1", n)
	}
	// Writing the same data again keeps the history as it is.
	b.do(t, "PUT", "/v1/recipients/ada", b.sendKey, body)
	if n := b.count(t, "SELECT count(*) FROM recipient_history WHERE recipient_id = 'ada'"); n != 1 {
		t.Fatalf("an unchanged PUT added history: %d rows", n)
	}
}

func TestPutRecipientRejectsBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tests := []struct {
		name   string
		id     string
		body   any
		status int
		fields []string
	}{
		{"bad email", "r1", `{"email":"not-an-address"}`, 422, []string{"email"}},
		{"display name in email", "r1", `{"email":"Ada <ada@example.com>"}`, 422, []string{"email"}},
		{"bad locale", "r1", `{"locale":"english please"}`, 422, []string{"locale"}},
		{"bad timezone", "r1", `{"timezone":"Mars/Olympus"}`, 422, []string{"timezone"}},
		{"attributes not an object", "r1", `{"attributes":[1,2]}`, 422, []string{"attributes"}},
		{"email not a string", "r1", `{"email":42}`, 422, []string{"email"}},
		{"unknown field", "r1", `{"emial":"a@b.co"}`, 422, []string{"emial"}},
		{"id in body", "r1", `{"id":"other"}`, 422, []string{"id"}},
		{"bad id", "-bad id", `{}`, 422, []string{"id"}},
		{"malformed JSON", "r1", `{"email": "a@b.co"`, 400, nil},
		{"empty body", "r1", ``, 400, nil},
		{"two JSON values", "r1", `{} {}`, 400, nil},
		{"not an object", "r1", `[]`, 400, nil},
		{"too large", "r1", `{"attributes":{"blob":"` + strings.Repeat("x", 2<<20) + `"}}`, 413, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.do(t, "PUT", "/v1/recipients/"+strings.ReplaceAll(tt.id, " ", "%20"), b.sendKey, tt.body)
			if r.status != tt.status {
				t.Fatalf("status = %d, want %d: %s", r.status, tt.status, r.body)
			}
			if fields := r.problemFields(t); tt.fields != nil && !slices.Equal(fields, tt.fields) {
				t.Fatalf("fields = %v, want %v", fields, tt.fields)
			}
		})
	}
	if n := b.count(t, "SELECT count(*) FROM recipients"); n != 0 {
		t.Fatalf("rejected requests wrote %d recipients", n)
	}
}

func TestBatchRecipients(t *testing.T) {
	t.Parallel()
	b := setup(t)
	batch := func(n int, plan string) map[string]any {
		var rs []map[string]any
		for i := range n {
			rs = append(rs, map[string]any{"id": fmt.Sprintf("u%d", i), "email": fmt.Sprintf("u%d@example.com", i), "attributes": map[string]any{"plan": plan}})
		}
		return map[string]any{"recipients": rs}
	}
	r := b.do(t, "POST", "/v1/recipients/batch", b.sendKey, batch(3, "free"))
	if got := r.json(t); r.status != 200 || got["created"] != float64(3) {
		t.Fatalf("first batch = %d %s", r.status, r.body)
	}
	second := batch(4, "free")
	second["recipients"].([]map[string]any)[1]["attributes"] = map[string]any{"plan": "pro"}
	got := b.do(t, "POST", "/v1/recipients/batch", b.sendKey, second).json(t)
	if got["created"] != float64(1) || got["updated"] != float64(1) || got["unchanged"] != float64(2) {
		t.Fatalf("second batch = %v, want 1 created, 1 updated, 2 unchanged", got)
	}

	t.Run("one bad item writes nothing", func(t *testing.T) {
		bad := batch(5, "x")
		items := bad["recipients"].([]map[string]any)
		for i := range items {
			items[i]["id"] = fmt.Sprintf("new%d", i)
		}
		items[3]["email"] = "broken"
		items[4]["id"] = "new0"
		r := b.do(t, "POST", "/v1/recipients/batch", b.sendKey, bad)
		if r.status != 422 {
			t.Fatalf("status = %d: %s", r.status, r.body)
		}
		if fields := r.problemFields(t); !slices.Equal(fields, []string{"recipients[3].email", "recipients[4].id"}) {
			t.Fatalf("fields = %v", fields)
		}
		if n := b.count(t, "SELECT count(*) FROM recipients WHERE id LIKE 'new%'"); n != 0 {
			t.Fatalf("a rejected batch wrote %d recipients", n)
		}
	})
	t.Run("time zones repeated in a batch are each checked", func(t *testing.T) {
		// Valid zones are remembered within a batch; an invalid one must be
		// reported at every position it appears, and a valid one stored.
		zoned := batch(4, "tz")
		items := zoned["recipients"].([]map[string]any)
		for i, zone := range []string{"Europe/Paris", "Mars/Olympus", "Europe/Paris", "Mars/Olympus"} {
			items[i]["id"], items[i]["timezone"] = fmt.Sprintf("tz%d", i), zone
		}
		r := b.do(t, "POST", "/v1/recipients/batch", b.sendKey, zoned)
		if fields := r.problemFields(t); r.status != 422 || !slices.Equal(fields, []string{"recipients[1].timezone", "recipients[3].timezone"}) {
			t.Fatalf("status = %d, fields = %v", r.status, fields)
		}
		items[1]["timezone"], items[3]["timezone"] = "Asia/Tokyo", "Europe/Paris"
		if r := b.do(t, "POST", "/v1/recipients/batch", b.sendKey, zoned); r.status != 200 {
			t.Fatalf("status = %d %s", r.status, r.body)
		}
		if n := b.count(t, "SELECT count(*) FROM recipients WHERE id LIKE 'tz%' AND timezone IN ('Europe/Paris', 'Asia/Tokyo') AND attributes = '{\"plan\": \"tz\"}'"); n != 4 {
			t.Fatalf("%d of 4 recipients stored with their zone and attributes", n)
		}
	})
	t.Run("limits", func(t *testing.T) {
		if r := b.do(t, "POST", "/v1/recipients/batch", b.sendKey, batch(10001, "x")); r.status != 422 {
			t.Fatalf("10,001 recipients = %d", r.status)
		}
		if r := b.do(t, "POST", "/v1/recipients/batch", b.sendKey, `{"recipients":[]}`); r.status != 422 {
			t.Fatalf("empty batch = %d", r.status)
		}
		huge := `{"recipients":[{"id":"a","attributes":{"x":"` + strings.Repeat("y", 33<<20) + `"}}]}`
		if r := b.do(t, "POST", "/v1/recipients/batch", b.sendKey, huge); r.status != 413 {
			t.Fatalf("33 MB batch = %d", r.status)
		}
	})
	t.Run("ten thousand in one request", func(t *testing.T) {
		if r := b.do(t, "POST", "/v1/recipients/batch", b.sendKey, batch(10000, "bulk")); r.status != 200 {
			t.Fatalf("status = %d %s", r.status, r.body)
		}
		if n := b.count(t, "SELECT count(*) FROM recipients WHERE attributes->>'plan' = 'bulk'"); n != 10000 {
			t.Fatalf("%d recipients in the bulk plan, want 10000", n)
		}
	})
}

func TestDeleteRecipientErasesPersonalData(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.do(t, "PUT", "/v1/recipients/eve", b.sendKey, map[string]any{"email": "eve@example.com", "attributes": map[string]any{"city": "Paris"}})
	b.do(t, "PUT", "/v1/recipients/eve", b.sendKey, map[string]any{"email": "eve2@example.com", "attributes": map[string]any{"city": "Lyon"}})
	b.do(t, "PUT", "/v1/recipients/eve/devices/tok-eve", b.sendKey, map[string]any{"platform": "ios"})
	b.do(t, "PUT", "/v1/recipients/eve/preferences", b.sendKey, map[string]any{"categories": map[string]any{"marketing": map[string]any{"email": false}}})

	if r := b.do(t, "DELETE", "/v1/recipients/eve", b.sendKey, nil); r.status != 204 {
		t.Fatalf("delete = %d %s", r.status, r.body)
	}
	if r := b.do(t, "GET", "/v1/recipients/eve", b.sendKey, nil); r.status != 404 {
		t.Fatalf("get after delete = %d", r.status)
	}
	if r := b.do(t, "DELETE", "/v1/recipients/eve", b.sendKey, nil); r.status != 404 {
		t.Fatalf("second delete = %d", r.status)
	}
	leftovers := b.count(t, `SELECT
		(SELECT count(*) FROM recipients WHERE id = 'eve' AND (email IS NOT NULL OR attributes <> '{}'))
		+ (SELECT count(*) FROM recipient_history WHERE recipient_id = 'eve' AND (email IS NOT NULL OR attributes <> '{}'))
		+ (SELECT count(*) FROM devices WHERE recipient_id = 'eve')
		+ (SELECT count(*) FROM preferences WHERE recipient_id = 'eve')
		+ (SELECT count(*) FROM preference_history WHERE recipient_id = 'eve')`)
	if leftovers != 0 {
		t.Fatalf("%d rows still hold eve's personal data", leftovers)
	}
	// The id can be used again, as a new person.
	if r := b.do(t, "PUT", "/v1/recipients/eve", b.sendKey, map[string]any{"email": "new@example.com"}); r.status != 200 && r.status != 201 {
		t.Fatalf("re-create = %d", r.status)
	}
}

func TestDevices(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.do(t, "PUT", "/v1/recipients/a", b.sendKey, map[string]any{})
	b.do(t, "PUT", "/v1/recipients/b", b.sendKey, map[string]any{})
	steps := []struct {
		name   string
		method string
		path   string
		body   any
		status int
	}{
		{"register", "PUT", "/v1/recipients/a/devices/tok1", `{"platform":"android"}`, 201},
		{"register again is a no-op", "PUT", "/v1/recipients/a/devices/tok1", `{"platform":"android"}`, 200},
		{"bad platform", "PUT", "/v1/recipients/a/devices/tok2", `{"platform":"windows-phone"}`, 422},
		{"unknown recipient", "PUT", "/v1/recipients/zed/devices/tok2", `{"platform":"ios"}`, 404},
		{"second device", "PUT", "/v1/recipients/a/devices/tok2", `{"platform":"web"}`, 201},
		{"token moves to b", "PUT", "/v1/recipients/b/devices/tok2", `{"platform":"web"}`, 201},
		{"delete", "DELETE", "/v1/recipients/a/devices/tok1", nil, 204},
		{"delete again", "DELETE", "/v1/recipients/a/devices/tok1", nil, 404},
	}
	for _, s := range steps {
		if r := b.do(t, s.method, s.path, b.sendKey, s.body); r.status != s.status {
			t.Fatalf("%s: status = %d, want %d: %s", s.name, r.status, s.status, r.body)
		}
	}
	a := b.do(t, "GET", "/v1/recipients/a", b.sendKey, nil).json(t)
	bb := b.do(t, "GET", "/v1/recipients/b", b.sendKey, nil).json(t)
	if len(a["devices"].([]any)) != 0 || len(bb["devices"].([]any)) != 1 {
		t.Fatalf("devices: a=%v b=%v; want a none, b tok2", a["devices"], bb["devices"])
	}
	if n := b.count(t, "SELECT count(*) FROM devices WHERE valid_to IS NOT NULL"); n != 2 {
		t.Fatalf("closed device rows kept in history = %d, want 2", n)
	}
}

func TestPreferences(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.do(t, "PUT", "/v1/recipients/p", b.sendKey, map[string]any{})
	if got := b.do(t, "GET", "/v1/recipients/p/preferences", b.sendKey, nil).json(t); len(got["categories"].(map[string]any)) != 0 {
		t.Fatalf("default preferences = %v", got)
	}
	tests := []struct {
		name   string
		path   string
		body   string
		status int
		fields []string
	}{
		{"opt out", "/v1/recipients/p/preferences", `{"categories":{"marketing":{"email":false,"push":true}}}`, 200, nil},
		{"change", "/v1/recipients/p/preferences", `{"categories":{"marketing":{"email":true}}}`, 200, nil},
		{"unknown channel", "/v1/recipients/p/preferences", `{"categories":{"marketing":{"fax":false}}}`, 422, []string{"categories.marketing.fax"}},
		{"required category", "/v1/recipients/p/preferences", `{"categories":{"security":{"email":false}}}`, 422, []string{"categories.security.email"}},
		{"bad category name", "/v1/recipients/p/preferences", `{"categories":{"Bad Name":{"email":false}}}`, 422, []string{"categories.Bad Name"}},
		{"missing categories", "/v1/recipients/p/preferences", `{}`, 422, []string{"categories"}},
		{"unknown recipient", "/v1/recipients/nobody/preferences", `{"categories":{}}`, 404, nil},
	}
	for _, tt := range tests {
		r := b.do(t, "PUT", tt.path, b.sendKey, tt.body)
		if r.status != tt.status {
			t.Fatalf("%s: status = %d, want %d: %s", tt.name, r.status, tt.status, r.body)
		}
		if tt.status >= 400 {
			if fields := r.problemFields(t); tt.fields != nil && !slices.Equal(fields, tt.fields) {
				t.Fatalf("%s: fields = %v, want %v", tt.name, fields, tt.fields)
			}
		}
	}
	got := b.do(t, "GET", "/v1/recipients/p/preferences", b.sendKey, nil).json(t)
	if got["categories"].(map[string]any)["marketing"].(map[string]any)["email"] != true {
		t.Fatalf("preferences = %v", got)
	}
	if n := b.count(t, "SELECT count(*) FROM preference_history WHERE recipient_id = 'p'"); n != 1 {
		t.Fatalf("preference history rows = %d, want 1", n)
	}
}
