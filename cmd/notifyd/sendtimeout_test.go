package main

import (
	"testing"
	"time"

	"github.com/notifyd/notifyd/channels/email/sendgridfake"
)

// NOTIFYD_SEND_TIMEOUT bounds a provider call in serve: with a SendGrid that
// answers after 20 s and a 1 s send timeout, the emails end unknown (the
// request may have reached SendGrid, so they are never resent) within seconds,
// not after the 30 s default.
func TestSendTimeoutBoundsAProviderCall(t *testing.T) {
	t.Parallel()
	e := startE2E(t, map[string]string{"NOTIFYD_SEND_TIMEOUT": "1s"})
	e.sendgrid.SetBehavior(sendgridfake.Behavior{Delay: 20 * time.Second})
	e.seed(t, "st", 3, "pro")
	body := broadcastBody("slow")
	body["channels"] = []string{"email"}
	status, _, out := e.call(t, "POST", "/v1/broadcasts", "slow-1", body)
	if status != 202 {
		t.Fatalf("create = %d %v", status, out)
	}
	created := time.Now()
	final := e.waitStatus(t, out["id"], "completed", 15*time.Second)
	if took := time.Since(created); took > 12*time.Second {
		t.Errorf("the broadcast took %s to finish with a 1 s send timeout", took)
	}
	if c := final["counts"].(map[string]any); c["unknown"] != float64(3) {
		t.Fatalf("counts = %v, want the 3 timed-out emails unknown", c)
	}
}
