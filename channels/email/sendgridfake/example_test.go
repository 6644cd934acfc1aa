package sendgridfake_test

import (
	"context"
	"fmt"

	"github.com/notifyd/notifyd/channels/email"
	"github.com/notifyd/notifyd/channels/email/sendgridfake"
	"github.com/notifyd/notifyd/notifier"
)

// The fake serves the real Sender, as `notifyd dev` would run it; the emails
// that arrived are listed at baseURL + "/_fake/".
func ExampleServer_Listen() {
	fake := sendgridfake.New("SG.dev")
	baseURL, closeFn, err := fake.Listen("127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer closeFn()

	sender, err := email.New(email.Config{APIKey: "SG.dev", BaseURL: baseURL, From: "Example <news@example.com>"})
	if err != nil {
		panic(err)
	}
	results := sender.Send(context.Background(), []notifier.Message{{
		DeliveryID: 1, NotificationID: 1,
		Email: &notifier.EmailMessage{To: "ann@example.com", Subject: "Welcome", Text: "Hello Ann"},
	}})
	fmt.Println(results[0].Err, fake.Count())
	m := fake.Messages()[0]
	fmt.Println(m.To, m.Subject, m.Text, m.CustomArgs["notifyd_delivery_id"])
	// Output:
	// <nil> 1
	// ann@example.com Welcome Hello Ann 1
}
