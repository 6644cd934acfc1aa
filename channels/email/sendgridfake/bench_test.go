package sendgridfake_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/notifyd/notifyd/channels/email/sendgridfake"
)

// BenchmarkAccept1000 measures the fake alone: one 1000-personalization request
// with per-recipient bodies in substitutions, served in-process.
func BenchmarkAccept1000(b *testing.B) {
	type p struct {
		To            []map[string]string `json:"to"`
		Subject       string              `json:"subject"`
		Headers       map[string]string   `json:"headers"`
		Substitutions map[string]string   `json:"substitutions"`
		CustomArgs    map[string]string   `json:"custom_args"`
	}
	ps := make([]p, 1000)
	for i := range ps {
		body := strings.Repeat("Personal news. ", 40) + fmt.Sprint(i)
		ps[i] = p{
			To:            []map[string]string{{"email": fmt.Sprintf("user%d@example.com", i)}},
			Subject:       fmt.Sprintf("Hello %d", i),
			Headers:       map[string]string{"List-Unsubscribe": fmt.Sprintf("<https://n.example.com/u/%d>", i)},
			Substitutions: map[string]string{"-t-": body, "-h-": "<p>" + body + "</p>"},
			CustomArgs:    map[string]string{"notifyd_delivery_id": fmt.Sprint(i), "notifyd_broadcast_id": "1"},
		}
	}
	body, err := json.Marshal(map[string]any{
		"from":             map[string]string{"email": "news@example.com"},
		"personalizations": ps,
		"content":          []map[string]string{{"type": "text/plain", "value": "-t-"}, {"type": "text/html", "value": "-h-"}},
	})
	if err != nil {
		b.Fatal(err)
	}
	fake := sendgridfake.New(testKey)
	fake.SetRetention(1000)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v3/mail/send", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testKey)
		w := httptest.NewRecorder()
		fake.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "msgs/s")
}
