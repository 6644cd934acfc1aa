package main

import (
	"testing"
	"time"

	"github.com/notifyd/notifyd/channels/push/fcmfake"
)

// Each channel's broadcast deliveries have their own queue and workers: with
// FCM answering every request after 2 s, one bulk worker per channel, and push
// batches taking 20 s each, the emails of a broadcast created after a push
// broadcast go out at once instead of waiting their turn behind its batches.
func TestSlowPushDoesNotHoldBackEmail(t *testing.T) {
	t.Parallel()
	e := startE2E(t, map[string]string{"NOTIFYD_BULK_WORKERS": "1"})
	e.fcm.SetBehavior(fcmfake.Behavior{Delay: 2 * time.Second})
	const n = 1500 // 2 email batches, 3 push batches of 500 (10 rounds of 50 each)
	e.seed(t, "q", n, "pro")
	var ids []any
	for _, channel := range []string{"push", "email"} {
		body := broadcastBody("only " + channel)
		body["channels"] = []string{channel}
		status, _, out := e.call(t, "POST", "/v1/broadcasts", "slow-push-"+channel, body)
		if status != 202 {
			t.Fatalf("create = %d %v", status, out)
		}
		if channel == "push" {
			// Its batches are queued before the email broadcast exists.
			e.waitStatus(t, out["id"], "sending", 15*time.Second)
		}
		ids = append(ids, out["id"])
	}
	deadline := time.Now().Add(15 * time.Second)
	for e.sendgrid.Count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d emails sent after 15 s while push was slow (push: %d)", e.sendgrid.Count(), n, e.fcm.Count())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The first push batch alone takes 20 s: the emails did not wait for it.
	if pushed := e.fcm.Count(); pushed >= 500 {
		t.Fatalf("push had sent %d messages when the emails were done: the test did not slow push enough", pushed)
	}
	e.fcm.SetBehavior(fcmfake.Behavior{})
	for _, id := range ids {
		e.waitStatus(t, id, "completed", time.Minute)
	}
}
