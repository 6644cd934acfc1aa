package notifier

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
)

// SegmentAll is the built-in segment of every recipient.
const SegmentAll = "all"

// Segment is a named filter over the recipient directory.
type Segment struct {
	Key         string    `json:"key"`
	Description string    `json:"description"`
	Filter      *Filter   `json:"filter"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// SegmentInput is the body of PUT /v1/segments/{key}.
type SegmentInput struct {
	Description string          `json:"description"`
	Filter      json.RawMessage `json:"filter"`
}

func (in SegmentInput) Valid() map[string]string {
	_, problems := ParseFilter(in.Filter, "filter")
	if len(in.Description) > 1000 {
		problems["description"] = "must be at most 1000 characters"
	}
	return problems
}

var segmentKeyPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.\-]{0,63}$`)

// PutSegment creates or replaces a segment.
func (s *Service) PutSegment(ctx context.Context, key string, in SegmentInput) (seg *Segment, created bool, err error) {
	problems := in.Valid()
	if !segmentKeyPattern.MatchString(key) {
		problems["key"] = "must be 1 to 64 of a-z 0-9 _ . -, starting with a letter or digit"
	} else if key == SegmentAll {
		problems["key"] = `"all" is built in (everyone) and cannot be redefined`
	}
	if err := Invalid(problems); err != nil {
		return nil, false, err
	}
	filter, _ := ParseFilter(in.Filter, "filter")
	seg = &Segment{Key: key, Description: in.Description, Filter: filter}
	err = s.pool.QueryRow(ctx, `INSERT INTO segments (key, description, filter) VALUES ($1, $2, $3)
		ON CONFLICT (key) DO UPDATE SET description = excluded.description, filter = excluded.filter, updated_at = now()
		RETURNING created_at, updated_at, xmax = 0`, key, in.Description, filter).Scan(&seg.CreatedAt, &seg.UpdatedAt, &created)
	if err != nil {
		return nil, false, err
	}
	return seg, created, nil
}

// FindSegmentByKey returns a segment; "all" is built in.
func (s *Service) FindSegmentByKey(ctx context.Context, key string) (*Segment, error) {
	if key == SegmentAll {
		return &Segment{Key: SegmentAll, Description: "every recipient"}, nil
	}
	seg := &Segment{Key: key}
	var raw []byte
	err := s.pool.QueryRow(ctx, `SELECT description, filter, created_at, updated_at FROM segments WHERE key = $1`, key).
		Scan(&seg.Description, &raw, &seg.CreatedAt, &seg.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, Errorf(ENOTFOUND, "segment %q not found", key)
	}
	if err != nil {
		return nil, err
	}
	var problems map[string]string
	seg.Filter, problems = ParseFilter(raw, "filter")
	if len(problems) > 0 {
		return nil, errors.New("stored filter of segment " + key + " does not parse")
	}
	return seg, nil
}

// audienceSQL returns a FROM-able relation r(id, email, locale, timezone,
// attributes) of the directory as of asOf (nil: now), and the filter condition.
// Erased recipients are never part of any audience.
func audienceSQL(f *Filter, asOf *time.Time, args *sqlArgs) (relation, where string) {
	if asOf == nil {
		relation = `(SELECT id, email, locale, timezone, attributes FROM recipients WHERE NOT erased)`
	} else {
		t := args.add(*asOf)
		relation = `(SELECT id, email, locale, timezone, attributes FROM recipients
			WHERE NOT erased AND valid_from <= ` + t + `::timestamptz
		UNION ALL
		SELECT recipient_id, email, locale, timezone, attributes FROM recipient_history
			WHERE NOT erased AND valid_from <= ` + t + `::timestamptz AND valid_to > ` + t + `::timestamptz)`
	}
	return relation, compileFilter(f, args)
}

// audiencePageSQL returns a query of the next limit recipients (id, email) of an
// audience as of asOf, in id order after the recipient id after (exclusive) and,
// when upTo is set, up to upTo (inclusive). where is the audience condition over
// r (from compileFilter, or a list of ids). The id bound, the condition, the order
// and the limit sit inside each arm of the UNION ALL as well as outside it, so the
// plan is a merge of two index scans that stops after limit rows, instead of a scan
// and sort of the whole directory after the cursor for every page.
func audiencePageSQL(where string, asOf time.Time, after string, upTo *string, limit int, args *sqlArgs) string {
	t := args.add(asOf) + "::timestamptz"
	bound := "r.id > " + args.add(after) + "::text"
	if upTo != nil {
		bound += " AND r.id <= " + args.add(*upTo) + "::text"
	}
	n := args.add(limit) + "::int"
	return `SELECT id, email FROM (
		(SELECT r.id, r.email FROM recipients r
			WHERE NOT r.erased AND r.valid_from <= ` + t + ` AND ` + bound + ` AND ` + where + `
			ORDER BY r.id LIMIT ` + n + `)
		UNION ALL
		(SELECT r.id, r.email FROM (SELECT recipient_id AS id, email, locale, timezone, attributes, erased, valid_from, valid_to
				FROM recipient_history) r
			WHERE NOT r.erased AND r.valid_from <= ` + t + ` AND r.valid_to > ` + t + ` AND ` + bound + ` AND ` + where + `
			ORDER BY r.id LIMIT ` + n + `)
	) page ORDER BY id LIMIT ` + n
}

// CountSegment counts the recipients in a segment as of asOf (nil: now).
func (s *Service) CountSegment(ctx context.Context, key string, asOf *time.Time) (int64, error) {
	seg, err := s.FindSegmentByKey(ctx, key)
	if err != nil {
		return 0, err
	}
	return s.countFilter(ctx, seg.Filter, asOf)
}

func (s *Service) countFilter(ctx context.Context, f *Filter, asOf *time.Time) (int64, error) {
	args := &sqlArgs{}
	relation, where := audienceSQL(f, asOf, args)
	var n int64
	err := s.pool.QueryRow(ctx, "SELECT count(*) FROM "+relation+" AS r WHERE "+where, args.values...).Scan(&n)
	return n, err
}

// FindMatchingIDs lists the ids of current recipients matching a filter. It is
// for tests and tools, not for audiences (which go through expansion).
func (s *Service) FindMatchingIDs(ctx context.Context, rawFilter json.RawMessage) ([]string, error) {
	f, problems := ParseFilter(rawFilter, "filter")
	if err := Invalid(problems); err != nil {
		return nil, err
	}
	args := &sqlArgs{}
	relation, where := audienceSQL(f, nil, args)
	rows, err := s.pool.Query(ctx, "SELECT r.id FROM "+relation+" AS r WHERE "+where, args.values...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
