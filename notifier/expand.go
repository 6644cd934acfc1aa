package notifier

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// ExpandChunkSize is how many recipients one expansion transaction takes.
const ExpandChunkSize = 5000

// BatchSize is how many deliveries of a channel one delivery job carries: the
// provider's batch shape (SendGrid 1,000 personalizations, FCM SendEach 500).
func BatchSize(channel string) int {
	if channel == ChannelPush {
		return 500
	}
	return 1000
}

// ExpandResult says where an expansion stands.
type ExpandResult struct {
	Done       bool // nothing left to expand (or the broadcast was stopped)
	Recipients int  // recipients expanded in this call
}

// ExpandBroadcast writes the broadcast's audience, as of its cut-off, as delivery
// rows plus delivery jobs, one chunk per transaction, until done or the budget is
// spent. Each chunk locks the broadcast row and advances its cursor in the same
// transaction, so a crash or a second expander resumes without duplicates.
func (s *Service) ExpandBroadcast(ctx context.Context, id int64, budget time.Duration) (ExpandResult, error) {
	deadline := time.Now().Add(budget)
	var res ExpandResult
	for {
		n, done, err := s.expandChunk(ctx, id)
		res.Recipients += n
		if err != nil || done {
			res.Done = done
			return res, err
		}
		if time.Now().After(deadline) {
			return res, nil
		}
	}
}

// expansionState is what a chunk needs to know about its broadcast.
type expansionState struct {
	status       string
	cursor       *string
	filter       []byte
	recipientIDs []string
	channels     []string
	category     string
	cutoff       time.Time
	dedupeKey    *string
}

func (s *Service) expandChunk(ctx context.Context, id int64) (expanded int, done bool, err error) {
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var st expansionState
		var isExpanded bool
		err := tx.QueryRow(ctx, `SELECT status, expand_cursor, filter, recipient_ids, channels, category, cutoff_at, dedupe_key, expanded
			FROM broadcasts WHERE id = $1 FOR UPDATE`, id).
			Scan(&st.status, &st.cursor, &st.filter, &st.recipientIDs, &st.channels, &st.category, &st.cutoff, &st.dedupeKey, &isExpanded)
		if errors.Is(err, pgx.ErrNoRows) {
			done = true
			return nil
		}
		if err != nil {
			return err
		}
		// Cancelled, paused or finished: stop. Resume re-enqueues the expansion.
		if isExpanded || (st.status != StatusScheduled && st.status != StatusExpanding && st.status != StatusSending) {
			done = true
			return nil
		}
		ids, emails, err := s.audienceChunk(ctx, tx, &st)
		if err != nil {
			return err
		}
		expanded = len(ids)
		done = len(ids) < ExpandChunkSize
		if len(ids) > 0 {
			if err := s.writeDeliveries(ctx, tx, id, &st, ids, emails); err != nil {
				return err
			}
		}
		var cursor *string
		if len(ids) > 0 {
			cursor = &ids[len(ids)-1]
		} else {
			cursor = st.cursor
		}
		_, err = tx.Exec(ctx, `UPDATE broadcasts SET expand_cursor = $2, audience_size = audience_size + $3, updated_at = now(),
				status = CASE WHEN $4 THEN 'sending' ELSE 'expanding' END,
				expanded = $4, expanded_at = CASE WHEN $4 THEN now() END
			WHERE id = $1`, id, cursor, len(ids), done)
		if err != nil {
			return err
		}
		if done {
			return completeIfDone(ctx, tx, id)
		}
		return nil
	})
	return expanded, done, err
}

// audienceChunk reads the next recipients after the cursor, as of the cut-off.
func (s *Service) audienceChunk(ctx context.Context, tx pgx.Tx, st *expansionState) (ids []string, emails []*string, err error) {
	args := &sqlArgs{}
	var filter *Filter
	if st.filter != nil {
		var problems map[string]string
		if filter, problems = ParseFilter(st.filter, "filter"); len(problems) > 0 {
			return nil, nil, errors.New("stored broadcast filter does not parse")
		}
	}
	relation, where := audienceSQL(filter, &st.cutoff, args)
	if st.recipientIDs != nil {
		where = "r.id = ANY(" + args.add(st.recipientIDs) + "::text[])"
	}
	after := ""
	if st.cursor != nil {
		after = *st.cursor
	}
	q := "SELECT r.id, r.email FROM " + relation + " AS r WHERE r.id > " + args.add(after) + " AND " + where +
		" ORDER BY r.id LIMIT " + args.add(ExpandChunkSize)
	rows, err := tx.Query(ctx, q, args.values...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var email *string
		if err := rows.Scan(&id, &email); err != nil {
			return nil, nil, err
		}
		ids = append(ids, id)
		emails = append(emails, email)
	}
	return ids, emails, rows.Err()
}

// writeDeliveries inserts one delivery per recipient and channel. Those that
// cannot or must not be sent are written suppressed with the reason; the rest
// are pending, and get delivery jobs in the same transaction.
func (s *Service) writeDeliveries(ctx context.Context, tx pgx.Tx, id int64, st *expansionState, ids []string, emails []*string) error {
	required := slices.Contains(s.opts.RequiredCategories, st.category)
	rows, err := tx.Query(ctx, `
		INSERT INTO deliveries (broadcast_id, recipient_id, channel, status, reason, address)
		SELECT $1, a.id, ch.channel,
			CASE WHEN x.reason IS NULL THEN 'pending' ELSE 'suppressed' END, x.reason,
			CASE WHEN ch.channel = 'email' THEN a.email END
		FROM unnest($2::text[], $3::text[]) AS a(id, email)
		CROSS JOIN unnest($4::text[]) AS ch(channel)
		CROSS JOIN LATERAL (SELECT `+suppressionSQL("a", "$5", "$6", "$7")+` AS reason) x
		ON CONFLICT DO NOTHING
		RETURNING id, recipient_id, channel, status`,
		id, ids, emails, st.channels, st.cutoff, st.category, required)
	if err != nil {
		return err
	}
	type row struct {
		id                         int64
		recipient, channel, status string
	}
	var pending []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.id, &r.recipient, &r.channel, &r.status); err != nil {
			return err
		}
		if r.status == DeliveryPending {
			pending = append(pending, r)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if st.dedupeKey != nil && len(pending) > 0 {
		dIDs := make([]int64, len(pending))
		recipients := make([]string, len(pending))
		channels := make([]string, len(pending))
		for i, r := range pending {
			dIDs[i], recipients[i], channels[i] = r.id, r.recipient, r.channel
		}
		duplicates, err := claimDedupe(ctx, tx, *st.dedupeKey, dIDs, recipients, channels)
		if err != nil {
			return err
		}
		if len(duplicates) > 0 {
			pending = slices.DeleteFunc(pending, func(r row) bool { _, dup := duplicates[r.id]; return dup })
		}
	}
	byChannel := map[string][]int64{}
	for _, r := range pending {
		byChannel[r.channel] = append(byChannel[r.channel], r.id)
	}
	var batches []DeliveryBatch
	for _, ch := range st.channels {
		slices.Sort(byChannel[ch])
		batches = append(batches, cutBatches(DeliveryBatch{BroadcastID: id, Channel: ch}, byChannel[ch])...)
	}
	if len(batches) == 0 {
		return nil
	}
	return s.opts.Enqueuer.EnqueueDeliveriesTx(ctx, tx, batches, false)
}

// suppressionSQL is the reason a delivery to recipient row r on channel
// ch.channel must not be sent (NULL: send it): the same rules at expansion and in a
// dry run. The arguments name SQL parameters: the cut-off, the category, and
// whether the category is required (no opt-out). An address on the suppression
// list (bounced, spam report) is suppressed whatever the category.
func suppressionSQL(r, cutoff, category, required string) string {
	return `CASE
		WHEN ch.channel = 'email' AND ` + r + `.email IS NULL THEN 'no_address'
		WHEN ch.channel = 'push' AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.recipient_id = ` + r + `.id
			AND d.valid_from <= ` + cutoff + ` AND (d.valid_to IS NULL OR d.valid_to > ` + cutoff + `)) THEN 'no_device'
		WHEN NOT ` + required + ` AND EXISTS (SELECT 1 FROM preferences p WHERE p.recipient_id = ` + r + `.id
			AND p.categories -> ` + category + ` ->> ch.channel = 'false') THEN 'preference'
		WHEN ch.channel = 'email' AND EXISTS (SELECT 1 FROM suppressed_addresses s
			WHERE s.address_hash = ` + addressHashSQL(r+".email") + `) THEN 'suppressed_address'
		END`
}

// claimDedupe records (dedupe key, recipient, channel) for each delivery and marks
// the deliveries whose claim was already held as suppressed duplicates.
func claimDedupe(ctx context.Context, tx pgx.Tx, key string, ids []int64, recipients, channels []string) (map[int64]struct{}, error) {
	rows, err := tx.Query(ctx, `
		WITH claimed AS (
			INSERT INTO dedupe_claims (dedupe_key, recipient_id, channel, delivery_id)
			SELECT $1, r, c, d FROM unnest($2::bigint[], $3::text[], $4::text[]) AS u(d, r, c)
			ON CONFLICT DO NOTHING
			RETURNING delivery_id)
		UPDATE deliveries SET status = 'suppressed', reason = 'duplicate', finished_at = now()
		WHERE id = ANY($2) AND id NOT IN (SELECT delivery_id FROM claimed)
		RETURNING id`, key, ids, recipients, channels)
	if err != nil {
		return nil, err
	}
	dups := map[int64]struct{}{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		dups[id] = struct{}{}
	}
	return dups, rows.Err()
}

// cutBatches splits ascending delivery ids into batches of the channel's size.
func cutBatches(template DeliveryBatch, ids []int64) []DeliveryBatch {
	size := BatchSize(template.Channel)
	var out []DeliveryBatch
	for start := 0; start < len(ids); start += size {
		end := min(start+size, len(ids))
		b := template
		b.FirstID, b.LastID, b.Count = ids[start], ids[end-1], end-start
		out = append(out, b)
	}
	return out
}
