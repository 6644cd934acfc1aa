package notifier_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/migrations/pgtest"
	"github.com/notifyd/notifyd/notifier"
)

// filterPeople is the directory the filter semantics are checked against.
var filterPeople = []map[string]any{
	{"id": "ann", "email": "ann@example.com", "locale": "en", "attributes": map[string]any{"plan": "pro", "age": 31, "tags": []any{"beta", "vip"}, "address": map[string]any{"city": "Paris"}, "since": "2024-03-01"}},
	{"id": "bob", "email": "bob@example.org", "locale": "fr", "attributes": map[string]any{"plan": "free", "age": 17, "tags": []any{"beta"}, "since": "2025-01-15"}},
	{"id": "cyd", "attributes": map[string]any{"plan": "team", "age": "unknown", "nickname": "cyd the great"}},
	{"id": "dan", "email": "dan@example.com", "attributes": map[string]any{"plan": nil, "age": 65.5}},
}

func TestSegmentFilterSemantics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if r := b.do(t, "POST", "/v1/recipients/batch", b.sendKey, map[string]any{"recipients": filterPeople}); r.status != 200 {
		t.Fatalf("batch = %d %s", r.status, r.body)
	}
	tests := []struct {
		filter string
		want   []string
	}{
		{`{"attr":"plan","op":"eq","value":"pro"}`, []string{"ann"}},
		{`{"attr":"plan","op":"eq","value":null}`, []string{"dan"}},
		{`{"attr":"plan","op":"ne","value":"pro"}`, []string{"bob", "cyd", "dan"}},
		{`{"attr":"plan","op":"in","value":["pro","team"]}`, []string{"ann", "cyd"}},
		{`{"attr":"plan","op":"nin","value":["pro","team"]}`, []string{"bob", "dan"}},
		{`{"attr":"nickname","op":"exists"}`, []string{"cyd"}},
		{`{"attr":"email","op":"exists","value":false}`, []string{"cyd"}},
		{`{"attr":"age","op":"gte","value":31}`, []string{"ann", "dan"}},
		{`{"attr":"age","op":"lt","value":18}`, []string{"bob"}},
		{`{"attr":"since","op":"gt","value":"2024-12-31"}`, []string{"bob"}},
		{`{"attr":"tags","op":"contains","value":"vip"}`, []string{"ann"}},
		{`{"attr":"nickname","op":"contains","value":"great"}`, []string{"cyd"}},
		{`{"attr":"address.city","op":"eq","value":"Paris"}`, []string{"ann"}},
		{`{"attr":"email","op":"contains","value":"example.com"}`, []string{"ann", "dan"}},
		{`{"attr":"locale","op":"eq","value":"fr"}`, []string{"bob"}},
		{`{"attr":"id","op":"in","value":["ann","dan","zed"]}`, []string{"ann", "dan"}},
		{`{"all":[{"attr":"tags","op":"contains","value":"beta"},{"attr":"age","op":"gte","value":18}]}`, []string{"ann"}},
		{`{"any":[{"attr":"plan","op":"eq","value":"team"},{"attr":"age","op":"gt","value":60}]}`, []string{"cyd", "dan"}},
		{`{"not":{"attr":"age","op":"gt","value":20}}`, []string{"bob", "cyd"}},
		{`{"not":{"attr":"missing","op":"eq","value":1}}`, []string{"ann", "bob", "cyd", "dan"}},
	}
	for i, tt := range tests {
		t.Run(tt.filter, func(t *testing.T) {
			key := fmt.Sprintf("s%d", i)
			r := b.do(t, "PUT", "/v1/segments/"+key, b.sendKey, `{"description":"test","filter":`+tt.filter+`}`)
			if r.status != 201 {
				t.Fatalf("put = %d %s", r.status, r.body)
			}
			got := b.matching(t, tt.filter)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("matches %v, want %v", got, tt.want)
			}
			count := b.do(t, "GET", "/v1/segments/"+key+"/count", b.sendKey, nil).json(t)
			if count["count"] != float64(len(tt.want)) {
				t.Fatalf("count endpoint = %v, want %d", count["count"], len(tt.want))
			}
		})
	}
}

// matching lists the ids matching a filter, through the same compiler the API uses.
func (b *testBundle) matching(t *testing.T, filter string) []string {
	t.Helper()
	ids, err := b.svc.FindMatchingIDs(context.Background(), json.RawMessage(filter))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	return ids
}

func TestSegmentValidation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	deep := `{"attr":"a","op":"exists"}`
	for range 9 {
		deep = `{"not":` + deep + `}`
	}
	tests := []struct {
		name   string
		key    string
		body   string
		fields []string
	}{
		{"unknown op", "s", `{"filter":{"attr":"plan","op":"like","value":"x"}}`, []string{"filter.op"}},
		{"wrong value type for gt", "s", `{"filter":{"attr":"age","op":"gt","value":[1]}}`, []string{"filter.value"}},
		{"in needs an array", "s", `{"filter":{"attr":"plan","op":"in","value":"pro"}}`, []string{"filter.value"}},
		{"in with an object", "s", `{"filter":{"attr":"plan","op":"in","value":["a",{"b":1}]}}`, []string{"filter.value[1]"}},
		{"exists takes a boolean", "s", `{"filter":{"attr":"plan","op":"exists","value":"yes"}}`, []string{"filter.value"}},
		{"nested problem", "s", `{"filter":{"all":[{"attr":"a","op":"eq","value":1},{"any":[{"attr":"b","op":"nope"}]}]}}`, []string{"filter.all[1].any[0].op"}},
		{"empty group", "s", `{"filter":{"all":[]}}`, []string{"filter.all"}},
		{"two kinds", "s", `{"filter":{"all":[{"attr":"a","op":"exists"}],"attr":"b"}}`, []string{"filter"}},
		{"bad attr", "s", `{"filter":{"attr":"a b; drop table","op":"exists"}}`, []string{"filter.attr"}},
		{"too deep", "s", `{"filter":` + deep + `}`, nil},
		{"missing filter", "s", `{"description":"x"}`, []string{"filter"}},
		{"reserved key", "all", `{"filter":{"attr":"a","op":"exists"}}`, []string{"key"}},
		{"bad key", "Bad%20Key", `{"filter":{"attr":"a","op":"exists"}}`, []string{"key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.do(t, "PUT", "/v1/segments/"+tt.key, b.sendKey, tt.body)
			if r.status != 422 {
				t.Fatalf("status = %d, want 422: %s", r.status, r.body)
			}
			fields := r.problemFields(t)
			if tt.fields != nil && !slices.Equal(fields, tt.fields) {
				t.Fatalf("fields = %v, want %v", fields, tt.fields)
			}
			if len(fields) == 0 {
				t.Fatal("a 422 must name the field")
			}
		})
	}
	if n := b.count(t, "SELECT count(*) FROM segments"); n != 0 {
		t.Fatalf("rejected segments wrote %d rows", n)
	}
	if r := b.do(t, "GET", "/v1/segments/nope", b.sendKey, nil); r.status != 404 {
		t.Fatalf("unknown segment = %d", r.status)
	}
	if r := b.do(t, "GET", "/v1/segments/all/count?as_of=yesterday", b.sendKey, nil); r.status != 422 {
		t.Fatalf("bad as_of = %d", r.status)
	}
}

func TestSegmentCountAsOfHonoursHistory(t *testing.T) {
	t.Parallel()
	b := setup(t)
	put := func(id, plan string) {
		t.Helper()
		if r := b.do(t, "PUT", "/v1/recipients/"+id, b.sendKey, map[string]any{"email": id + "@example.com", "attributes": map[string]any{"plan": plan}}); r.status >= 300 {
			t.Fatalf("put %s = %d", id, r.status)
		}
	}
	for _, id := range []string{"a", "b", "c", "d"} {
		put(id, "pro")
	}
	put("e", "free")
	b.do(t, "PUT", "/v1/segments/pro", b.sendKey, `{"filter":{"attr":"plan","op":"eq","value":"pro"}}`)
	time.Sleep(20 * time.Millisecond)
	before := time.Now()
	time.Sleep(20 * time.Millisecond)

	put("a", "free") // downgraded
	put("e", "pro")  // upgraded
	put("f", "pro")  // new
	put("g", "pro")  // new
	b.do(t, "DELETE", "/v1/recipients/b", b.sendKey, nil)

	countAt := func(asOf string) float64 {
		path := "/v1/segments/pro/count"
		if asOf != "" {
			path += "?as_of=" + url.QueryEscape(asOf)
		}
		r := b.do(t, "GET", path, b.sendKey, nil)
		if r.status != 200 {
			t.Fatalf("count = %d %s", r.status, r.body)
		}
		return r.json(t)["count"].(float64)
	}
	// Before: a b c d. Now: c d e f g (b erased: never counted again, even as of before).
	if got := countAt(""); got != 5 {
		t.Fatalf("count now = %v, want 5", got)
	}
	if got := countAt(before.Format(time.RFC3339Nano)); got != 3 {
		t.Fatalf("count as of before = %v, want 3 (a, c, d; b is erased)", got)
	}
	if got := countAt(before.Add(-time.Hour).Format(time.RFC3339Nano)); got != 0 {
		t.Fatalf("count as of an hour before = %v, want 0", got)
	}
	if got := countAt(time.Now().Add(time.Hour).Format(time.RFC3339Nano)); got != 5 {
		t.Fatalf("count as of the future = %v, want 5", got)
	}
}

// FuzzFilter feeds arbitrary JSON to the filter parser and compiler: no input may
// panic, and every filter that parses must run in Postgres without error.
func FuzzFilter(f *testing.F) {
	for _, seed := range []string{
		`{"attr":"plan","op":"eq","value":"pro"}`,
		`{"all":[{"attr":"age","op":"gt","value":1.5},{"not":{"attr":"tags","op":"contains","value":"x"}}]}`,
		`{"any":[{"attr":"email","op":"exists"},{"attr":"a.b.c","op":"in","value":[1,"2",true]}]}`,
		`{"attr":"since","op":"lte","value":"2020-01-01"}`,
		`{"attr":"x","op":"gt","value":1e308}`,
	} {
		f.Add([]byte(seed))
	}
	pool := pgtest.NewPool(f)
	svc := notifier.NewService(pool, nil, nil)
	ctx := context.Background()
	var people []notifier.RecipientInput
	for _, p := range filterPeople {
		in := notifier.RecipientInput{ID: p["id"].(string), Attributes: p["attributes"].(map[string]any)}
		in.Email, _ = p["email"].(string)
		people = append(people, in)
	}
	if _, err := svc.PutRecipients(ctx, people); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		filter, problems := notifier.ParseFilter(raw, "filter")
		if len(problems) > 0 {
			for field := range problems {
				if !strings.HasPrefix(field, "filter") {
					t.Fatalf("problem field %q is not under filter", field)
				}
			}
			return
		}
		canonical, err := json.Marshal(filter)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.FindMatchingIDs(ctx, canonical); err != nil {
			t.Fatalf("filter %s parsed but failed in Postgres: %v", raw, err)
		}
	})
}
