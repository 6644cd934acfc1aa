package notifier

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
)

// IdempotencyRetention is how long keys are kept; design.md asks for at least 7 days.
const IdempotencyRetention = 8 * 24 * time.Hour

// idempotentResult is a stored response.
type idempotentResult struct {
	Status int
	Body   []byte
}

// fingerprint hashes the request line and the body as canonical JSON, so key
// order and whitespace do not make "the same body" different.
func fingerprint(request string, body []byte) []byte {
	var v any
	canonical := body
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if dec.Decode(&v) == nil {
		if b, err := json.Marshal(v); err == nil {
			canonical = b
		}
	}
	h := sha256.New()
	h.Write([]byte(request))
	h.Write([]byte{0})
	h.Write(canonical)
	return h.Sum(nil)
}

// withIdempotency runs create at most once per (API key, Idempotency-Key).
//
// A transaction-scoped advisory lock on the key decides who is first: a request
// that cannot take it while another holds it gets 409; once the holder commits,
// the key row (written in the same transaction as the effect) answers every later
// request with the stored response, or 422 if the body differs. A crash rolls back
// the effect and the key together, so a retry starts clean.
func (s *Service) withIdempotency(ctx context.Context, apiKeyID, key, request string, body []byte,
	create func(tx pgx.Tx) (status int, response any, err error)) (res *idempotentResult, replayed bool, err error) {
	if key == "" {
		return nil, false, &Error{Code: EBADREQUEST, Message: "an Idempotency-Key header is required for this request", Fields: map[string]string{"Idempotency-Key": "is required"}}
	}
	if len(key) > 255 {
		return nil, false, &Error{Code: EBADREQUEST, Message: "Idempotency-Key is too long", Fields: map[string]string{"Idempotency-Key": "must be at most 255 characters"}}
	}
	fp := fingerprint(request, body)
	// A finished request answers from its stored row at once, however many
	// replays arrive together; only a key with no row yet contends for the lock.
	if res, replayed, err := s.storedResponse(ctx, s.pool, apiKeyID, key, request, fp); err != nil || replayed {
		return res, replayed, err
	}
	lockKey := idempotencyLockKey(apiKeyID, key)
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var locked bool
		if err := tx.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1)", lockKey).Scan(&locked); err != nil {
			return err
		}
		if !locked {
			return &Error{Code: ECONFLICT, Message: "a request with this Idempotency-Key is still in flight; retry later"}
		}
		// The first request may have committed between our read and the lock.
		var err error
		if res, replayed, err = s.storedResponse(ctx, tx, apiKeyID, key, request, fp); err != nil || replayed {
			return err
		}
		status, response, err := create(tx)
		if err != nil {
			return err
		}
		raw, err := json.Marshal(response)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (api_key_id, key, request, fingerprint, status, response)
			VALUES ($1, $2, $3, $4, $5, $6)`, apiKeyID, key, request, fp, status, raw); err != nil {
			return err
		}
		res = &idempotentResult{Status: status, Body: raw}
		return nil
	})
	return res, replayed, err
}

// storedResponse answers from a committed key row: the original response, or
// EMISMATCH for another body; replayed is false when there is no row.
func (s *Service) storedResponse(ctx context.Context, q DB, apiKeyID, key, request string, fp []byte) (*idempotentResult, bool, error) {
	var storedRequest string
	var storedFP, storedBody []byte
	var storedStatus int
	err := q.QueryRow(ctx, `SELECT request, fingerprint, status, response FROM idempotency_keys
		WHERE api_key_id = $1 AND key = $2`, apiKeyID, key).Scan(&storedRequest, &storedFP, &storedStatus, &storedBody)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if storedRequest != request || !bytes.Equal(storedFP, fp) {
		return nil, false, &Error{Code: EMISMATCH, Message: "this Idempotency-Key was used with a different request body",
			Fields: map[string]string{"Idempotency-Key": "already used for a different request"}}
	}
	if s.opts.Metrics != nil {
		s.opts.Metrics.IdempotentReplays.WithLabelValues(request).Inc()
	}
	return &idempotentResult{Status: storedStatus, Body: storedBody}, true, nil
}

func idempotencyLockKey(apiKeyID, key string) int64 {
	h := sha256.Sum256([]byte("idempotency\x00" + apiKeyID + "\x00" + key))
	return int64(binary.BigEndian.Uint64(h[:8]))
}

// DeleteExpiredIdempotencyKeys removes keys older than the retention.
func (s *Service) DeleteExpiredIdempotencyKeys(ctx context.Context) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval`, IdempotencyRetention)
	return tag.RowsAffected(), err
}

// writeIdempotent answers with a stored or fresh response.
func writeIdempotent(w http.ResponseWriter, res *idempotentResult, replayed bool) {
	w.Header().Set("Content-Type", "application/json")
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	w.WriteHeader(res.Status)
	_, _ = w.Write(res.Body)
	_, _ = w.Write([]byte("\n"))
}
