package adminui

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/notifyd/notifyd/notifier"
)

// formLimit bounds a form's body: the largest is a sign-in with one key.
const formLimit = 16 << 10

type sessionKey struct{}

func sessionFrom(ctx context.Context) *session {
	s, _ := ctx.Value(sessionKey{}).(*session)
	return s
}

// requireSession sends a visitor without a valid session to the sign-in page.
func (h *handler) requireSession(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sess, err := h.loadSession(r)
		if err != nil {
			h.internalError(w, r, nil, err)
			return
		}
		if sess == nil {
			if r.Method == http.MethodPost {
				h.renderMessage(w, r, nil, http.StatusForbidden, "Signed out",
					"Your session has ended, so nothing was changed. Sign in and try again.", "/admin/")
				return
			}
			http.Redirect(w, r, "/admin/?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		next(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, sess)))
	}
}

// requireSessionJSON answers 401 to the page's script when the session is gone.
func (h *handler) requireSessionJSON(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sess, err := h.loadSession(r)
		if err != nil {
			h.logger.ErrorContext(r.Context(), "admin session lookup failed", "err", err)
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "internal error"})
			return
		}
		if sess == nil {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "signed out"})
			return
		}
		next(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, sess)))
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (h *handler) internalError(w http.ResponseWriter, r *http.Request, sess *session, err error) {
	h.logger.ErrorContext(r.Context(), "admin page failed", "method", r.Method, "path", r.URL.Path, "err", err)
	h.renderMessage(w, r, sess, http.StatusInternalServerError, "Something went wrong",
		"The server could not answer this request. It has been logged; try again.", "/admin/")
}

// serviceError shows a notifier error with its status; internal ones are hidden.
func (h *handler) serviceError(w http.ResponseWriter, r *http.Request, sess *session, err error, back string) {
	var e *notifier.Error
	if !errors.As(err, &e) || notifier.ErrorCode(err) == notifier.EINTERNAL {
		h.internalError(w, r, sess, err)
		return
	}
	text := e.Message
	for field, problem := range e.Fields {
		text += "; " + field + " " + problem
	}
	h.renderMessage(w, r, sess, notifier.StatusOf(err), http.StatusText(notifier.StatusOf(err)), text, back)
}

func (h *handler) handleNotFound(w http.ResponseWriter, r *http.Request) {
	sess, _ := h.loadSession(r)
	h.renderMessage(w, r, sess, http.StatusNotFound, "Not found", "There is no page at "+r.URL.Path+".", "/admin/")
}

// signIn is the sign-in form's data.
type signIn struct {
	CSRF  string
	Next  string
	Error string
}

// safeNext keeps a post-sign-in redirect on this page: a local /admin/ path.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/admin/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/admin/"
	}
	return next
}

// handleIndex is the broadcast list for a signed-in operator and the sign-in
// form for anyone else.
func (h *handler) handleIndex(w http.ResponseWriter, r *http.Request) {
	sess, err := h.loadSession(r)
	if err != nil {
		h.internalError(w, r, nil, err)
		return
	}
	if sess == nil {
		h.render(w, r, http.StatusOK, "signin", page{Title: "Sign in",
			Data: signIn{CSRF: h.loginToken(w, r), Next: safeNext(r.URL.Query().Get("next"))}})
		return
	}
	h.handleList(w, r, sess)
}

func (h *handler) handleSignIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, formLimit)
	want := ""
	if c, err := r.Cookie(loginCookie); err == nil {
		want = c.Value
	}
	if err := h.checkPost(r, want); err != nil {
		h.logger.WarnContext(r.Context(), "admin sign-in refused", "reason", err.Error())
		h.renderMessage(w, r, nil, http.StatusForbidden, "Sign-in refused",
			"The sign-in form was expired or came from another site. Open the sign-in page again and retry.", "/admin/")
		return
	}
	form := signIn{CSRF: want, Next: safeNext(r.PostFormValue("next"))}
	key, err := h.svc.Authenticate(r.Context(), strings.TrimSpace(r.PostFormValue("key")))
	switch {
	case notifier.ErrorCode(err) == notifier.EUNAUTHORIZED:
		form.Error = "That key is not valid, or it has been revoked."
		h.render(w, r, http.StatusUnauthorized, "signin", page{Title: "Sign in", Data: form})
		return
	case err != nil:
		h.internalError(w, r, nil, err)
		return
	case !key.HasScope(notifier.ScopeAdmin):
		h.logger.WarnContext(r.Context(), "admin sign-in without admin scope", "key_id", key.ID)
		form.Error = "That key lacks the admin scope. Sign in with a key created with --scopes admin."
		h.render(w, r, http.StatusForbidden, "signin", page{Title: "Sign in", Data: form})
		return
	}
	if err := h.createSession(r.Context(), w, r, key); err != nil {
		h.internalError(w, r, nil, err)
		return
	}
	h.logger.InfoContext(r.Context(), "admin signed in", "key_id", key.ID, "key_name", key.Name)
	http.Redirect(w, r, form.Next, http.StatusSeeOther)
}

func (h *handler) handleSignOut(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, formLimit)
	sess, err := h.loadSession(r)
	if err != nil {
		h.internalError(w, r, nil, err)
		return
	}
	if sess != nil {
		if err := h.checkPost(r, sess.CSRF); err != nil {
			h.renderMessage(w, r, sess, http.StatusForbidden, "Request refused",
				"This form was expired or came from another site, so you are still signed in.", "/admin/")
			return
		}
	}
	if err := h.deleteSession(w, r); err != nil {
		h.internalError(w, r, sess, err)
		return
	}
	http.Redirect(w, r, "/admin/", http.StatusSeeOther)
}

// list is the broadcast list's data.
type list struct {
	Broadcasts []*broadcastView
	Status     string
	Statuses   []string
	Cursor     string
	NextCursor string
}

var listStatuses = []string{notifier.StatusScheduled, notifier.StatusExpanding, notifier.StatusSending, notifier.StatusPaused,
	notifier.StatusCompleted, notifier.StatusCancelled, notifier.StatusFailed}

func (h *handler) handleList(w http.ResponseWriter, r *http.Request, sess *session) {
	q := r.URL.Query()
	data := list{Status: q.Get("status"), Statuses: listStatuses, Cursor: q.Get("cursor")}
	res, err := h.svc.FindBroadcasts(r.Context(), notifier.BroadcastFilter{Status: data.Status, Limit: h.opts.PageSize, Cursor: data.Cursor})
	if err != nil {
		h.serviceError(w, r, sess, err, "/admin/")
		return
	}
	data.NextCursor = res.NextCursor
	// The list carries no counts; a page is small enough to ask for each.
	for _, b := range res.Broadcasts {
		full, err := h.svc.FindBroadcastByID(r.Context(), b.ID)
		if notifier.ErrorCode(err) == notifier.ENOTFOUND {
			continue
		}
		if err != nil {
			h.internalError(w, r, sess, err)
			return
		}
		data.Broadcasts = append(data.Broadcasts, newBroadcastView(full))
	}
	h.render(w, r, http.StatusOK, "list", page{Title: "Broadcasts", Session: sess, Data: data})
}

// broadcastID reads the {id} path value; ok is false (and a 404 sent) when it is
// not a broadcast id.
func (h *handler) broadcastID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		h.renderMessage(w, r, sessionFrom(r.Context()), http.StatusNotFound, "Not found",
			"There is no broadcast "+strconv.Quote(r.PathValue("id"))+".", "/admin/")
		return 0, false
	}
	return id, true
}

// detail is the detail page's data.
type detail struct {
	B           *broadcastView
	Deliveries  []*notifier.Delivery
	Status      string // the deliveries filter
	Channel     string
	Cursor      string
	NextCursor  string
	FilterError string
	Statuses    []string
	Audit       []*notifier.AuditEntry
	Done        string // the action just taken, from ?done=
}

var deliveryStatuses = []string{notifier.DeliveryPending, notifier.DeliverySending, notifier.DeliverySent, notifier.DeliveryFailed,
	notifier.DeliverySuppressed, notifier.DeliveryCancelled, notifier.DeliveryUnknown}

func (h *handler) handleDetail(w http.ResponseWriter, r *http.Request) {
	sess := sessionFrom(r.Context())
	id, ok := h.broadcastID(w, r)
	if !ok {
		return
	}
	b, err := h.svc.FindBroadcastByID(r.Context(), id)
	if err != nil {
		h.serviceError(w, r, sess, err, "/admin/")
		return
	}
	q := r.URL.Query()
	data := detail{B: newBroadcastView(b), Status: q.Get("status"), Channel: q.Get("channel"), Cursor: q.Get("cursor"),
		Statuses: deliveryStatuses}
	if done := q.Get("done"); slices.Contains([]string{notifier.ActionCancel, notifier.ActionPause, notifier.ActionResume}, done) {
		data.Done = done
	}
	deliveries, err := h.svc.FindDeliveries(r.Context(), id, notifier.DeliveryFilter{Status: data.Status, Channel: data.Channel,
		Cursor: data.Cursor, Limit: h.opts.DeliveryPageSize})
	switch {
	case notifier.ErrorCode(err) == notifier.EINVALID:
		data.FilterError = "That filter is not valid; showing none."
	case err != nil:
		h.serviceError(w, r, sess, err, "/admin/")
		return
	default:
		data.Deliveries, data.NextCursor = deliveries.Deliveries, deliveries.NextCursor
	}
	audit, err := h.svc.FindAuditEntries(r.Context(), id, 100, "")
	if err != nil {
		h.internalError(w, r, sess, err)
		return
	}
	data.Audit = audit.Entries
	h.render(w, r, http.StatusOK, "detail", page{Title: b.Name, Session: sess, Data: data})
}

func (h *handler) handleProgress(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such broadcast"})
		return
	}
	b, err := h.svc.FindBroadcastByID(r.Context(), id)
	if err != nil {
		h.progressError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newBroadcastView(b).progress())
}

// maxPolled bounds how many broadcasts one progress request may ask for.
const maxPolled = 100

// handleProgressList answers GET /admin/progress.json?id=1&id=2: the list page
// refreshes every live row with one request.
func (h *handler) handleProgressList(w http.ResponseWriter, r *http.Request) {
	ids := r.URL.Query()["id"]
	if len(ids) > maxPolled {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "at most 100 ids"})
		return
	}
	out := struct {
		Broadcasts []progress `json:"broadcasts"`
	}{Broadcasts: []progress{}}
	for _, raw := range ids {
		id, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			continue
		}
		b, err := h.svc.FindBroadcastByID(r.Context(), id)
		if notifier.ErrorCode(err) == notifier.ENOTFOUND {
			continue
		}
		if err != nil {
			h.progressError(w, r, err)
			return
		}
		out.Broadcasts = append(out.Broadcasts, newBroadcastView(b).progress())
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) progressError(w http.ResponseWriter, r *http.Request, err error) {
	if notifier.ErrorCode(err) == notifier.ENOTFOUND {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such broadcast"})
		return
	}
	h.logger.ErrorContext(r.Context(), "admin progress failed", "err", err)
	writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "internal error"})
}

// confirm is the confirmation page's data.
type confirm struct {
	B       *broadcastView
	Action  string
	Allowed bool
	CSRF    string
}

func validAction(a string) bool {
	return a == notifier.ActionCancel || a == notifier.ActionPause || a == notifier.ActionResume
}

// handleConfirm shows what an action will do, and how many messages are still to
// go, before the operator confirms it with a POST to the same path.
func (h *handler) handleConfirm(w http.ResponseWriter, r *http.Request) {
	sess := sessionFrom(r.Context())
	action := r.PathValue("action")
	if !validAction(action) {
		h.handleNotFound(w, r)
		return
	}
	id, ok := h.broadcastID(w, r)
	if !ok {
		return
	}
	b, err := h.svc.FindBroadcastByID(r.Context(), id)
	if err != nil {
		h.serviceError(w, r, sess, err, "/admin/")
		return
	}
	v := newBroadcastView(b)
	data := confirm{B: v, Action: action, Allowed: slices.Contains(v.Actions, action), CSRF: sess.CSRF}
	status := http.StatusOK
	if !data.Allowed {
		status = http.StatusConflict
	}
	h.render(w, r, status, "confirm", page{Title: titleCase(action) + " " + b.Name, Session: sess, Data: data})
}

// handleControl does a confirmed action as the signed-in key, so the audit log
// names who did it.
func (h *handler) handleControl(w http.ResponseWriter, r *http.Request) {
	sess := sessionFrom(r.Context())
	r.Body = http.MaxBytesReader(w, r.Body, formLimit)
	action := r.PathValue("action")
	if !validAction(action) {
		h.handleNotFound(w, r)
		return
	}
	id, ok := h.broadcastID(w, r)
	if !ok {
		return
	}
	back := "/admin/broadcasts/" + strconv.FormatInt(id, 10)
	if err := h.checkPost(r, sess.CSRF); err != nil {
		h.logger.WarnContext(r.Context(), "admin action refused", "broadcast_id", id, "action", action,
			"key_name", sess.KeyName, "reason", err.Error())
		h.renderMessage(w, r, sess, http.StatusForbidden, "Request refused",
			"This form was expired or came from another site, so nothing was changed. Open the broadcast again and retry.", back)
		return
	}
	var err error
	switch action {
	case notifier.ActionCancel:
		_, err = h.svc.CancelBroadcast(r.Context(), sess.KeyName, id)
	case notifier.ActionPause:
		_, err = h.svc.PauseBroadcast(r.Context(), sess.KeyName, id)
	case notifier.ActionResume:
		_, err = h.svc.ResumeBroadcast(r.Context(), sess.KeyName, id)
	}
	if err != nil {
		h.serviceError(w, r, sess, err, back)
		return
	}
	http.Redirect(w, r, back+"?done="+action, http.StatusSeeOther)
}
