package notifier_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/notifyd/notifyd/notifier"
)

// Two claims of a capped category for the same person must not both pass the
// cap: the second waits for the first to commit and then counts it.
func TestFrequencyCapHoldsForConcurrentClaims(t *testing.T) {
	t.Parallel()
	b := setupEndUsers(t, func(o *notifier.ServiceOpts) {
		o.FrequencyCaps = map[string]notifier.FrequencyCap{"marketing": {Max: 1, Window: 24 * time.Hour}}
	})
	ctx := context.Background()
	b.putRecipient(t, "ann", "ann@example.com")
	now := time.Now()
	first := b.enq.of(b.broadcast(t, "marketing", now, "ann"))
	second := b.enq.of(b.broadcast(t, "marketing", now, "ann"))
	if len(first) != 1 || len(second) != 1 {
		t.Fatalf("batches: %d and %d, want one each", len(first), len(second))
	}

	// The first claim commits only when the test says so.
	txA, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = txA.Rollback(ctx) }()
	claimA, err := b.svc.ClaimBatch(ctx, txA, first[0])
	if err != nil || len(claimA.Messages) != 1 {
		t.Fatalf("first claim = %+v, %v; want one message", claimA, err)
	}

	done := b.claimInBackground(second[0])
	// Let the second claim get as far as it can while the first is open: it
	// either finishes (the race this test is about) or waits on the lock.
	var finished *claimResult
	for deadline := time.Now().Add(10 * time.Second); finished == nil; {
		select {
		case r := <-done:
			finished = &r
			continue
		case <-time.After(20 * time.Millisecond):
		}
		if b.count(t, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'`) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second claim neither finished nor waited within 10s")
		}
	}
	if err := txA.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if finished == nil {
		r := <-done
		finished = &r
	}
	if finished.err != nil {
		t.Fatal(finished.err)
	}
	if n := len(finished.claim.Messages); n != 0 {
		t.Fatalf("the second claim sends %d messages while the first was claimed, want 0 (cap 1)", n)
	}
	if n := b.count(t, `SELECT count(*) FROM deliveries WHERE status = 'suppressed' AND reason = 'frequency_cap'`); n != 1 {
		t.Fatalf("%d deliveries suppressed by the cap, want 1", n)
	}
}

// claimResult is what a claim run in the background came to.
type claimResult struct {
	claim *notifier.Claim
	err   error
}

// claimInBackground claims batch on another goroutine, so that the test can
// hold a transaction open while the claim waits for it.
func (b *endUserBundle) claimInBackground(batch notifier.DeliveryBatch) <-chan claimResult {
	done := make(chan claimResult, 1)
	go func() {
		c, err := b.svc.ClaimBatch(context.Background(), b.pool, batch)
		done <- claimResult{c, err}
	}()
	return done
}

// A claim that meets a delivery another transaction is changing (a cancel not
// yet committed) waits for it and then leaves it alone: the claim is one UPDATE
// whose WHERE status = 'pending' is checked again against the committed row.
func TestClaimSkipsADeliveryCancelledWhileItWaits(t *testing.T) {
	t.Parallel()
	b := setupEndUsers(t)
	ctx := context.Background()
	b.putRecipient(t, "ann", "ann@example.com")
	b.putRecipient(t, "bob", "bob@example.com")
	id := b.broadcast(t, "news", time.Now(), "ann", "bob")
	batches := b.enq.of(id)
	if len(batches) != 1 {
		t.Fatalf("batches: %d, want 1", len(batches))
	}

	cancelTx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cancelTx.Rollback(ctx) }()
	if _, err := cancelTx.Exec(ctx, `UPDATE deliveries SET status = 'cancelled', reason = 'cancelled', finished_at = now()
		WHERE broadcast_id = $1 AND recipient_id = 'bob'`, id); err != nil {
		t.Fatal(err)
	}

	done := b.claimInBackground(batches[0])
	// The claim must wait on bob's row: it cannot know yet whether it is pending.
	for deadline := time.Now().Add(10 * time.Second); b.count(t, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'transactionid'`) == 0; {
		select {
		case r := <-done:
			t.Fatalf("the claim finished while bob's cancel was open: %+v, %v", r.claim, r.err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the claim did not wait for the open cancel within 10s")
		}
	}
	if err := cancelTx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	var got []string
	for _, m := range r.claim.Messages {
		got = append(got, m.RecipientID)
	}
	if !slices.Equal(got, []string{"ann"}) {
		t.Fatalf("claimed %v, want [ann]", got)
	}
	for recipient, want := range map[string]string{"ann": "sending", "bob": "cancelled"} {
		if status, _ := b.delivery(t, id, recipient); status != want {
			t.Errorf("%s's delivery is %s, want %s", recipient, status, want)
		}
	}
	if n := b.count(t, `SELECT attempts FROM deliveries WHERE broadcast_id = $1 AND recipient_id = 'bob'`, id); n != 0 {
		t.Errorf("bob's delivery counts %d attempts, want 0", n)
	}
}

// The listing reads each channel's unique index and merges them (migration 011):
// paging through it with any filter must give every matching delivery once, in
// (recipient, channel) order.
func TestDeliveryListingPagesThroughTheSnapshotOnce(t *testing.T) {
	t.Parallel()
	b := setupEndUsers(t)
	var recipients, all, emails, pushes []string
	for i := range 7 {
		id := fmt.Sprintf("p%02d", i)
		b.putRecipient(t, id, id+"@example.com")
		recipients = append(recipients, id)
		all = append(all, id+"/email", id+"/push")
		emails, pushes = append(emails, id+"/email"), append(pushes, id+"/push")
	}
	// Nobody has a device: push deliveries are suppressed (no_device), email pending.
	id := b.expandedBroadcast(t, "", []string{"email", "push"}, recipients...)
	tests := []struct {
		name            string
		status, channel string
		want            []string
	}{
		{"everything", "", "", all},
		{"one channel", "", "push", pushes},
		{"one status", "pending", "", emails},
		{"status and channel", "suppressed", "push", pushes},
		{"nothing matches", "sent", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, limit := range []int{1, 3, 100} {
				var got []string
				cursor := ""
				for pages := 0; ; pages++ {
					if pages > len(all)+1 {
						t.Fatalf("limit %d: the cursor never ends", limit)
					}
					page, err := b.svc.FindDeliveries(context.Background(), id, notifier.DeliveryFilter{
						Status: tt.status, Channel: tt.channel, Limit: limit, Cursor: cursor})
					if err != nil {
						t.Fatal(err)
					}
					if len(page.Deliveries) > limit {
						t.Fatalf("limit %d: a page of %d", limit, len(page.Deliveries))
					}
					for _, d := range page.Deliveries {
						got = append(got, d.RecipientID+"/"+d.Channel)
					}
					if page.NextCursor == "" {
						break
					}
					cursor = page.NextCursor
				}
				if !slices.Equal(got, tt.want) {
					t.Fatalf("limit %d: listed %v, want %v", limit, got, tt.want)
				}
			}
		})
	}
}
