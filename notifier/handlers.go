package notifier

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
)

func handleHealthz() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		encode(w, http.StatusOK, map[string]string{"status": "ok"})
	}
}

func handleReadyz(ready func(context.Context) error, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
			defer cancel()
			if err := ready(ctx); err != nil {
				writeError(w, r, logger, Errorf(EUNAVAILABLE, "not ready: %v", err))
				return
			}
		}
		encode(w, http.StatusOK, map[string]string{"status": "ready"})
	}
}

func createdOrOK(created bool) int {
	if created {
		return http.StatusCreated
	}
	return http.StatusOK
}

func handlePutRecipient(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		in, err := decode[RecipientInput](w, r, defaultBodyLimit)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		rec, created, err := svc.PutRecipient(r.Context(), chi.URLParam(r, "id"), in)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, createdOrOK(created), rec)
	}
}

func handleGetRecipient(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rec, err := svc.FindRecipientByID(r.Context(), chi.URLParam(r, "id"))
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, http.StatusOK, rec)
	}
}

func handleDeleteRecipient(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := svc.DeleteRecipient(r.Context(), chi.URLParam(r, "id")); err != nil {
			writeError(w, r, logger, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

type batchRecipientsRequest struct {
	Recipients []RecipientInput `json:"recipients"`
}

// Valid leaves the per-recipient checks to PutRecipients, which reports them all.
func (batchRecipientsRequest) Valid() map[string]string { return nil }

func handleBatchRecipients(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		in, err := decode[batchRecipientsRequest](w, r, batchBodyLimit)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		res, err := svc.PutRecipients(r.Context(), in.Recipients)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, http.StatusOK, res)
	}
}

func handlePutDevice(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		in, err := decode[DeviceInput](w, r, defaultBodyLimit)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		d, created, err := svc.PutDevice(r.Context(), chi.URLParam(r, "id"), chi.URLParam(r, "token"), in)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, createdOrOK(created), d)
	}
}

func handleDeleteDevice(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := svc.DeleteDevice(r.Context(), chi.URLParam(r, "id"), chi.URLParam(r, "token")); err != nil {
			writeError(w, r, logger, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

func handlePutPreferences(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		in, err := decode[Preferences](w, r, defaultBodyLimit)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		p, err := svc.PutPreferences(r.Context(), chi.URLParam(r, "id"), in, "api")
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, http.StatusOK, p)
	}
}

func handleGetPreferences(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := svc.FindPreferences(r.Context(), chi.URLParam(r, "id"))
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, http.StatusOK, p)
	}
}

func handlePutSegment(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		in, err := decodeUnvalidated[SegmentInput](w, r, defaultBodyLimit)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		seg, created, err := svc.PutSegment(r.Context(), chi.URLParam(r, "key"), in)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, createdOrOK(created), seg)
	}
}

func handleGetSegment(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		seg, err := svc.FindSegmentByKey(r.Context(), chi.URLParam(r, "key"))
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		encode(w, http.StatusOK, seg)
	}
}

func handleCountSegment(svc *Service, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var asOf *time.Time
		if v := r.URL.Query().Get("as_of"); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				writeError(w, r, logger, Invalid(map[string]string{"as_of": "must be an RFC 3339 time like 2026-01-02T15:04:05Z"}))
				return
			}
			asOf = &t
		}
		n, err := svc.CountSegment(r.Context(), chi.URLParam(r, "key"), asOf)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		resp := map[string]any{"key": chi.URLParam(r, "key"), "count": n}
		if asOf != nil {
			resp["as_of"] = asOf.UTC()
		}
		encode(w, http.StatusOK, resp)
	}
}
