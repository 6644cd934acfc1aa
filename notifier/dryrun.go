package notifier

import (
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// DryRunResult is what a broadcast would do, as of its cut-off, without doing it.
type DryRunResult struct {
	DryRun     bool                     `json:"dry_run"`
	CutoffAt   time.Time                `json:"cutoff_at"`
	Recipients int64                    `json:"recipients"`
	Channels   map[string]*DryRunCounts `json:"channels"`
	// Samples are the messages of the audience's first recipient, rendered.
	Samples     map[string]*Message `json:"samples,omitempty"`
	SampleOfRID string              `json:"sample_recipient,omitempty"`
}

// DryRunCounts is one channel's audience: what would be sent and what suppressed, by reason.
type DryRunCounts struct {
	Deliveries int64            `json:"deliveries"`
	ToSend     int64            `json:"to_send"`
	Suppressed int64            `json:"suppressed"`
	Reasons    map[string]int64 `json:"suppressed_by_reason"`
}

// DryRunBroadcast validates a broadcast like CreateBroadcast and counts its
// audience per channel with the expansion's own suppression rules, and renders a
// sample. It writes nothing.
func (s *Service) DryRunBroadcast(ctx context.Context, in BroadcastInput) (*DryRunResult, error) {
	if err := Invalid(in.Valid()); err != nil {
		return nil, err
	}
	var res *DryRunResult
	// A read-only transaction: the checks share CreateBroadcast's code, and
	// nothing can be written even by mistake.
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var filter *Filter
		if in.Segment != "" {
			seg, err := s.findSegmentTx(ctx, tx, in.Segment)
			if err != nil {
				if ErrorCode(err) == ENOTFOUND {
					return Invalid(map[string]string{"segment": "no segment " + strconv.Quote(in.Segment)})
				}
				return err
			}
			filter = seg.Filter
		}
		var now time.Time
		if err := tx.QueryRow(ctx, "SELECT now()").Scan(&now); err != nil {
			return err
		}
		cutoff := now
		if in.CutoffAt != nil && !in.CutoffAt.After(now) {
			cutoff = *in.CutoffAt
		}
		samples, err := s.renderAudienceSample(ctx, tx, in, filter, cutoff, now)
		if err != nil {
			return err
		}
		res = &DryRunResult{DryRun: true, CutoffAt: cutoff, Channels: map[string]*DryRunCounts{}, Samples: samples}
		for _, m := range samples {
			res.SampleOfRID = m.RecipientID
		}
		for _, ch := range in.Channels {
			res.Channels[ch] = &DryRunCounts{Reasons: map[string]int64{}}
		}
		args := &sqlArgs{}
		relation, where := audienceSQL(filter, &cutoff, args)
		if in.Recipients != nil {
			where = "r.id = ANY(" + args.add(in.Recipients) + "::text[])"
		}
		cutoffArg, categoryArg := args.add(cutoff)+"::timestamptz", args.add(in.Category)+"::text"
		requiredArg := args.add(slices.Contains(s.opts.RequiredCategories, in.Category)) + "::boolean"
		channelsArg := args.add(in.Channels) + "::text[]"
		reason := suppressionSQL("r", cutoffArg, categoryArg, requiredArg)
		if in.DedupeKey != "" {
			reason = `coalesce(` + reason + `, CASE WHEN EXISTS (SELECT 1 FROM dedupe_claims c WHERE c.dedupe_key = ` + args.add(in.DedupeKey) +
				` AND c.recipient_id = r.id AND c.channel = ch.channel) THEN 'duplicate' END)`
		}
		// OFFSET 0: the reason is computed once per row, not once per use.
		rows, err := tx.Query(ctx, `SELECT ch.channel, x.reason, count(*) FROM `+relation+` AS r
			CROSS JOIN unnest(`+channelsArg+`) AS ch(channel)
			CROSS JOIN LATERAL (SELECT `+reason+` AS reason OFFSET 0) x
			WHERE `+where+` GROUP BY 1, 2`, args.values...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var ch string
			var reason *string
			var n int64
			if err := rows.Scan(&ch, &reason, &n); err != nil {
				return err
			}
			c := res.Channels[ch]
			c.Deliveries += n
			if reason == nil {
				c.ToSend += n
			} else {
				c.Suppressed += n
				c.Reasons[*reason] += n
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(in.Channels) > 0 {
			res.Recipients = res.Channels[in.Channels[0]].Deliveries
		}
		return nil
	})
	return res, err
}
