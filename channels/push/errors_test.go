package push

import (
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/notifyd/notifyd/notifier"
)

func TestMerge(t *testing.T) {
	t.Parallel()

	unregistered := &notifier.SendError{Class: notifier.Permanent, Reason: "UNREGISTERED"}
	invalid := &notifier.SendError{Class: notifier.Permanent, Reason: "INVALID_ARGUMENT"}
	internal := &notifier.SendError{Class: notifier.Transient, Reason: "INTERNAL"}
	limited := &notifier.SendError{Class: notifier.RateLimited, Reason: "QUOTA_EXCEEDED", RetryAfter: 3 * time.Second}

	tests := []struct {
		name string
		outs []outcome
		want notifier.SendResult
	}{
		{
			name: "first accepted names the delivery",
			outs: []outcome{{err: internal}, {name: "projects/p/messages/2"}, {name: "projects/p/messages/3"}},
			want: notifier.SendResult{DeliveryID: 1, ProviderID: "projects/p/messages/2"},
		},
		{
			name: "sent with a dead token",
			outs: []outcome{{err: unregistered}, {name: "projects/p/messages/2"}},
			want: notifier.SendResult{DeliveryID: 1, ProviderID: "projects/p/messages/2", DeadTokens: []string{"t0"}},
		},
		{
			name: "transient beats permanent",
			outs: []outcome{{err: unregistered}, {err: internal}},
			want: notifier.SendResult{DeliveryID: 1, Err: internal, DeadTokens: []string{"t0"}},
		},
		{
			name: "rate limit beats transient",
			outs: []outcome{{err: internal}, {err: limited}},
			want: notifier.SendResult{DeliveryID: 1, Err: limited},
		},
		{
			name: "all permanent keeps the first reason",
			outs: []outcome{{err: invalid}, {err: unregistered}},
			want: notifier.SendResult{DeliveryID: 1, Err: invalid, DeadTokens: []string{"t1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			jobs := make([]job, len(tt.outs))
			for i := range jobs {
				jobs[i] = job{token: "t" + string(rune('0'+i))}
			}
			got := merge(notifier.SendResult{DeliveryID: 1}, jobs, tt.outs)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("merge() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	tests := []struct {
		header string
		want   time.Duration
	}{
		{"", 0},
		{"7", 7 * time.Second},
		{"0", 0},
		{"-3", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
	}
	for _, tt := range tests {
		if got := retryAfter(tt.header, now); got != tt.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tt.header, got, tt.want)
		}
	}
}
