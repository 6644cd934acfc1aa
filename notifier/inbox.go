package notifier

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// InboxItem is one message in a recipient's in-app inbox.
type InboxItem struct {
	ID          int64      `json:"id"`
	Title       string     `json:"title"`
	Body        string     `json:"body"`
	URL         string     `json:"url"`
	Category    string     `json:"category"`
	BroadcastID *int64     `json:"broadcast_id"` // null for a notification
	CreatedAt   time.Time  `json:"created_at"`
	ReadAt      *time.Time `json:"read_at"` // null while unread
}

// InboxFilter selects a page of a recipient's inbox, newest first.
type InboxFilter struct {
	// UnreadOnly leaves out the items already read.
	UnreadOnly bool
	// Limit is the page size, 1 to MaxInboxLimit; 0 means DefaultInboxLimit.
	Limit int
	// Cursor is a previous page's NextCursor; empty for the first page.
	Cursor string
}

// InboxPage is one page of an inbox.
type InboxPage struct {
	Items []*InboxItem `json:"items"`
	// UnreadCount counts every unread item of the recipient, not only this page's.
	UnreadCount int64 `json:"unread_count"`
	// NextCursor fetches the next page; empty (absent in JSON) on the last one.
	NextCursor string `json:"next_cursor,omitempty"`
}

// Page sizes of the inbox API.
const (
	DefaultInboxLimit = 50
	MaxInboxLimit     = 200
)

var (
	limitProblem  = fmt.Sprintf("must be a whole number from 1 to %d", MaxInboxLimit)
	cursorProblem = "must be the next_cursor of a previous page"
)

// Valid names the fields of f that are wrong.
func (f InboxFilter) Valid() map[string]string {
	problems := map[string]string{}
	if f.Limit < 0 || f.Limit > MaxInboxLimit {
		problems["limit"] = limitProblem
	}
	if _, err := decodeInboxCursor(f.Cursor); err != nil {
		problems["cursor"] = cursorProblem
	}
	return problems
}

// A cursor is the id of the last item of a page, the next page starts below it.
// It is base64 so that clients treat it as opaque.
func encodeInboxCursor(lastID int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(lastID, 10)))
}

// decodeInboxCursor returns the id a cursor holds, or 0 for the empty cursor.
func decodeInboxCursor(cursor string) (int64, error) {
	if cursor == "" {
		return 0, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		return 0, err
	}
	id, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		return 0, err
	}
	if id <= 0 || encodeInboxCursor(id) != cursor {
		return 0, fmt.Errorf("cursor %q is not canonical", cursor)
	}
	return id, nil
}

const inboxItemColumns = `id, title, body, url, category, broadcast_id, created_at, read_at`

func scanInboxItem(row pgx.Row) (*InboxItem, error) {
	var it InboxItem
	if err := row.Scan(&it.ID, &it.Title, &it.Body, &it.URL, &it.Category, &it.BroadcastID, &it.CreatedAt, &it.ReadAt); err != nil {
		return nil, err
	}
	return &it, nil
}

// FindInboxItems returns a page of a recipient's inbox, newest first, with the
// recipient's unread count. Pages follow item ids, so items arriving or being read
// while a client pages neither repeat nor skip an item.
func (s *Service) FindInboxItems(ctx context.Context, recipientID string, f InboxFilter) (*InboxPage, error) {
	if err := Invalid(f.Valid()); err != nil {
		return nil, err
	}
	before, _ := decodeInboxCursor(f.Cursor)
	if before == 0 {
		before = math.MaxInt64
	}
	limit := f.Limit
	if limit == 0 {
		limit = DefaultInboxLimit
	}
	page := &InboxPage{Items: []*InboxItem{}}
	// One snapshot, so the count agrees with the items.
	opts := pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}
	err := pgx.BeginTxFunc(ctx, s.pool, opts, func(tx pgx.Tx) error {
		if err := requireRecipient(ctx, tx, recipientID); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM inbox_items WHERE recipient_id = $1 AND read_at IS NULL`,
			recipientID).Scan(&page.UnreadCount); err != nil {
			return err
		}
		// One more than the page, to know whether there is a next one. The unread
		// condition is spelled out, not a parameter, so that a generic plan can
		// still use the partial index of unread items.
		sql := `SELECT ` + inboxItemColumns + ` FROM inbox_items WHERE recipient_id = $1 AND id < $2`
		if f.UnreadOnly {
			sql += ` AND read_at IS NULL`
		}
		rows, err := tx.Query(ctx, sql+` ORDER BY id DESC LIMIT $3`, recipientID, before, limit+1)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			it, err := scanInboxItem(rows)
			if err != nil {
				return err
			}
			page.Items = append(page.Items, it)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	if len(page.Items) > limit {
		page.Items = page.Items[:limit]
		page.NextCursor = encodeInboxCursor(page.Items[limit-1].ID)
	}
	return page, nil
}

// MarkInboxItemRead marks one item of a recipient read and returns it. Marking an
// item already read keeps its first read_at. ENOTFOUND when the recipient does not
// exist or the item is not theirs.
func (s *Service) MarkInboxItemRead(ctx context.Context, recipientID string, itemID int64) (*InboxItem, error) {
	it, err := scanInboxItem(s.pool.QueryRow(ctx, `UPDATE inbox_items SET read_at = coalesce(read_at, now())
		WHERE id = $1 AND recipient_id = $2
		  AND EXISTS (SELECT 1 FROM recipients WHERE id = $2 AND NOT erased)
		RETURNING `+inboxItemColumns, itemID, recipientID))
	if errors.Is(err, pgx.ErrNoRows) {
		if err := requireRecipient(ctx, s.pool, recipientID); err != nil {
			return nil, err
		}
		return nil, Errorf(ENOTFOUND, "inbox item %d of recipient %q not found", itemID, recipientID)
	}
	if err != nil {
		return nil, err
	}
	return it, nil
}

// MarkAllInboxRead marks every unread item of a recipient read and returns how
// many it marked.
func (s *Service) MarkAllInboxRead(ctx context.Context, recipientID string) (int64, error) {
	if err := requireRecipient(ctx, s.pool, recipientID); err != nil {
		return 0, err
	}
	tag, err := s.pool.Exec(ctx, `UPDATE inbox_items SET read_at = now() WHERE recipient_id = $1 AND read_at IS NULL`, recipientID)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// inboxDeleteChunk is how many items DeleteOldInboxItems looks at per statement.
const inboxDeleteChunk = 5000

// DeleteOldInboxItems deletes the inbox items created more than olderThan ago and
// returns how many it deleted, also when it fails part way.
//
// It deletes in short statements, walking the items in id order, oldest first, and
// stops at the first chunk with nothing old in it: ids follow creation time, so
// everything after is newer. Each chunk is a primary-key range scan; nothing scans
// the whole table (there is no index on created_at).
func (s *Service) DeleteOldInboxItems(ctx context.Context, olderThan time.Duration) (int64, error) {
	if olderThan <= 0 {
		return 0, Errorf(EINVALID, "olderThan must be positive, not %s", olderThan)
	}
	// The cut-off comes from the database clock, which wrote created_at.
	var cutoff time.Time
	if err := s.pool.QueryRow(ctx, `SELECT now() - $1::interval`,
		pgtype.Interval{Microseconds: olderThan.Microseconds(), Valid: true}).Scan(&cutoff); err != nil {
		return 0, err
	}
	var total, after int64
	for {
		var deleted int64
		var last *int64
		err := s.pool.QueryRow(ctx, `
			WITH chunk AS (
			    SELECT id, created_at FROM inbox_items WHERE id > $1 ORDER BY id LIMIT $2
			), deleted AS (
			    DELETE FROM inbox_items i USING chunk c
			    WHERE i.id = c.id AND c.created_at < $3
			    RETURNING i.id
			)
			SELECT (SELECT count(*) FROM deleted), (SELECT max(id) FROM chunk)`,
			after, inboxDeleteChunk, cutoff).Scan(&deleted, &last)
		if err != nil {
			return total, err
		}
		total += deleted
		if deleted == 0 || last == nil {
			return total, nil
		}
		after = *last
	}
}

// inboxFilterFromQuery reads ?unread=true|false&limit=&cursor=, naming every bad
// parameter at once.
func inboxFilterFromQuery(q url.Values) (InboxFilter, error) {
	f := InboxFilter{Cursor: q.Get("cursor")}
	problems := f.Valid()
	switch q.Get("unread") {
	case "", "false":
	case "true":
		f.UnreadOnly = true
	default:
		problems["unread"] = "must be true or false"
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxInboxLimit {
			problems["limit"] = limitProblem
		} else {
			f.Limit = n
		}
	}
	return f, Invalid(problems)
}

func handleListInbox(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f, err := inboxFilterFromQuery(r.URL.Query())
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		page, err := svc.FindInboxItems(r.Context(), chi.URLParam(r, "id"), f)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, http.StatusOK, page)
	}
}

func handleReadInboxItem(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		raw := chi.URLParam(r, "item")
		itemID, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || itemID <= 0 {
			// Not an id, so not an item.
			writeError(w, r, logger, Errorf(ENOTFOUND, "inbox item %q not found", raw))
			return
		}
		it, err := svc.MarkInboxItemRead(r.Context(), chi.URLParam(r, "id"), itemID)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, http.StatusOK, it)
	}
}

func handleReadAllInbox(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n, err := svc.MarkAllInboxRead(r.Context(), chi.URLParam(r, "id"))
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, http.StatusOK, map[string]int64{"marked": n})
	}
}
