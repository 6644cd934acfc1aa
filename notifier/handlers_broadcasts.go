package notifier

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
)

// handleIdempotentCreate is the shape of both create endpoints: read the raw body
// (for the fingerprint), then create at most once per Idempotency-Key.
func handleIdempotentCreate[T validator](svc *Service, logger *slog.Logger, request string,
	create func(r *http.Request, tx pgx.Tx, key *APIKey, in T) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key := APIKeyFrom(r.Context())
		idemKey := r.Header.Get("Idempotency-Key")
		raw, err := readBody(w, r, defaultBodyLimit)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		res, replayed, err := svc.withIdempotency(r.Context(), key.ID, idemKey, request, raw, func(tx pgx.Tx) (int, any, error) {
			var in T
			if err := decodeJSON(raw, &in); err != nil {
				return 0, nil, err
			}
			if err := Invalid(in.Valid()); err != nil {
				return 0, nil, err
			}
			out, err := create(r, tx, key, in)
			return http.StatusAccepted, out, err
		})
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		writeIdempotent(w, res, replayed)
	}
}

func handleCreateBroadcast(svc *Service, logger *slog.Logger) http.HandlerFunc {
	create := handleIdempotentCreate(svc, logger, "POST /v1/broadcasts",
		func(r *http.Request, tx pgx.Tx, key *APIKey, in BroadcastInput) (any, error) {
			if in.DryRun {
				return nil, Invalid(map[string]string{"dry_run": "a dry run creates nothing; send it without an Idempotency-Key"})
			}
			return svc.CreateBroadcastTx(r.Context(), tx, key, in)
		})
	return func(w http.ResponseWriter, r *http.Request) {
		// A dry run creates nothing, so it needs no Idempotency-Key.
		if r.Header.Get("Idempotency-Key") != "" {
			create(w, r)
			return
		}
		in, err := decodeUnvalidated[BroadcastInput](w, r, defaultBodyLimit)
		if err == nil && !in.DryRun {
			err = &Error{Code: EBADREQUEST, Message: "an Idempotency-Key header is required for this request",
				Fields: map[string]string{"Idempotency-Key": "is required"}}
		}
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		res, err := svc.DryRunBroadcast(r.Context(), in)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, http.StatusOK, res)
	}
}

func handleCreateNotification(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return handleIdempotentCreate(svc, logger, "POST /v1/notifications",
		func(r *http.Request, tx pgx.Tx, key *APIKey, in NotificationInput) (any, error) {
			return svc.CreateNotificationTx(r.Context(), tx, key, in)
		})
}

// pathID parses a numeric id path parameter; a bad one is a 404, like a missing one.
func pathID(r *http.Request, name string) (int64, error) {
	id, err := strconv.ParseInt(chi.URLParam(r, name), 10, 64)
	if err != nil || id <= 0 {
		return 0, Errorf(ENOTFOUND, "%s %q not found", name, chi.URLParam(r, name))
	}
	return id, nil
}

func queryInt(r *http.Request, name string) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, Invalid(map[string]string{name: "must be an integer"})
	}
	return n, nil
}

func handleGetBroadcast(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r, "id")
		if err == nil {
			var b *Broadcast
			if b, err = svc.FindBroadcastByID(r.Context(), id); err == nil {
				encode(w, http.StatusOK, b)
				return
			}
		}
		writeError(w, r, logger, err)
	}
}

func handleListBroadcasts(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		limit, err := queryInt(r, "limit")
		if err == nil {
			var page *BroadcastPage
			q := r.URL.Query()
			if page, err = svc.FindBroadcasts(r.Context(), BroadcastFilter{Status: q.Get("status"), Limit: limit, Cursor: q.Get("cursor")}); err == nil {
				encode(w, http.StatusOK, page)
				return
			}
		}
		writeError(w, r, logger, err)
	}
}

func handleListDeliveries(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r, "id")
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		limit, err := queryInt(r, "limit")
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		q := r.URL.Query()
		page, err := svc.FindDeliveries(r.Context(), id, DeliveryFilter{Status: q.Get("status"), Channel: q.Get("channel"), Limit: limit, Cursor: q.Get("cursor")})
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, http.StatusOK, page)
	}
}

func handleGetNotification(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r, "id")
		if err == nil {
			var n *Notification
			if n, err = svc.FindNotificationByID(r.Context(), id); err == nil {
				encode(w, http.StatusOK, n)
				return
			}
		}
		writeError(w, r, logger, err)
	}
}

func handleControlBroadcast(svc *Service, logger *slog.Logger, action func(*Service, context.Context, string, int64) (*ControlResult, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r, "id")
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		res, err := action(svc, r.Context(), APIKeyFrom(r.Context()).Name, id)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, http.StatusOK, res)
	}
}

func handleListAudit(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		limit, err := queryInt(r, "limit")
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		var broadcastID int64
		if v := r.URL.Query().Get("broadcast"); v != "" {
			if broadcastID, err = strconv.ParseInt(v, 10, 64); err != nil || broadcastID <= 0 {
				writeError(w, r, logger, Invalid(map[string]string{"broadcast": "must be a broadcast id"}))
				return
			}
		}
		page, err := svc.FindAuditEntries(r.Context(), broadcastID, limit, r.URL.Query().Get("cursor"))
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, http.StatusOK, page)
	}
}
