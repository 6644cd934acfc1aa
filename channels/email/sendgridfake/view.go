package sendgridfake

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

const (
	defaultViewLimit = 100
	maxViewLimit     = 10000
	snippetRunes     = 120
)

// newest returns up to limit retained messages, newest first.
func (s *Server) newest(limit int) (msgs []Message, total, requests int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := min(limit, len(s.msgs))
	if s.retain > 0 {
		n = min(n, s.retain)
	}
	msgs = make([]Message, n)
	for i := range n {
		msgs[i] = s.msgs[len(s.msgs)-1-i]
	}
	return msgs, s.count, len(s.reqs)
}

func viewLimit(r *http.Request) int {
	limit, err := strconv.Atoi(r.URL.Query().Get("limit"))
	if err != nil || limit <= 0 {
		return defaultViewLimit
	}
	return min(limit, maxViewLimit)
}

// handleMessagesJSON serves GET /_fake/messages?limit=N: accepted messages,
// newest first.
func (s *Server) handleMessagesJSON(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	msgs, _, _ := s.newest(viewLimit(r))
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(msgs) // the client may be gone; nothing to do
}

type pageRow struct {
	Time    string
	To      string
	Subject string
	Snippet string
}

// handlePage serves GET /_fake/: a page listing the newest emails, for a
// developer running `notifyd dev`.
func (s *Server) handlePage(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	msgs, total, requests := s.newest(viewLimit(r))
	rows := make([]pageRow, len(msgs))
	for i, m := range msgs {
		body := m.Text
		if body == "" {
			body = m.HTML
		}
		rows[i] = pageRow{
			Time:    m.ReceivedAt.Format(time.DateTime + ".000"),
			To:      m.To,
			Subject: m.Subject,
			Snippet: snippet(body),
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = s.page.Execute(w, struct {
		Total, Requests int
		Rows            []pageRow
	}{total, requests, rows})
}

func snippet(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= snippetRunes {
		return s
	}
	return string([]rune(s)[:snippetRunes]) + "…"
}

const pageHTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>SendGrid fake</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #ddd; vertical-align: top; }
td.t { white-space: nowrap; color: #555; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>SendGrid fake</h1>
<p>{{.Total}} emails accepted in {{.Requests}} requests. Newest first; JSON at <a href="/_fake/messages">/_fake/messages</a>.</p>
<table>
<tr><th>Received</th><th>To</th><th>Subject</th><th>Text</th></tr>
{{range .Rows}}<tr><td class="t">{{.Time}}</td><td>{{.To}}</td><td>{{.Subject}}</td><td>{{.Snippet}}</td></tr>
{{else}}<tr><td colspan="4">Nothing received yet.</td></tr>
{{end}}</table>
</body>
</html>
`
