package inbox_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/channels/inbox"
	"github.com/notifyd/notifyd/migrations/pgtest"
	"github.com/notifyd/notifyd/notifier"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func setup(t *testing.T) (*inbox.Sender, *pgxpool.Pool) {
	t.Helper()
	pool := pgtest.NewPool(t)
	return inbox.New(pool), pool
}

func message(deliveryID, broadcastID int64, recipient, title string) notifier.Message {
	return notifier.Message{
		DeliveryID:  deliveryID,
		BroadcastID: broadcastID,
		RecipientID: recipient,
		Category:    "news",
		Inbox:       &notifier.InboxMessage{Title: title, Body: "body of " + title, URL: "https://example.com/" + title},
	}
}

type row struct {
	id          int64
	recipient   string
	broadcastID *int64
	category    string
	title       string
	body        string
	url         string
}

func items(t *testing.T, pool *pgxpool.Pool) map[int64]row {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT delivery_id, id, recipient_id, broadcast_id, category, title, body, url FROM inbox_items`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[int64]row{}
	for rows.Next() {
		var d int64
		var r row
		if err := rows.Scan(&d, &r.id, &r.recipient, &r.broadcastID, &r.category, &r.title, &r.body, &r.url); err != nil {
			t.Fatal(err)
		}
		got[d] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

func providerItemID(t *testing.T, res notifier.SendResult) int64 {
	t.Helper()
	if res.Err != nil {
		t.Fatalf("delivery %d: %v", res.DeliveryID, res.Err)
	}
	id, err := strconv.ParseInt(strings.TrimPrefix(res.ProviderID, "inbox:"), 10, 64)
	if !strings.HasPrefix(res.ProviderID, "inbox:") || err != nil {
		t.Fatalf("delivery %d: ProviderID = %q, want inbox:<item id>", res.DeliveryID, res.ProviderID)
	}
	return id
}

func TestInboxNameAndBatch(t *testing.T) {
	t.Parallel()
	s := inbox.New(nil)
	if s.Name() != notifier.ChannelInbox || s.MaxBatch() != 1000 {
		t.Fatalf("Name, MaxBatch = %q, %d", s.Name(), s.MaxBatch())
	}
}

func TestInboxSendWritesOneItemPerMessage(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	msgs := []notifier.Message{
		message(10, 7, "ada", "a"),
		message(11, 0, "bob", "b"), // a notification: no broadcast
		message(12, 7, "cy", "c"),
	}
	res := s.Send(context.Background(), msgs)
	if len(res) != len(msgs) {
		t.Fatalf("%d results for %d messages", len(res), len(msgs))
	}
	got := items(t, pool)
	if len(got) != 3 {
		t.Fatalf("%d items, want 3", len(got))
	}
	for i, m := range msgs {
		if res[i].DeliveryID != m.DeliveryID {
			t.Fatalf("result %d is for delivery %d, want %d", i, res[i].DeliveryID, m.DeliveryID)
		}
		r := got[m.DeliveryID]
		if id := providerItemID(t, res[i]); id != r.id {
			t.Errorf("delivery %d: ProviderID %q, item id %d", m.DeliveryID, res[i].ProviderID, r.id)
		}
		if r.recipient != m.RecipientID || r.category != "news" || r.title != m.Inbox.Title ||
			r.body != m.Inbox.Body || r.url != m.Inbox.URL {
			t.Errorf("delivery %d: item %+v", m.DeliveryID, r)
		}
		switch {
		case m.BroadcastID == 0 && r.broadcastID != nil:
			t.Errorf("delivery %d: broadcast_id = %d, want NULL", m.DeliveryID, *r.broadcastID)
		case m.BroadcastID != 0 && (r.broadcastID == nil || *r.broadcastID != m.BroadcastID):
			t.Errorf("delivery %d: broadcast_id = %v, want %d", m.DeliveryID, r.broadcastID, m.BroadcastID)
		}
	}
}

func TestInboxSendIsIdempotentPerDelivery(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	ctx := context.Background()
	first := s.Send(ctx, []notifier.Message{message(1, 7, "ada", "a"), message(2, 7, "bob", "b")})

	// A retry of delivery 2 with changed content, in a batch with a new delivery,
	// and delivery 3 twice in the same batch.
	again := message(2, 7, "bob", "changed")
	second := s.Send(ctx, []notifier.Message{message(3, 7, "cy", "c"), again, message(3, 7, "cy", "c")})

	if first[1].ProviderID != second[1].ProviderID {
		t.Fatalf("re-send of delivery 2: ProviderID %q, first %q", second[1].ProviderID, first[1].ProviderID)
	}
	if second[0].ProviderID != second[2].ProviderID {
		t.Fatalf("delivery 3 twice in a batch: ProviderIDs %q and %q", second[0].ProviderID, second[2].ProviderID)
	}
	providerItemID(t, second[0])
	got := items(t, pool)
	if len(got) != 3 {
		t.Fatalf("%d items, want 3", len(got))
	}
	if got[2].title != "b" {
		t.Fatalf("re-send rewrote the item: title %q", got[2].title)
	}
}

// Concurrent sends of one delivery race on the unique delivery_id: the losers
// wait on the winner's row and must still answer its ProviderID.
func TestInboxConcurrentSendsOfOneDelivery(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	const rounds, senders = 20, 8
	for round := range int64(rounds) {
		results := make([]notifier.SendResult, senders)
		var wg sync.WaitGroup
		for i := range senders {
			wg.Go(func() {
				results[i] = s.Send(context.Background(), []notifier.Message{message(round+1, 7, "ada", "a")})[0]
			})
		}
		wg.Wait()
		for _, r := range results {
			providerItemID(t, r)
			if r.ProviderID != results[0].ProviderID {
				t.Fatalf("round %d: ProviderIDs differ: %q and %q", round, r.ProviderID, results[0].ProviderID)
			}
		}
	}
	if got := items(t, pool); len(got) != rounds {
		t.Fatalf("%d items, want %d", len(got), rounds)
	}
}

func TestInboxSendRefusesBadMessagesAlone(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	noContent := message(2, 7, "bob", "b")
	noContent.Inbox = nil
	nul := message(3, 7, "cy", "c\x00")
	badUTF8 := message(4, 7, "di", "d")
	badUTF8.Inbox.Body = "\xff"
	res := s.Send(context.Background(), []notifier.Message{message(1, 7, "ada", "a"), noContent, nul, badUTF8})

	providerItemID(t, res[0])
	for i, reason := range map[int]string{1: "no_content", 2: "invalid_content", 3: "invalid_content"} {
		var se *notifier.SendError
		if !errors.As(res[i].Err, &se) || se.Class != notifier.Permanent || se.Reason != reason || se.MaybeSent {
			t.Errorf("delivery %d: err %v, want permanent %s", res[i].DeliveryID, res[i].Err, reason)
		}
		if res[i].ProviderID != "" {
			t.Errorf("delivery %d: ProviderID %q on an error", res[i].DeliveryID, res[i].ProviderID)
		}
	}
	if got := items(t, pool); len(got) != 1 {
		t.Fatalf("%d items, want 1", len(got))
	}
}

func TestInboxSendDatabaseErrorFailsTheBatch(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	noContent := message(3, 7, "cy", "c")
	noContent.Inbox = nil
	res := s.Send(ctx, []notifier.Message{message(1, 7, "ada", "a"), message(2, 7, "bob", "b"), noContent})
	for _, r := range res[:2] {
		var se *notifier.SendError
		if !errors.As(r.Err, &se) || se.Class != notifier.Transient || se.Reason != "database" || se.MaybeSent {
			t.Errorf("delivery %d: err %v, want transient database, not maybe sent", r.DeliveryID, r.Err)
		}
	}
	if se := notifier.AsSendError(res[2].Err); se.Reason != "no_content" {
		t.Errorf("delivery 3: err %v, want no_content", res[2].Err)
	}
	if got := items(t, pool); len(got) != 0 {
		t.Fatalf("%d items after a failed batch", len(got))
	}
}

func TestInboxSendEmptyBatch(t *testing.T) {
	t.Parallel()
	s, _ := setup(t)
	if res := s.Send(context.Background(), nil); len(res) != 0 {
		t.Fatalf("results = %v", res)
	}
}
