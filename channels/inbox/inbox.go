// Package inbox delivers messages to the in-app inbox: one row in inbox_items per
// delivery, in notifyd's own Postgres. The API reads them back through
// notifier.Service (FindInboxItems, MarkInboxItemRead, MarkAllInboxRead).
package inbox

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/notifier"
)

// maxBatch is how many messages one Send writes, in a single INSERT.
const maxBatch = 1000

// ProviderIDPrefix starts the ProviderID of every inbox delivery: "inbox:<item id>".
const ProviderIDPrefix = "inbox:"

// Sender writes inbox items. It is safe for concurrent use.
type Sender struct {
	pool *pgxpool.Pool
}

var _ notifier.Channel = (*Sender)(nil)

// New returns a Sender writing to pool's inbox_items table.
func New(pool *pgxpool.Pool) *Sender {
	return &Sender{pool: pool}
}

// Name is notifier.ChannelInbox.
func (*Sender) Name() string { return notifier.ChannelInbox }

// MaxBatch is the most messages one Send should be given.
func (*Sender) MaxBatch() int { return maxBatch }

// insertItems writes every row given as parallel arrays, skipping deliveries that
// already have an item, and answers (delivery_id, item id) for all of them: the
// rows it inserted and those that were there before. The final SELECT runs on the
// statement's snapshot, so it sees the earlier rows but not the ones inserted by
// the CTE; the two halves do not overlap.
const insertItems = `
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])
        AS t (delivery_id, recipient_id, broadcast_id, category, title, body, url)
), inserted AS (
    INSERT INTO inbox_items (delivery_id, recipient_id, broadcast_id, category, title, body, url)
    SELECT delivery_id, recipient_id, broadcast_id, category, title, body, url FROM input
    ON CONFLICT (delivery_id) DO NOTHING
    RETURNING delivery_id, id
)
SELECT delivery_id, id FROM inserted
UNION ALL
SELECT i.delivery_id, i.id FROM inbox_items i WHERE i.delivery_id = ANY ($1::bigint[])`

// findItems looks up the items of deliveries; see Send for when it is needed.
const findItems = `SELECT delivery_id, id FROM inbox_items WHERE delivery_id = ANY ($1::bigint[])`

// Send writes one inbox item per message, all in one statement. Writing is
// idempotent per delivery: a delivery that already has an item keeps it, and its
// result carries the same ProviderID, "inbox:<item id>". A database error fails
// the whole batch as Transient with MaybeSent false: the statement rolled back,
// and a retry cannot write twice anyway.
func (s *Sender) Send(ctx context.Context, msgs []notifier.Message) []notifier.SendResult {
	results := make([]notifier.SendResult, len(msgs))
	var (
		deliveryIDs  []int64
		recipientIDs []string
		broadcastIDs []*int64
		categories   []string
		titles       []string
		bodies       []string
		urls         []string
		pending      []int // indexes into msgs of the rows sent to the database
	)
	for i, m := range msgs {
		results[i].DeliveryID = m.DeliveryID
		if err := check(m); err != nil {
			results[i].Err = err
			continue
		}
		var broadcastID *int64
		if m.BroadcastID != 0 {
			broadcastID = &m.BroadcastID
		}
		deliveryIDs = append(deliveryIDs, m.DeliveryID)
		recipientIDs = append(recipientIDs, m.RecipientID)
		broadcastIDs = append(broadcastIDs, broadcastID)
		categories = append(categories, m.Category)
		titles = append(titles, m.Inbox.Title)
		bodies = append(bodies, m.Inbox.Body)
		urls = append(urls, m.Inbox.URL)
		pending = append(pending, i)
	}
	if len(pending) == 0 {
		return results
	}

	itemIDs, err := s.collect(ctx, insertItems, deliveryIDs, recipientIDs, broadcastIDs, categories, titles, bodies, urls)
	if err == nil && len(itemIDs) < len(uniq(deliveryIDs)) {
		// Another Send of the same delivery committed its row while this statement
		// waited on the conflict: the row is in neither half of the answer, since
		// it is newer than the snapshot. It is committed now, so look again.
		itemIDs, err = s.collect(ctx, findItems, deliveryIDs)
	}
	for _, i := range pending {
		id, ok := itemIDs[msgs[i].DeliveryID]
		switch {
		case err != nil:
			results[i].Err = &notifier.SendError{Class: notifier.Transient, Reason: "database", Err: err}
		case !ok:
			// Not expected; a retry writes the item or finds it.
			results[i].Err = &notifier.SendError{Class: notifier.Transient, Reason: "database",
				Err: fmt.Errorf("inbox: no item for delivery %d after insert", msgs[i].DeliveryID)}
		default:
			results[i].ProviderID = ProviderIDPrefix + strconv.FormatInt(id, 10)
		}
	}
	return results
}

// collect runs a query answering (delivery_id, item id) rows into a map.
func (s *Sender) collect(ctx context.Context, sql string, args ...any) (map[int64]int64, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("inbox: %w", err)
	}
	defer rows.Close()
	ids := make(map[int64]int64)
	for rows.Next() {
		var deliveryID, itemID int64
		if err := rows.Scan(&deliveryID, &itemID); err != nil {
			return nil, fmt.Errorf("inbox: %w", err)
		}
		ids[deliveryID] = itemID
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("inbox: %w", err)
	}
	return ids, nil
}

// check refuses, permanently, a message that could never be written. Text
// Postgres cannot store (NUL bytes, invalid UTF-8) would fail the whole batch's
// statement, and every retry of it, so it is caught here for that message alone.
func check(m notifier.Message) error {
	if m.Inbox == nil {
		return &notifier.SendError{Class: notifier.Permanent, Reason: "no_content",
			Err: fmt.Errorf("inbox: delivery %d has no inbox content", m.DeliveryID)}
	}
	for _, f := range []struct{ name, value string }{
		{"recipient_id", m.RecipientID},
		{"category", m.Category},
		{"title", m.Inbox.Title},
		{"body", m.Inbox.Body},
		{"url", m.Inbox.URL},
	} {
		if !utf8.ValidString(f.value) || strings.ContainsRune(f.value, 0) {
			return &notifier.SendError{Class: notifier.Permanent, Reason: "invalid_content",
				Err: fmt.Errorf("inbox: delivery %d: %s is not valid UTF-8 text without NUL bytes", m.DeliveryID, f.name)}
		}
	}
	return nil
}

func uniq(ids []int64) map[int64]struct{} {
	set := make(map[int64]struct{}, len(ids))
	for _, id := range ids {
		set[id] = struct{}{}
	}
	return set
}
