package notifier_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/notifyd/notifyd/notifier"
)

// inboxPage is GET /v1/recipients/{id}/inbox as a client reads it.
type inboxPage struct {
	Items []struct {
		ID          int64      `json:"id"`
		Title       string     `json:"title"`
		Body        string     `json:"body"`
		URL         string     `json:"url"`
		Category    string     `json:"category"`
		BroadcastID *int64     `json:"broadcast_id"`
		CreatedAt   time.Time  `json:"created_at"`
		ReadAt      *time.Time `json:"read_at"`
	} `json:"items"`
	UnreadCount int64   `json:"unread_count"`
	NextCursor  *string `json:"next_cursor"`
}

func (r response) inboxPage(t *testing.T) inboxPage {
	t.Helper()
	if r.status != 200 {
		t.Fatalf("status = %d: %s", r.status, r.body)
	}
	var p inboxPage
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("%v: %s", err, r.body)
	}
	return p
}

// seedInbox creates the recipient and n inbox items for it, the ones whose index
// is in read already read, and returns the item ids oldest first.
func seedInbox(t *testing.T, b *testBundle, recipient string, n int, read ...int) []int64 {
	t.Helper()
	if r := b.do(t, "PUT", "/v1/recipients/"+recipient, b.sendKey, map[string]any{}); r.status != 201 && r.status != 200 {
		t.Fatalf("PUT recipient = %d %s", r.status, r.body)
	}
	ids := make([]int64, n)
	for i := range n {
		var broadcastID *int64
		if i%2 == 0 {
			bid := int64(100 + i)
			broadcastID = &bid
		}
		var readAt *time.Time
		if slices.Contains(read, i) {
			at := time.Now().Add(-time.Minute)
			readAt = &at
		}
		err := b.pool.QueryRow(context.Background(), `INSERT INTO inbox_items
			(recipient_id, delivery_id, broadcast_id, category, title, body, url, read_at)
			VALUES ($1, (SELECT coalesce(max(delivery_id), 0) + 1 FROM inbox_items), $2, 'news', $3, 'body', 'https://example.com', $4)
			RETURNING id`, recipient, broadcastID, fmt.Sprintf("%s %d", recipient, i), readAt).Scan(&ids[i])
		if err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// newestFirst returns ids[i] for the indexes i that keep says, newest first.
func newestFirst(ids []int64, keep func(i int) bool) []int64 {
	var out []int64
	for i := len(ids) - 1; i >= 0; i-- {
		if keep(i) {
			out = append(out, ids[i])
		}
	}
	return out
}

func TestInboxPagination(t *testing.T) {
	t.Parallel()
	b := setup(t)
	read := []int{1, 4, 5}
	ids := seedInbox(t, b, "ada", 7, read...)
	seedInbox(t, b, "bob", 3) // someone else's items never show

	all := newestFirst(ids, func(int) bool { return true })
	unread := newestFirst(ids, func(i int) bool { return !slices.Contains(read, i) })
	tests := []struct {
		query string
		limit int // the page size the query asks for
		want  []int64
	}{
		{"", 50, all},
		{"?limit=1", 1, all},
		{"?limit=2", 2, all},
		{"?limit=7", 7, all},
		{"?limit=200", 200, all},
		{"?unread=false&limit=3", 3, all},
		{"?unread=true", 50, unread},
		{"?unread=true&limit=1", 1, unread},
		{"?unread=true&limit=3", 3, unread},
		{"?unread=true&limit=4", 4, unread},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			t.Parallel()
			var got []int64
			path := "/v1/recipients/ada/inbox" + tt.query
			sep := "?"
			if tt.query != "" {
				sep = "&"
			}
			for pages := 0; ; pages++ {
				if pages > len(ids) {
					t.Fatal("paging does not end")
				}
				p := b.do(t, "GET", path, b.sendKey, nil).inboxPage(t)
				if p.UnreadCount != int64(len(ids)-len(read)) {
					t.Fatalf("unread_count = %d, want %d", p.UnreadCount, len(ids)-len(read))
				}
				for _, it := range p.Items {
					got = append(got, it.ID)
				}
				if p.NextCursor == nil {
					break
				}
				if len(p.Items) != tt.limit {
					t.Fatalf("a page before the last has %d items, want %d", len(p.Items), tt.limit)
				}
				path = "/v1/recipients/ada/inbox" + tt.query + sep + "cursor=" + *p.NextCursor
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("items = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestInboxItemFields(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ids := seedInbox(t, b, "ada", 2, 0)
	p := b.do(t, "GET", "/v1/recipients/ada/inbox", b.sendKey, nil).inboxPage(t)
	if len(p.Items) != 2 || p.NextCursor != nil || p.UnreadCount != 1 {
		t.Fatalf("page = %+v", p)
	}
	newer, older := p.Items[0], p.Items[1]
	if newer.ID != ids[1] || newer.Title != "ada 1" || newer.Body != "body" || newer.URL != "https://example.com" ||
		newer.Category != "news" || newer.BroadcastID != nil || newer.ReadAt != nil || newer.CreatedAt.IsZero() {
		t.Fatalf("unread notification item = %+v", newer)
	}
	if older.ID != ids[0] || older.BroadcastID == nil || *older.BroadcastID != 100 || older.ReadAt == nil {
		t.Fatalf("read broadcast item = %+v", older)
	}
	// An empty inbox is an empty list, not null.
	seedInbox(t, b, "bob", 0)
	if r := b.do(t, "GET", "/v1/recipients/bob/inbox", b.sendKey, nil); string(r.body) != `{"items":[],"unread_count":0}`+"\n" {
		t.Fatalf("empty inbox = %s", r.body)
	}
}

// Pages follow ids: items that arrive or are read between pages neither repeat
// nor push another item out of the listing.
func TestInboxPaginationIsStable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ids := seedInbox(t, b, "ada", 4)
	first := b.do(t, "GET", "/v1/recipients/ada/inbox?unread=true&limit=2", b.sendKey, nil).inboxPage(t)
	seedInbox(t, b, "ada", 2) // newer than the first page
	if r := b.do(t, "POST", fmt.Sprintf("/v1/recipients/ada/inbox/%d/read", ids[3]), b.sendKey, nil); r.status != 200 {
		t.Fatalf("read = %d %s", r.status, r.body)
	}
	second := b.do(t, "GET", "/v1/recipients/ada/inbox?unread=true&limit=2&cursor="+*first.NextCursor, b.sendKey, nil).inboxPage(t)
	var got []int64
	for _, it := range append(first.Items, second.Items...) {
		got = append(got, it.ID)
	}
	if want := []int64{ids[3], ids[2], ids[1], ids[0]}; !slices.Equal(got, want) || second.NextCursor != nil {
		t.Fatalf("items = %v, want %v; next %v", got, want, second.NextCursor)
	}
	if second.UnreadCount != 5 {
		t.Fatalf("unread_count = %d, want 5", second.UnreadCount)
	}
}

func TestMarkInboxItemRead(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ada := seedInbox(t, b, "ada", 2)
	bob := seedInbox(t, b, "bob", 1)
	path := fmt.Sprintf("/v1/recipients/ada/inbox/%d/read", ada[0])

	first := b.do(t, "POST", path, b.sendKey, nil)
	if first.status != 200 {
		t.Fatalf("read = %d %s", first.status, first.body)
	}
	item := first.json(t)
	if item["id"] != float64(ada[0]) || item["read_at"] == nil || item["title"] != "ada 0" {
		t.Fatalf("item = %v", item)
	}
	again := b.do(t, "POST", path, b.sendKey, nil)
	if again.status != 200 || again.json(t)["read_at"] != item["read_at"] {
		t.Fatalf("reading again = %d %s, want the first read_at %v", again.status, again.body, item["read_at"])
	}
	if p := b.do(t, "GET", "/v1/recipients/ada/inbox", b.sendKey, nil).inboxPage(t); p.UnreadCount != 1 {
		t.Fatalf("unread_count = %d, want 1", p.UnreadCount)
	}

	erased := seedInbox(t, b, "erased", 1)
	if r := b.do(t, "DELETE", "/v1/recipients/erased", b.sendKey, nil); r.status != 204 {
		t.Fatalf("delete = %d %s", r.status, r.body)
	}
	tests := []struct {
		name string
		path string
	}{
		{"another recipient's item", fmt.Sprintf("/v1/recipients/ada/inbox/%d/read", bob[0])},
		{"no such item", "/v1/recipients/ada/inbox/999999/read"},
		{"not an item id", "/v1/recipients/ada/inbox/abc/read"},
		{"zero", "/v1/recipients/ada/inbox/0/read"},
		{"unknown recipient", fmt.Sprintf("/v1/recipients/nobody/inbox/%d/read", bob[0])},
		{"erased recipient", fmt.Sprintf("/v1/recipients/erased/inbox/%d/read", erased[0])},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.do(t, "POST", tt.path, b.sendKey, nil)
			if r.status != 404 {
				t.Fatalf("status = %d, want 404: %s", r.status, r.body)
			}
			r.problemFields(t)
		})
	}
	if n := b.count(t, "SELECT count(*) FROM inbox_items WHERE recipient_id <> 'ada' AND read_at IS NOT NULL"); n != 0 {
		t.Fatalf("%d items of others were marked read", n)
	}
}

func TestMarkAllInboxRead(t *testing.T) {
	t.Parallel()
	b := setup(t)
	seedInbox(t, b, "ada", 5, 2)
	seedInbox(t, b, "bob", 2)
	path := "/v1/recipients/ada/inbox/read-all"
	for _, want := range []float64{4, 0} {
		r := b.do(t, "POST", path, b.sendKey, nil)
		if r.status != 200 {
			t.Fatalf("read-all = %d %s", r.status, r.body)
		}
		if got := r.json(t)["marked"]; got != want {
			t.Fatalf("marked = %v, want %v", got, want)
		}
	}
	if p := b.do(t, "GET", "/v1/recipients/ada/inbox?unread=true", b.sendKey, nil).inboxPage(t); p.UnreadCount != 0 || len(p.Items) != 0 {
		t.Fatalf("after read-all: %+v", p)
	}
	if p := b.do(t, "GET", "/v1/recipients/bob/inbox", b.sendKey, nil).inboxPage(t); p.UnreadCount != 2 {
		t.Fatalf("bob's unread_count = %d, want 2", p.UnreadCount)
	}
	if r := b.do(t, "POST", "/v1/recipients/nobody/inbox/read-all", b.sendKey, nil); r.status != 404 {
		t.Fatalf("unknown recipient = %d %s", r.status, r.body)
	}
}

func TestListInboxRejectsBadQuery(t *testing.T) {
	t.Parallel()
	b := setup(t)
	seedInbox(t, b, "ada", 1)
	cursor := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name   string
		path   string
		status int
		fields []string
	}{
		{"limit zero", "/v1/recipients/ada/inbox?limit=0", 422, []string{"limit"}},
		{"limit negative", "/v1/recipients/ada/inbox?limit=-1", 422, []string{"limit"}},
		{"limit too large", "/v1/recipients/ada/inbox?limit=201", 422, []string{"limit"}},
		{"limit not a number", "/v1/recipients/ada/inbox?limit=ten", 422, []string{"limit"}},
		{"cursor not base64", "/v1/recipients/ada/inbox?cursor=%25%25", 422, []string{"cursor"}},
		{"cursor not an id", "/v1/recipients/ada/inbox?cursor=" + cursor("abc"), 422, []string{"cursor"}},
		{"cursor zero", "/v1/recipients/ada/inbox?cursor=" + cursor("0"), 422, []string{"cursor"}},
		{"cursor padded", "/v1/recipients/ada/inbox?cursor=" + base64.URLEncoding.EncodeToString([]byte("12")), 422, []string{"cursor"}},
		{"unread not a boolean", "/v1/recipients/ada/inbox?unread=yes", 422, []string{"unread"}},
		{"every bad parameter at once", "/v1/recipients/ada/inbox?limit=x&cursor=y&unread=z", 422, []string{"cursor", "limit", "unread"}},
		{"unknown recipient", "/v1/recipients/nobody/inbox", 404, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := b.do(t, "GET", tt.path, b.sendKey, nil)
			if r.status != tt.status {
				t.Fatalf("status = %d, want %d: %s", r.status, tt.status, r.body)
			}
			if fields := r.problemFields(t); !slices.Equal(fields, tt.fields) {
				t.Fatalf("fields = %v, want %v", fields, tt.fields)
			}
		})
	}
	// The service checks a filter the same way for callers other than the API.
	_, err := b.svc.FindInboxItems(context.Background(), "ada", notifier.InboxFilter{Limit: 500})
	if notifier.ErrorCode(err) != notifier.EINVALID {
		t.Fatalf("FindInboxItems with limit 500: %v, want invalid", err)
	}
}

func TestDeleteOldInboxItems(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	seedInbox(t, b, "ada", 0)
	// More old items than one delete chunk, then a few new ones; ids follow time.
	if _, err := b.pool.Exec(ctx, `INSERT INTO inbox_items (recipient_id, delivery_id, category, title, created_at)
		SELECT 'ada', g, 'news', 'old', now() - interval '40 days' + g * interval '1 second'
		FROM generate_series(1, 12000) g`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `INSERT INTO inbox_items (recipient_id, delivery_id, category, title, created_at)
		SELECT 'ada', 100000 + g, 'news', 'new', now() - interval '1 day'
		FROM generate_series(1, 3) g`); err != nil {
		t.Fatal(err)
	}
	n, err := b.svc.DeleteOldInboxItems(ctx, 30*24*time.Hour)
	if err != nil || n != 12000 {
		t.Fatalf("DeleteOldInboxItems = %d, %v; want 12000", n, err)
	}
	if left := b.count(t, "SELECT count(*) FROM inbox_items WHERE title = 'new'"); left != 3 {
		t.Fatalf("%d new items left, want 3", left)
	}
	if left := b.count(t, "SELECT count(*) FROM inbox_items"); left != 3 {
		t.Fatalf("%d items left, want 3", left)
	}
	if n, err := b.svc.DeleteOldInboxItems(ctx, 30*24*time.Hour); err != nil || n != 0 {
		t.Fatalf("second run = %d, %v; want 0", n, err)
	}
	if _, err := b.svc.DeleteOldInboxItems(ctx, 0); notifier.ErrorCode(err) != notifier.EINVALID {
		t.Fatalf("olderThan 0: %v, want invalid", err)
	}
}
