// Package adminui is notifyd's admin web page, served under /admin/: an operator
// signs in with an API key of scope admin, watches broadcasts progress live, and
// cancels, pauses or resumes them. Pages are rendered on the server with
// html/template; the CSS, the small script that refreshes the progress bars and
// the templates are embedded, so nothing is loaded from elsewhere, and every page
// works without JavaScript (just not live).
//
// Sessions are stored in Postgres (table admin_sessions, only a hash of the
// cookie's secret); every POST carries a per-session CSRF token and is refused
// when it comes from another origin.
package adminui

import (
	"embed"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/notifier"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Opts are the optional settings of the admin page.
type Opts struct {
	// SessionTTL is how long a sign-in lasts; default 12 hours.
	SessionTTL time.Duration
	// PageSize is how many broadcasts the list shows at once; default 20.
	PageSize int
	// DeliveryPageSize is how many deliveries the detail page shows; default 50.
	DeliveryPageSize int
	// PollInterval is how often the page's script refreshes progress; default 2 s.
	PollInterval time.Duration
}

type handler struct {
	svc         *notifier.Service
	pool        *pgxpool.Pool
	logger      *slog.Logger
	opts        Opts
	pages       *pages
	crossOrigin *http.CrossOriginProtection
}

// New returns the admin page. It serves paths under /admin/ (mount it there:
// notifier.ServerOpts.Admin) and needs the admin_sessions table.
func New(svc *notifier.Service, logger *slog.Logger, opts *Opts) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h := &handler{svc: svc, pool: svc.Pool(), logger: logger, pages: mustParsePages(),
		crossOrigin: http.NewCrossOriginProtection()}
	if opts != nil {
		h.opts = *opts
	}
	if h.opts.SessionTTL <= 0 {
		h.opts.SessionTTL = 12 * time.Hour
	}
	if h.opts.PageSize <= 0 {
		h.opts.PageSize = 20
	}
	if h.opts.DeliveryPageSize <= 0 {
		h.opts.DeliveryPageSize = 50
	}
	if h.opts.PollInterval <= 0 {
		h.opts.PollInterval = 2 * time.Second
	}
	return securityHeaders(h.routes())
}

// routes lists every path of the admin page.
func (h *handler) routes() http.Handler {
	static, _ := fs.Sub(staticFS, "static")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/{$}", h.handleIndex)
	mux.HandleFunc("GET /admin/signin", redirectTo("/admin/"))
	mux.HandleFunc("POST /admin/signin", h.handleSignIn)
	mux.HandleFunc("POST /admin/signout", h.handleSignOut)
	mux.HandleFunc("GET /admin/progress.json", h.requireSessionJSON(h.handleProgressList))
	mux.HandleFunc("GET /admin/broadcasts/{id}", h.requireSession(h.handleDetail))
	mux.HandleFunc("GET /admin/broadcasts/{id}/progress.json", h.requireSessionJSON(h.handleProgress))
	// The same path shows the confirmation (GET) and does the action (POST).
	mux.HandleFunc("GET /admin/broadcasts/{id}/{action}", h.requireSession(h.handleConfirm))
	mux.HandleFunc("POST /admin/broadcasts/{id}/{action}", h.requireSession(h.handleControl))
	mux.Handle("GET /admin/static/", http.StripPrefix("/admin/static/", staticFiles(http.FS(static))))
	mux.HandleFunc("/admin/", h.handleNotFound)
	return mux
}

// securityHeaders forbids everything the pages do not need: no inline script or
// style, no framing, no other origin.
func securityHeaders(next http.Handler) http.Handler {
	const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
		"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hdr := w.Header()
		hdr.Set("Content-Security-Policy", csp)
		hdr.Set("X-Content-Type-Options", "nosniff")
		hdr.Set("X-Frame-Options", "DENY")
		hdr.Set("Referrer-Policy", "same-origin")
		next.ServeHTTP(w, r)
	})
}

func staticFiles(files http.FileSystem) http.Handler {
	fileServer := http.FileServer(files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Assets change only with the binary; an hour of caching is plenty.
		if r.URL.Path == "" || strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r) // no directory listings
			return
		}
		w.Header().Set("Cache-Control", "public, max-age=3600")
		fileServer.ServeHTTP(w, r)
	})
}

func redirectTo(path string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, path, http.StatusSeeOther) }
}
