package adminui

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd/notifier"
)

// pages holds one template set per page: the layout plus the page's own file.
type pages struct {
	byName map[string]*template.Template
}

var pageNames = []string{"signin", "list", "detail", "confirm", "message"}

func mustParsePages() *pages {
	funcs := template.FuncMap{
		"num":      formatNum,
		"time":     formatTime,
		"ago":      formatAgo,
		"title":    titleCase,
		"pct":      func(f float64) string { return strconv.FormatFloat(f, 'f', 3, 64) },
		"deref":    func(t *time.Time) time.Time { return *t },
		"actionOk": func(actions []string, a string) bool { return slices.Contains(actions, a) },
		"allActions": func() []string {
			return []string{notifier.ActionPause, notifier.ActionResume, notifier.ActionCancel}
		},
		"chan": func(b *broadcastView, name string) notifier.ChannelCounts { return b.Channels[name] },
	}
	p := &pages{byName: map[string]*template.Template{}}
	for _, name := range pageNames {
		t := template.Must(template.New("layout.html").Funcs(funcs).ParseFS(templateFS,
			"templates/layout.html", "templates/bars.html", "templates/"+name+".html"))
		p.byName[name] = t
	}
	return p
}

// page is what every template gets.
type page struct {
	Title   string
	Session *session
	// Poll is the refresh interval in milliseconds for the page's script.
	Poll int64
	Data any
}

// render executes a page into a buffer first, so a template error never sends
// half a page.
func (h *handler) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	p.Poll = h.opts.PollInterval.Milliseconds()
	var buf bytes.Buffer
	if err := h.pages.byName[name].Execute(&buf, p); err != nil {
		h.logger.ErrorContext(r.Context(), "admin page failed to render", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// message shows a page with just a heading and a sentence (errors, refusals).
type message struct {
	Heading string
	Text    string
	Back    string
}

func (h *handler) renderMessage(w http.ResponseWriter, r *http.Request, sess *session, status int, heading, text, back string) {
	h.render(w, r, status, "message", page{Title: heading, Session: sess, Data: message{Heading: heading, Text: text, Back: back}})
}

// Segments of a progress bar, in the order they are stacked.
var segmentOrder = []struct{ Key, Label string }{
	{"sent", "sent"},
	{"failed", "failed"},
	{"suppressed", "suppressed"},
	{"unknown", "unknown"},
	{"cancelled", "cancelled"},
	{"pending", "pending"},
}

// barView is one stacked progress bar: a channel's deliveries, or all of them.
type barView struct {
	Name     string    `json:"name"` // "all" or the channel
	Total    int64     `json:"total"`
	Done     int64     `json:"done"` // everything but pending and sending
	DonePct  float64   `json:"done_pct"`
	Segments []segView `json:"segments"`
}

// segView is one segment; X and W are percentages of the bar's width.
type segView struct {
	Key   string  `json:"key"`
	Label string  `json:"label"`
	N     int64   `json:"n"`
	X     float64 `json:"x"`
	W     float64 `json:"w"`
}

func newBar(name string, c notifier.ChannelCounts) barView {
	n := map[string]int64{
		"sent": c.Sent, "failed": c.Failed, "suppressed": c.Suppressed, "unknown": c.Unknown,
		"cancelled": c.Cancelled, "pending": c.Pending + c.Sending,
	}
	b := barView{Name: name, Total: c.Deliveries, Done: c.Deliveries - c.Pending - c.Sending}
	if b.Total > 0 {
		b.DonePct = 100 * float64(b.Done) / float64(b.Total)
	}
	x := 0.0
	for _, s := range segmentOrder {
		seg := segView{Key: s.Key, Label: s.Label, N: n[s.Key], X: x}
		if b.Total > 0 {
			seg.W = 100 * float64(seg.N) / float64(b.Total)
		}
		x += seg.W
		b.Segments = append(b.Segments, seg)
	}
	return b
}

// broadcastView is a broadcast with what the pages show about its progress.
type broadcastView struct {
	*notifier.Broadcast
	Overall  barView
	Bars     []barView // one per channel
	ToGo     int64     // pending + sending
	Actions  []string  // the actions its status allows
	Live     bool      // it can still change, so the page polls it
	Audience string
}

func newBroadcastView(b *notifier.Broadcast) *broadcastView {
	v := &broadcastView{Broadcast: b, ToGo: b.Counts.Pending + b.Counts.Sending, Actions: actionsFor(b.Status), Live: isLive(b.Status)}
	c := b.Counts
	v.Overall = newBar("all", notifier.ChannelCounts{Deliveries: c.Deliveries, Pending: c.Pending, Sending: c.Sending, Sent: c.Sent,
		Failed: c.Failed, Suppressed: c.Suppressed, Cancelled: c.Cancelled, Unknown: c.Unknown})
	for _, ch := range b.ChannelNames {
		v.Bars = append(v.Bars, newBar(ch, b.Channels[ch]))
	}
	switch {
	case b.Segment != "":
		v.Audience = "segment " + b.Segment
	default:
		v.Audience = "explicit list"
	}
	return v
}

// progress is the JSON the page's script polls.
type progress struct {
	ID       int64                             `json:"id"`
	Status   string                            `json:"status"`
	Live     bool                              `json:"live"`
	ToGo     int64                             `json:"to_go"`
	Actions  []string                          `json:"actions"`
	Counts   notifier.Counts                   `json:"counts"`
	Channels map[string]notifier.ChannelCounts `json:"channels"`
	Bars     []barView                         `json:"bars"` // "all" first, then each channel
}

func (v *broadcastView) progress() progress {
	return progress{ID: v.ID, Status: v.Status, Live: v.Live, ToGo: v.ToGo, Actions: v.Actions, Counts: v.Counts,
		Channels: v.Channels, Bars: append([]barView{v.Overall}, v.Bars...)}
}

// actionsFor lists the operator actions that change a broadcast in this status
// (the state machine of notifier's control.go).
func actionsFor(status string) []string {
	switch status {
	case notifier.StatusScheduled, notifier.StatusExpanding, notifier.StatusSending:
		return []string{notifier.ActionPause, notifier.ActionCancel}
	case notifier.StatusPaused:
		return []string{notifier.ActionResume, notifier.ActionCancel}
	}
	return []string{}
}

// isLive reports whether a broadcast in this status can still change.
func isLive(status string) bool {
	return status != notifier.StatusCompleted && status != notifier.StatusCancelled && status != notifier.StatusFailed
}

func formatNum(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func formatAgo(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d/time.Hour))
	}
	return fmt.Sprintf("%d days ago", int(d/(24*time.Hour)))
}

func titleCase(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
