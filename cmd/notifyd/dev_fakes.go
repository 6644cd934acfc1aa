package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/channels/email/sendgridfake"
	"github.com/notifyd/notifyd/channels/push/fcmfake"
	"github.com/notifyd/notifyd/notifier"
)

// devFakes are the fake providers `notifyd dev` runs in-process when no real
// provider is configured, so a first broadcast arrives somewhere visible.
type devFakes struct {
	SendGridURL, FCMURL string
	servers             []*http.Server
}

const (
	devSendGridKey = "SG.notifyd-dev"
	devFCMProject  = "notifyd-dev"
)

// startDevFakes starts a fake for each provider c leaves unconfigured and points
// c at it.
func startDevFakes(c *config) (*devFakes, error) {
	f := &devFakes{}
	serve := func(h http.Handler) (string, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		f.servers = append(f.servers, srv)
		go func() { _ = srv.Serve(ln) }()
		return "http://" + ln.Addr().String(), nil
	}
	if c.SendGridAPIKey == "" {
		fake := sendgridfake.New(devSendGridKey)
		fake.SetRetention(1000)
		url, err := serve(fake)
		if err != nil {
			return nil, err
		}
		f.SendGridURL = url
		c.SendGridAPIKey, c.SendGridBaseURL = devSendGridKey, url
		if c.EmailFrom == "" {
			c.EmailFrom = "notifyd-dev@example.com"
		}
	}
	if c.FCMProjectID == "" {
		url, err := serve(fcmfake.NewServer(devFCMProject))
		if err != nil {
			return nil, err
		}
		f.FCMURL = url
		c.FCMProjectID, c.FCMCredentials, c.FCMEndpoint = devFCMProject, "none", url+"/v1"
	}
	return f, nil
}

func (f *devFakes) Close() {
	for _, s := range f.servers {
		_ = s.Close()
	}
}

// demoPeople are loaded into an empty directory so a broadcast has an audience.
var demoPeople = []struct{ id, name, plan string }{
	{"ada", "Ada Lovelace", "pro"}, {"grace", "Grace Hopper", "pro"}, {"alan", "Alan Turing", "free"},
	{"katherine", "Katherine Johnson", "team"}, {"edsger", "Edsger Dijkstra", "free"}, {"barbara", "Barbara Liskov", "pro"},
	{"donald", "Donald Knuth", "team"}, {"margaret", "Margaret Hamilton", "pro"}, {"linus", "Linus Torvalds", "free"},
	{"radia", "Radia Perlman", "team"}, {"ken", "Ken Thompson", "free"}, {"frances", "Frances Allen", "pro"},
}

// loadDemoRecipients fills an empty directory with demo people, each with an
// email address and an Android device.
func loadDemoRecipients(ctx context.Context, pool *pgxpool.Pool, svc *notifier.Service) (int, error) {
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM recipients").Scan(&n); err != nil {
		return 0, err
	}
	if n > 0 {
		return 0, nil
	}
	var batch []notifier.RecipientInput
	for _, p := range demoPeople {
		batch = append(batch, notifier.RecipientInput{ID: p.id, Email: p.id + "@example.com", Locale: "en",
			Attributes: map[string]any{"name": p.name, "plan": p.plan}})
	}
	if _, err := svc.PutRecipients(ctx, batch); err != nil {
		return 0, err
	}
	var errs []error
	for _, p := range demoPeople {
		_, _, err := svc.PutDevice(ctx, p.id, "demo-token-"+p.id, notifier.DeviceInput{Platform: "android"})
		errs = append(errs, err)
	}
	return len(demoPeople), errors.Join(errs...)
}

func devBroadcastExample(base string) string {
	return fmt.Sprintf(`  curl -s -X POST %s/v1/broadcasts -H "Authorization: Bearer $NOTIFYD_KEY" -H "Idempotency-Key: hello-1" \
    -d '{"name":"hello","category":"news","segment":"all","channels":["email","push","inbox"],
         "email":{"subject":"Hello {{.Recipient.Attributes.name}}","text":"Hi {{.Recipient.Attributes.name}}!"},
         "push":{"title":"Hello","body":"Hi {{.Recipient.Attributes.name}}"},
         "inbox":{"title":"Welcome, {{.Recipient.Attributes.name}}"}}'
  curl -s %s/v1/broadcasts/1 -H "Authorization: Bearer $NOTIFYD_KEY"`, base, base)
}
