package main

import (
	"context"
	"testing"
	"time"
)

func TestMaintenanceAppliesRetention(t *testing.T) {
	t.Parallel()
	e := startE2E(t, map[string]string{"NOTIFYD_INBOX_RETENTION": "1h", "NOTIFYD_EVENT_RETENTION": "1h"})
	e.seed(t, "ret", 1, "pro")
	ctx := context.Background()
	_, err := e.pool.Exec(ctx, `INSERT INTO inbox_items (recipient_id, delivery_id, category, title, created_at) VALUES
		('ret00000', 1, 'news', 'old', now() - interval '2 hours'), ('ret00000', 2, 'news', 'new', now())`)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.pool.Exec(ctx, `INSERT INTO delivery_events (provider, event_id, event, occurred_at, received_at) VALUES
		('sendgrid', 'old', 'delivered', now(), now() - interval '2 hours'), ('sendgrid', 'new', 'delivered', now(), now())`)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(45 * time.Second)
	for {
		var items, events int
		if err := e.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM inbox_items), (SELECT count(*) FROM delivery_events)`).Scan(&items, &events); err != nil {
			t.Fatal(err)
		}
		if items == 1 && events == 1 {
			var title string
			_ = e.pool.QueryRow(ctx, `SELECT title FROM inbox_items`).Scan(&title)
			if title != "new" {
				t.Fatalf("retention kept %q, want the new item", title)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 45s: %d inbox items and %d events, want the old ones deleted", items, events)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
