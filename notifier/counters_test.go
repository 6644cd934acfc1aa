package notifier_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/notifyd/notifyd/notifier"
)

// countKey is one (broadcast, channel, status); broadcast 0 is the notifications.
type countKey struct {
	broadcast       int64
	channel, status string
}

// counts reads sql's (broadcast, channel, status, count) rows, zeros left out.
func (b *endUserBundle) counts(t *testing.T, sql string) map[countKey]int64 {
	t.Helper()
	rows, err := b.pool.Query(context.Background(), sql)
	if err != nil {
		t.Fatal(err)
	}
	out := map[countKey]int64{}
	var k countKey
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&k.broadcast, &k.channel, &k.status, &n}, func() error {
		if n != 0 {
			out[k] = n
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkCounts fails unless the counters equal a GROUP BY over deliveries, before
// and after the sweep folds them, and the API's counts of each broadcast agree.
func (b *endUserBundle) checkCounts(t *testing.T, step string) {
	t.Helper()
	ctx := context.Background()
	const truth = `SELECT coalesce(broadcast_id, 0), channel, status, count(*) FROM deliveries GROUP BY 1, 2, 3`
	const counters = `SELECT broadcast_id, channel, status, sum(n) FROM delivery_counts GROUP BY 1, 2, 3`
	want := b.counts(t, truth)
	if got := b.counts(t, counters); !maps.Equal(got, want) {
		t.Fatalf("%s: counters\n%v\nwant (GROUP BY deliveries)\n%v", step, got, want)
	}
	// Folds every delta row but the claims, which are younger than this.
	if _, err := b.svc.SweepInterrupted(ctx, 1000*time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := b.counts(t, counters); !maps.Equal(got, want) {
		t.Fatalf("%s: after folding, counters\n%v\nwant\n%v", step, got, want)
	}
	perBroadcast := map[int64]map[string]notifier.ChannelCounts{}
	for k, n := range want {
		if k.broadcast == 0 {
			continue
		}
		if perBroadcast[k.broadcast] == nil {
			perBroadcast[k.broadcast] = map[string]notifier.ChannelCounts{}
		}
		c := perBroadcast[k.broadcast][k.channel]
		addCount(&c, k.status, n)
		perBroadcast[k.broadcast][k.channel] = c
	}
	for id, channels := range perBroadcast {
		bc, err := b.svc.FindBroadcastByID(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for ch, c := range channels {
			if bc.Channels[ch] != c {
				t.Fatalf("%s: broadcast %d %s counts %+v, want %+v", step, id, ch, bc.Channels[ch], c)
			}
		}
	}
}

func addCount(c *notifier.ChannelCounts, status string, n int64) {
	c.Deliveries += n
	switch status {
	case notifier.DeliveryPending:
		c.Pending += n
	case notifier.DeliverySending:
		c.Sending += n
	case notifier.DeliverySent:
		c.Sent += n
	case notifier.DeliveryFailed:
		c.Failed += n
	case notifier.DeliverySuppressed:
		c.Suppressed += n
	case notifier.DeliveryCancelled:
		c.Cancelled += n
	case notifier.DeliveryUnknown:
		c.Unknown += n
	}
}

// expandedBroadcast creates a broadcast to recipients and expands it.
func (b *endUserBundle) expandedBroadcast(t *testing.T, dedupeKey string, channels []string, recipients ...string) int64 {
	t.Helper()
	ctx := context.Background()
	bc, err := b.svc.CreateBroadcast(ctx, b.key, notifier.BroadcastInput{
		Name: "b", Category: "news", Recipients: recipients, Channels: channels, DedupeKey: dedupeKey,
		Email: &notifier.EmailContent{Subject: "Hello", Text: "Hi {{.Recipient.ID}}"},
		Push:  &notifier.PushContent{Title: "Hello", Body: "Hi"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := b.svc.ExpandBroadcast(ctx, bc.ID, time.Minute); err != nil || !res.Done {
		t.Fatalf("expand = %+v, %v", res, err)
	}
	return bc.ID
}

// outcome is what the fake provider answers for the i-th claimed message.
type outcome func(i int) (result *notifier.SendResult, record bool)

// sendAll answers every message sent, and records it.
func sendAll(int) (*notifier.SendResult, bool) { return &notifier.SendResult{ProviderID: "ok"}, true }

// mixed answers sent, permanent failure, transient failure (back to pending),
// and no answer at all (the worker died between claim and record), in turn.
func mixed(i int) (*notifier.SendResult, bool) {
	switch i % 4 {
	case 0:
		return &notifier.SendResult{ProviderID: "ok"}, true
	case 1:
		return &notifier.SendResult{Err: &notifier.SendError{Class: notifier.Permanent, Reason: "bad", Err: errors.New("bad")}}, true
	case 2:
		return &notifier.SendResult{Err: &notifier.SendError{Class: notifier.Transient, Reason: "flaky", Err: errors.New("flaky")}}, true
	}
	return nil, false
}

// deliver claims each batch and records what answer says; it returns how many
// messages went unrecorded.
func (b *endUserBundle) deliver(t *testing.T, batches []notifier.DeliveryBatch, answer outcome) int {
	t.Helper()
	ctx := context.Background()
	unrecorded, i := 0, 0
	for _, batch := range batches {
		c, err := b.svc.ClaimBatch(ctx, b.pool, batch)
		if err != nil {
			t.Fatal(err)
		}
		var results []notifier.SendResult
		for _, m := range c.Messages {
			r, record := answer(i)
			i++
			if !record {
				unrecorded++
				continue
			}
			r.DeliveryID = m.DeliveryID
			results = append(results, *r)
		}
		if _, err := b.svc.RecordResults(ctx, b.pool, results, notifier.RecordOpts{}); err != nil {
			t.Fatal(err)
		}
		if err := b.svc.FinishBatch(ctx, b.pool, batch); err != nil {
			t.Fatal(err)
		}
	}
	return unrecorded
}

func (b *endUserBundle) broadcastStatus(t *testing.T, id int64) string {
	t.Helper()
	status, err := b.svc.FindBroadcastStatus(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return status
}

// Every writer of deliveries keeps the counters right: expansion (with
// suppression and dedupe), claim (with suppression at claim), record, the
// sweep, pause, resume, cancel and notifications.
func TestDeliveryCountsAgreeWithDeliveries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupEndUsers(t)
	var all []string
	for i := 1; i <= 12; i++ {
		id := fmt.Sprintf("r%02d", i)
		all = append(all, id)
		if _, _, err := b.svc.PutRecipient(ctx, id, notifier.RecipientInput{Email: id + "@example.test"}); err != nil {
			t.Fatal(err)
		}
		if i <= 8 {
			if _, _, err := b.svc.PutDevice(ctx, id, "token-"+id, notifier.DeviceInput{Platform: "android"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	b.checkCounts(t, "empty")

	a := b.expandedBroadcast(t, "welcome", []string{"email", "push"}, all[:10]...)
	b.checkCounts(t, "expanded A (r09, r10 without a device)")
	other := b.expandedBroadcast(t, "welcome", []string{"email"}, all[4:]...)
	b.checkCounts(t, "expanded B (r05-r10 duplicates of A)")

	// r02 opts out after the expansion: suppressed at claim.
	if _, err := b.svc.PutPreferences(ctx, "r02", notifier.Preferences{Categories: map[string]map[string]bool{"news": {"email": false}}}, "test"); err != nil {
		t.Fatal(err)
	}
	unrecorded := b.deliver(t, b.enq.of(a), mixed)
	if unrecorded == 0 {
		t.Fatal("the mix left no claim unrecorded")
	}
	b.checkCounts(t, "A claimed and partly recorded")

	swept, err := b.svc.SweepInterrupted(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if swept != int64(unrecorded) {
		t.Fatalf("swept %d, want the %d unrecorded claims", swept, unrecorded)
	}
	b.checkCounts(t, "swept")

	if _, err := b.svc.PauseBroadcast(ctx, "test", a); err != nil {
		t.Fatal(err)
	}
	b.checkCounts(t, "paused A")
	before := len(b.enq.of(a))
	if _, err := b.svc.ResumeBroadcast(ctx, "test", a); err != nil {
		t.Fatal(err)
	}
	if len(b.enq.of(a)) == before {
		t.Fatal("resume enqueued no batch for the pending (retried) deliveries")
	}
	b.deliver(t, b.enq.of(a)[before:], sendAll)
	b.checkCounts(t, "A resumed and sent")
	if st := b.broadcastStatus(t, a); st != notifier.StatusCompleted {
		t.Fatalf("broadcast A is %s, want completed", st)
	}

	res, err := b.svc.CancelBroadcast(ctx, "test", other)
	if err != nil {
		t.Fatal(err)
	}
	if res.Counts.Cancelled != 2 || res.Counts.Suppressed != 6 || res.Counts.Pending != 0 {
		t.Fatalf("cancel counts %+v, want 2 cancelled (r11, r12), 6 suppressed duplicates", res.Counts)
	}
	b.checkCounts(t, "cancelled B")

	for _, r := range []string{"r01", "r11"} {
		tx, err := b.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = b.svc.CreateNotificationTx(ctx, tx, b.key, notifier.NotificationInput{Recipient: r, Category: "news",
			Channels: []string{"email", "push"}, Email: &notifier.EmailContent{Subject: "Hi", Text: "Hi"},
			Push: &notifier.PushContent{Title: "Hi", Body: "Hi"}, DedupeKey: "welcome"})
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	b.checkCounts(t, "notifications created (r01 duplicates, r11 without a device)")
	b.deliver(t, b.enq.of(0), mixed)
	b.checkCounts(t, "notifications claimed")
	if _, err := b.svc.SweepInterrupted(ctx, 0); err != nil {
		t.Fatal(err)
	}
	b.checkCounts(t, "notifications swept")
}

// The sweep marks claims older than its cut-off unknown, and only those: a
// delivery claimed, put back to pending and claimed again recently stays in
// flight, and its record still counts.
func TestSweepOnlyTakesOldClaims(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupEndUsers(t)
	var all []string
	for i := 1; i <= 6; i++ {
		id := fmt.Sprintf("s%02d", i)
		all = append(all, id)
		if _, _, err := b.svc.PutRecipient(ctx, id, notifier.RecipientInput{Email: id + "@example.test"}); err != nil {
			t.Fatal(err)
		}
	}
	id := b.expandedBroadcast(t, "", []string{"email"}, all...)
	batches := b.enq.of(id)

	// Every other claim is retried, the rest never recorded; then both look
	// two hours old.
	unrecorded := b.deliver(t, batches, func(i int) (*notifier.SendResult, bool) {
		if i%2 == 0 {
			return &notifier.SendResult{Err: &notifier.SendError{Class: notifier.Transient, Reason: "flaky", Err: errors.New("flaky")}}, true
		}
		return nil, false
	})
	for _, sql := range []string{
		`UPDATE deliveries SET claimed_at = claimed_at - interval '2 hours'`,
		`UPDATE delivery_counts SET at = at - interval '2 hours'`,
	} {
		if _, err := b.pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	// The retried ones are claimed again now and stay in flight.
	b.deliver(t, batches, func(int) (*notifier.SendResult, bool) { return nil, false })
	b.checkCounts(t, "claimed twice")

	swept, err := b.svc.SweepInterrupted(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if swept != int64(unrecorded) {
		t.Fatalf("swept %d, want the %d old claims", swept, unrecorded)
	}
	if n := b.count(t, `SELECT count(*) FROM deliveries WHERE status = 'sending'`); n != len(all)-unrecorded {
		t.Fatalf("%d deliveries in flight after the sweep, want %d", n, len(all)-unrecorded)
	}
	b.checkCounts(t, "old claims swept")
	if st := b.broadcastStatus(t, id); st != notifier.StatusSending {
		t.Fatalf("broadcast is %s with deliveries in flight, want sending", st)
	}

	// The recent claims are recorded; the broadcast completes.
	rows, err := b.pool.Query(ctx, `SELECT id FROM deliveries WHERE status = 'sending'`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	var results []notifier.SendResult
	for _, d := range ids {
		results = append(results, notifier.SendResult{DeliveryID: d, ProviderID: "ok"})
	}
	if _, err := b.svc.RecordResults(ctx, b.pool, results, notifier.RecordOpts{}); err != nil {
		t.Fatal(err)
	}
	if err := b.svc.FinishBatch(ctx, b.pool, batches[0]); err != nil {
		t.Fatal(err)
	}
	b.checkCounts(t, "recorded")
	if st := b.broadcastStatus(t, id); st != notifier.StatusCompleted {
		t.Fatalf("broadcast is %s, want completed", st)
	}
	// A broadcast left sending with nothing open (as its last record crossing
	// the end of its expansion could once leave it) is completed by the next
	// sweep.
	if _, err := b.pool.Exec(ctx, `UPDATE broadcasts SET status = 'sending', completed_at = NULL WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if swept, err := b.svc.SweepInterrupted(ctx, 0); err != nil || swept != 0 {
		t.Fatalf("a second sweep took %d (%v), want none", swept, err)
	}
	if st := b.broadcastStatus(t, id); st != notifier.StatusCompleted {
		t.Fatalf("broadcast is %s after the sweep, want completed", st)
	}
	if n := b.count(t, `SELECT count(*) FROM delivery_counts WHERE status = 'sending' AND n > 0 AND first_id IS NOT NULL`); n != 0 {
		t.Fatalf("%d claims left for the sweep after it took them all", n)
	}
}

// Claims, records, an expansion and the sweep's folding at the same time leave
// the counters exact: the delta rows are only inserted, and folding replaces
// the rows it deleted in the same statement.
func TestDeliveryCountsUnderConcurrentWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupEndUsers(t)
	var all []string
	for i := 1; i <= 300; i++ {
		all = append(all, fmt.Sprintf("c%03d", i))
	}
	var inputs []notifier.RecipientInput
	for _, id := range all {
		inputs = append(inputs, notifier.RecipientInput{ID: id, Email: id + "@example.test"})
	}
	if _, err := b.svc.PutRecipients(ctx, inputs); err != nil {
		t.Fatal(err)
	}
	first := b.expandedBroadcast(t, "", []string{"email"}, all...)
	var parts []notifier.DeliveryBatch
	for _, batch := range b.enq.of(first) {
		for lo := batch.FirstID; lo <= batch.LastID; lo += 10 {
			p := batch
			p.FirstID, p.LastID = lo, min(lo+9, batch.LastID)
			parts = append(parts, p)
		}
	}
	second, err := b.svc.CreateBroadcast(ctx, b.key, notifier.BroadcastInput{
		Name: "b", Category: "news", Recipients: all, Channels: []string{"email"},
		Email: &notifier.EmailContent{Subject: "Hello", Text: "Hi"},
	})
	if err != nil {
		t.Fatal(err)
	}

	done := make(chan struct{})
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	work := func(fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(); err != nil {
				errs <- err
			}
		}()
	}
	next := make(chan notifier.DeliveryBatch, len(parts))
	for _, p := range parts {
		next <- p
	}
	close(next)
	var senders sync.WaitGroup
	for range 4 {
		senders.Add(1)
		work(func() error {
			defer senders.Done()
			for p := range next {
				c, err := b.svc.ClaimBatch(ctx, b.pool, p)
				if err != nil {
					return err
				}
				var results []notifier.SendResult
				for i, m := range c.Messages {
					r, _ := mixed(i % 3) // sent, failed, back to pending
					r.DeliveryID = m.DeliveryID
					results = append(results, *r)
				}
				if _, err := b.svc.RecordResults(ctx, b.pool, results, notifier.RecordOpts{}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	work(func() error {
		_, err := b.svc.ExpandBroadcast(ctx, second.ID, time.Minute)
		return err
	})
	work(func() error {
		for {
			select {
			case <-done:
				return nil
			default:
			}
			if _, err := b.svc.SweepInterrupted(ctx, 1000*time.Hour); err != nil {
				return err
			}
		}
	})
	senders.Wait()
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	b.checkCounts(t, "after concurrent claims, records, expansion and folds")
}
