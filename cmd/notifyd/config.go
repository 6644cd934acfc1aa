package main

import (
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd/notifier"
	"github.com/notifyd/notifyd/queue"
)

// config is every setting of notifyd. Each flag also reads an environment
// variable; the flag wins. The table in README.md lists them all.
type config struct {
	DatabaseURL        string
	Addr               string
	Role               string
	SendGridAPIKey     string
	SendGridBaseURL    string
	EmailFrom          string
	FCMProjectID       string
	FCMCredentials     string
	FCMEndpoint        string
	EmailRate          float64
	PushRate           float64
	SendGridWebhookKey string
	Secret             string
	PublicURL          string
	RequiredCategories string
	FrequencyCaps      string
	LogFormat          string
	BulkWorkers        int
	PprofAddr          string
	InboxRetention     time.Duration
	EventRetention     time.Duration
	ShutdownTimeout    time.Duration
	SendTimeout        time.Duration
	RescueAfter        time.Duration
	// envErrs are environment values that do not parse (validate reports
	// them): a typo in a variable must not silently become the default.
	envErrs []error
	// ephemeralSecret: without NOTIFYD_SECRET, sign links with a random secret
	// for the life of the process. Only `notifyd dev`, where the process that
	// signs a link is the one that verifies it.
	ephemeralSecret bool
}

// setting describes one flag and its environment variable.
type setting struct {
	flag, env, usage string
}

// bindConfig registers the flags named in which (all when empty) on fs, with
// defaults from the environment.
func bindConfig(fs *flag.FlagSet, getenv func(string) string, c *config) {
	str := func(p *string, name, env, def, usage string) {
		if v := getenv(env); v != "" {
			def = v
		}
		fs.StringVar(p, name, def, usage+" ("+env+")")
	}
	num := func(p *float64, name, env string, def float64, usage string) {
		if raw := getenv(env); raw != "" {
			v, err := strconv.ParseFloat(raw, 64)
			if err != nil {
				c.envErrs = append(c.envErrs, fmt.Errorf("%s must be a number, not %q", env, raw))
			} else {
				def = v
			}
		}
		fs.Float64Var(p, name, def, usage+" ("+env+")")
	}
	str(&c.DatabaseURL, "database-url", "DATABASE_URL", "", "PostgreSQL connection URL")
	str(&c.Addr, "addr", "NOTIFYD_ADDR", ":8080", "HTTP listen address")
	str(&c.Role, "role", "NOTIFYD_ROLE", "all", "what this process runs: all, api or worker")
	str(&c.SendGridAPIKey, "sendgrid-api-key", "NOTIFYD_SENDGRID_API_KEY", "", "SendGrid API key")
	str(&c.SendGridBaseURL, "sendgrid-base-url", "NOTIFYD_SENDGRID_BASE_URL", "https://api.sendgrid.com", "SendGrid API base URL, no path")
	str(&c.EmailFrom, "email-from", "NOTIFYD_EMAIL_FROM", "", "sender address of emails")
	str(&c.FCMProjectID, "fcm-project-id", "NOTIFYD_FCM_PROJECT_ID", "", "Firebase project id")
	str(&c.FCMCredentials, "fcm-credentials", "NOTIFYD_FCM_CREDENTIALS", "", `service-account JSON file, or "none" for fakes and emulators`)
	str(&c.FCMEndpoint, "fcm-endpoint", "NOTIFYD_FCM_ENDPOINT", "https://fcm.googleapis.com/v1", "FCM endpoint, as option.WithEndpoint takes it")
	num(&c.EmailRate, "email-rate", "NOTIFYD_EMAIL_RATE", 1000, "emails per second, all processes together")
	num(&c.PushRate, "push-rate", "NOTIFYD_PUSH_RATE", 1000, "push messages per second, all processes together")
	str(&c.SendGridWebhookKey, "sendgrid-webhook-key", "NOTIFYD_SENDGRID_WEBHOOK_KEY", "", "base64 public key of SendGrid's signed event webhook")
	str(&c.Secret, "secret", "NOTIFYD_SECRET", "", "secret that signs unsubscribe links")
	str(&c.PublicURL, "public-url", "NOTIFYD_PUBLIC_URL", "", "base URL that links in messages point to")
	str(&c.RequiredCategories, "required-categories", "NOTIFYD_REQUIRED_CATEGORIES", "security,legal", "comma-separated categories nobody can opt out of")
	str(&c.PprofAddr, "pprof-addr", "NOTIFYD_PPROF_ADDR", "", "listen address for net/http/pprof, e.g. 127.0.0.1:6060 (off when empty)")
	str(&c.FrequencyCaps, "frequency-caps", "NOTIFYD_FREQUENCY_CAPS", "", "per-category caps per recipient and channel, e.g. marketing=3/24h,news=10/168h")
	str(&c.LogFormat, "log-format", "NOTIFYD_LOG_FORMAT", "json", "log format: json or text")
	// A batch's provider call is a wait: with 4 workers per channel, email
	// reached 16,000/s beside push on 2 cores, with 8 over 20,000/s
	// (docs/benchmarks.md, "Broadcast pipeline"). The pool grows with it.
	workers := 8
	if raw := getenv("NOTIFYD_BULK_WORKERS"); raw != "" {
		v, err := strconv.Atoi(raw)
		if err != nil {
			c.envErrs = append(c.envErrs, fmt.Errorf("NOTIFYD_BULK_WORKERS must be a whole number, not %q", raw))
		} else {
			workers = v
		}
	}
	fs.IntVar(&c.BulkWorkers, "bulk-workers", workers, "broadcast delivery batches worked at once per channel per process (NOTIFYD_BULK_WORKERS)")
	durFlag := func(p *time.Duration, name, env string, def time.Duration, usage string) {
		if raw := getenv(env); raw != "" {
			v, err := time.ParseDuration(raw)
			if err != nil {
				c.envErrs = append(c.envErrs, fmt.Errorf("%s must be a duration like 30s or 2m, not %q", env, raw))
			} else {
				def = v
			}
		}
		fs.DurationVar(p, name, def, usage+" ("+env+")")
	}
	durFlag(&c.InboxRetention, "inbox-retention", "NOTIFYD_INBOX_RETENTION", 90*24*time.Hour, "delete inbox items older than this; 0 keeps them")
	durFlag(&c.EventRetention, "event-retention", "NOTIFYD_EVENT_RETENTION", 30*24*time.Hour, "delete provider webhook events older than this; 0 keeps them")
	durFlag(&c.ShutdownTimeout, "shutdown-timeout", "NOTIFYD_SHUTDOWN_TIMEOUT", 30*time.Second, "how long SIGTERM waits for in-flight requests and jobs")
	durFlag(&c.SendTimeout, "send-timeout", "NOTIFYD_SEND_TIMEOUT", queue.DefaultSendTimeout,
		"bounds one provider call; a claim never recorded is swept to unknown 2x this + 30s after it")
	durFlag(&c.RescueAfter, "rescue-after", "NOTIFYD_RESCUE_AFTER", queue.DefaultRescueAfter,
		"re-run the jobs of a worker that died after this; at least 2x the send timeout + 1m")
}

// validate checks the settings a serving process needs, naming the variable at fault.
func (c *config) validate() error {
	errs := append([]error(nil), c.envErrs...)
	if c.Role != "all" && c.Role != "api" && c.Role != "worker" {
		errs = append(errs, fmt.Errorf("NOTIFYD_ROLE (--role) must be all, api or worker, not %q", c.Role))
	}
	if u, err := url.Parse(c.SendGridBaseURL); err != nil || u.Scheme == "" || u.Host == "" || strings.Trim(u.Path, "/") != "" {
		errs = append(errs, fmt.Errorf("NOTIFYD_SENDGRID_BASE_URL must be scheme://host with no path, not %q", c.SendGridBaseURL))
	}
	if c.EmailRate <= 0 {
		errs = append(errs, errors.New("NOTIFYD_EMAIL_RATE must be a positive number of messages per second"))
	}
	if c.PushRate <= 0 {
		errs = append(errs, errors.New("NOTIFYD_PUSH_RATE must be a positive number of messages per second"))
	}
	if c.PublicURL != "" {
		if u, err := url.Parse(c.PublicURL); err != nil || u.Scheme == "" || u.Host == "" {
			errs = append(errs, fmt.Errorf("NOTIFYD_PUBLIC_URL must be an absolute URL like https://notify.example.com, not %q", c.PublicURL))
		}
	}
	if c.Secret != "" && len(c.Secret) < minSecretLen {
		errs = append(errs, fmt.Errorf("NOTIFYD_SECRET must be at least %d characters (random, e.g. openssl rand -base64 32)", minSecretLen))
	}
	if c.SendGridWebhookKey != "" {
		if _, err := notifier.ParseSendGridWebhookKey(c.SendGridWebhookKey); err != nil {
			errs = append(errs, fmt.Errorf("NOTIFYD_SENDGRID_WEBHOOK_KEY must be the base64 ECDSA public key SendGrid shows for the signed event webhook: %v", err))
		}
	}
	if _, err := notifier.ParseFrequencyCaps(c.FrequencyCaps); err != nil {
		errs = append(errs, fmt.Errorf("NOTIFYD_FREQUENCY_CAPS: %v", err))
	}
	if c.InboxRetention < 0 || c.EventRetention < 0 {
		errs = append(errs, errors.New("NOTIFYD_INBOX_RETENTION and NOTIFYD_EVENT_RETENTION must be 0 (keep) or a positive duration"))
	}
	if c.BulkWorkers < 1 || c.BulkWorkers > 1000 {
		errs = append(errs, fmt.Errorf("NOTIFYD_BULK_WORKERS must be 1 to 1000, not %d", c.BulkWorkers))
	}
	if c.SendTimeout < time.Second || c.SendTimeout > 10*time.Minute {
		errs = append(errs, fmt.Errorf("NOTIFYD_SEND_TIMEOUT must be 1s to 10m, not %s", c.SendTimeout))
	} else if minRescue := queue.MinRescueAfter(c.SendTimeout); c.RescueAfter < minRescue {
		// A shorter rescue would re-run jobs that are still running (see
		// queue.MinRescueAfter).
		errs = append(errs, fmt.Errorf("NOTIFYD_RESCUE_AFTER must be at least %s (2x NOTIFYD_SEND_TIMEOUT + 1m, the longest a job can run), not %s",
			minRescue, c.RescueAfter))
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		errs = append(errs, fmt.Errorf("NOTIFYD_LOG_FORMAT must be json or text, not %q", c.LogFormat))
	}
	return errors.Join(errs...)
}

// minSecretLen is the shortest NOTIFYD_SECRET accepted: 256 bits of base64.
const minSecretLen = 32

// validateLinks checks what `notifyd serve` needs for unsubscribe links: every
// email carries one, so with the email channel configured NOTIFYD_SECRET and
// NOTIFYD_PUBLIC_URL are required. (`notifyd dev` makes both up; see linkOpts.)
func (c *config) validateLinks() error {
	if c.SendGridAPIKey == "" {
		return nil
	}
	var missing string
	switch {
	case c.Secret == "" && c.PublicURL == "":
		missing = "NOTIFYD_SECRET and NOTIFYD_PUBLIC_URL are"
	case c.Secret == "":
		missing = "NOTIFYD_SECRET is"
	case c.PublicURL == "":
		missing = "NOTIFYD_PUBLIC_URL is"
	default:
		return nil
	}
	return fmt.Errorf("%s required with the email channel (NOTIFYD_SENDGRID_API_KEY is set): every email carries a one-click unsubscribe link "+
		"signed with NOTIFYD_SECRET (%d or more random characters) that points at NOTIFYD_PUBLIC_URL (e.g. https://notify.example.com)",
		missing, minSecretLen)
}

// linkOpts sets the ServiceOpts of unsubscribe links and of the SendGrid webhook.
// Without NOTIFYD_SECRET, dev signs links with a random secret that lasts as
// long as the process; serve (a process without email: validateLinks requires
// the secret with it) signs none and answers /unsubscribe with 503, since a
// made-up secret would call every worker's link forged. Without
// NOTIFYD_PUBLIC_URL links point at ln, the API's listener (nil when this
// process serves no API).
func (c *config) linkOpts(opts *notifier.ServiceOpts, ln net.Listener, logger *slog.Logger) error {
	opts.Secret = []byte(c.Secret)
	switch {
	case c.Secret != "":
	case c.ephemeralSecret:
		opts.Secret = make([]byte, minSecretLen)
		if _, err := rand.Read(opts.Secret); err != nil {
			return err
		}
		logger.Warn("NOTIFYD_SECRET is not set: unsubscribe links are signed with a random secret and stop working when this process stops")
	case ln != nil:
		logger.Warn("NOTIFYD_SECRET is not set: /unsubscribe answers 503 on this process; give it the NOTIFYD_SECRET of the processes that send email")
	}
	opts.PublicURL = c.PublicURL
	if opts.PublicURL == "" && ln != nil {
		host, port, err := net.SplitHostPort(ln.Addr().String())
		if err != nil {
			return err
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			host = "localhost"
		}
		opts.PublicURL = "http://" + net.JoinHostPort(host, port)
		logger.Warn("NOTIFYD_PUBLIC_URL is not set: links in messages point at this process", "public_url", opts.PublicURL)
	}
	if c.SendGridWebhookKey != "" {
		key, err := notifier.ParseSendGridWebhookKey(c.SendGridWebhookKey)
		if err != nil {
			return fmt.Errorf("NOTIFYD_SENDGRID_WEBHOOK_KEY: %w", err)
		}
		opts.SendGridWebhookKey = key
	}
	return nil
}

func (c *config) requiredCategories() []string {
	var out []string
	for _, c := range strings.Split(c.RequiredCategories, ",") {
		if c = strings.TrimSpace(c); c != "" {
			out = append(out, c)
		}
	}
	return out
}
