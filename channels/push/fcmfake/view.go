package fcmfake

import (
	"encoding/json"
	"net/http"
	"strconv"
)

const (
	defaultViewLimit = 100
	maxViewLimit     = 10000
)

// newest returns up to limit accepted messages, newest first, and the total count.
func (s *Server) newest(limit int) ([]Message, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := len(s.msgs)
	n := min(limit, kept)
	out := make([]Message, n)
	for i := range n {
		out[i] = s.msgs[kept-1-i]
	}
	return out, s.count
}

func viewLimit(r *http.Request) (int, bool) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return defaultViewLimit, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, false
	}
	return min(n, maxViewLimit), true
}

// handleMessagesJSON answers GET /_fake/messages?limit=N with
// {"count": total, "messages": [newest first]}.
func (s *Server) handleMessagesJSON(w http.ResponseWriter, r *http.Request) {
	limit, ok := viewLimit(r)
	if !ok {
		http.Error(w, "limit must be a positive integer", http.StatusBadRequest)
		return
	}
	msgs, total := s.newest(limit)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(struct {
		Count    int       `json:"count"`
		Messages []Message `json:"messages"`
	}{total, msgs})
}

// pageHTML is parsed once per Server (see NewServer).
const pageHTML = `<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="3">
<title>fcmfake: {{.Count}} pushes</title>
<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
code{font-size:.85em}</style></head>
<body><h1>Fake FCM: project {{.Project}}</h1>
<p>{{.Count}} pushes received; newest {{len .Messages}} shown. JSON: <a href="messages">/_fake/messages</a></p>
<table><tr><th>received</th><th>token</th><th>title</th><th>body</th><th>data</th><th>name</th></tr>
{{range .Messages}}<tr><td>{{.End.Format "15:04:05.000"}}</td><td><code>{{.Token}}</code></td>
<td>{{.Title}}</td><td>{{.Body}}</td><td>{{range $k, $v := .Data}}<code>{{$k}}={{$v}}</code><br>{{end}}</td>
<td><code>{{.Name}}</code></td></tr>
{{end}}</table></body></html>
`

// handleMessagesHTML answers GET /_fake/ with a page of the newest pushes.
func (s *Server) handleMessagesHTML(w http.ResponseWriter, r *http.Request) {
	limit, ok := viewLimit(r)
	if !ok {
		http.Error(w, "limit must be a positive integer", http.StatusBadRequest)
		return
	}
	msgs, total := s.newest(limit)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	s.page.Execute(w, struct {
		Project  string
		Count    int
		Messages []Message
	}{s.projectID, total, msgs})
}
