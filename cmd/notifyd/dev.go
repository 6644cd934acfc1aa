package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/notifyd/notifyd/migrations"
	"github.com/notifyd/notifyd/migrations/localpg"
	"github.com/notifyd/notifyd/notifier"
)

const devDatabase = "notifyd_dev"

// runDev sets up everything for a first look with no configuration: a database
// (DATABASE_URL, else a local server, else a throwaway cluster in ./.notifyd/),
// the schema, an admin key, and the service. Ctrl-C stops all it started.
func runDev(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c, fs, err := parseConfig("dev", args, getenv, stderr)
	if err != nil {
		return err
	}
	if !flagSet(fs, "log-format") && getenv("NOTIFYD_LOG_FORMAT") == "" {
		c.LogFormat = "text"
	}
	c.Role = "all"
	c.ephemeralSecret = true
	if err := c.validate(); err != nil {
		return err
	}
	logger := newLogger(c.LogFormat, stderr)

	databaseURL := c.DatabaseURL
	if databaseURL == "" {
		databaseURL = findLocalServer(ctx, getenv)
	}
	if databaseURL == "" {
		dir, err := filepath.Abs(".notifyd")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "starting a throwaway PostgreSQL in %s ...\n", dir)
		cluster, err := localpg.Start(ctx, filepath.Join(dir, "pg"), localpg.Options{})
		if err != nil {
			return err
		}
		defer func() {
			fmt.Fprintln(stdout, "stopping PostgreSQL")
			_ = cluster.Stop()
		}()
		databaseURL = cluster.URL("postgres")
	}
	databaseURL, err = ensureDatabase(ctx, databaseURL, devDatabase)
	if err != nil {
		return err
	}
	pool, err := openSizedDB(ctx, databaseURL, poolConnsFor(c))
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrations.Migrate(ctx, pool); err != nil {
		return err
	}
	fakes, err := startDevFakes(c)
	if err != nil {
		return err
	}
	defer fakes.Close()
	svc := notifier.NewService(pool, logger, nil)
	demo, err := loadDemoRecipients(ctx, pool, svc)
	if err != nil {
		return err
	}
	_, secret, err := svc.CreateAPIKey(ctx, "dev-"+time.Now().UTC().Format("20060102T150405.000"), []string{notifier.ScopeSend, notifier.ScopeAdmin})
	if err != nil {
		return err
	}
	// Tracing as in serve: on only when OTEL_EXPORTER_OTLP_ENDPOINT is set.
	tracing, stopTracing, err := startTracing(ctx, getenv, logger)
	if err != nil {
		return err
	}
	defer stopTracing()
	hooks := &serveHooks{tracing: tracing, listening: func(addr string) {
		base := "http://" + strings.Replace(addr, "[::]", "localhost", 1)
		fmt.Fprintf(stdout, `
notifyd dev is running at %s
database: %s
admin API key (scopes send, admin):
  export NOTIFYD_KEY=%s
`, base, redactURL(databaseURL), secret)
		if demo > 0 {
			fmt.Fprintf(stdout, "loaded %d demo recipients (ada, grace, alan, ...), each with an email and a device\n", demo)
		}
		if fakes.SendGridURL != "" {
			fmt.Fprintf(stdout, "fake SendGrid: what it received is at %s/_fake/\n", fakes.SendGridURL)
		}
		if fakes.FCMURL != "" {
			fmt.Fprintf(stdout, "fake FCM:      what it received is at %s/_fake/\n", fakes.FCMURL)
		}
		fmt.Fprintf(stdout, `send a broadcast to everyone and watch it:
%s
  curl -s %s/v1/segments/all/count -H "Authorization: Bearer $NOTIFYD_KEY"
Ctrl-C stops everything.
`, devBroadcastExample(base), base)
	}}
	return serve(ctx, c, pool, logger, hooks)
}

// findLocalServer returns a URL for a PostgreSQL already running on this machine
// that we can log in to, or "".
func findLocalServer(ctx context.Context, getenv func(string) string) string {
	user := getenv("USER")
	if user == "" {
		user = "postgres"
	}
	candidates := []string{
		"postgres://" + user + "@localhost:5432/postgres?sslmode=disable&connect_timeout=1",
		"postgres://postgres@localhost:5432/postgres?sslmode=disable&connect_timeout=1",
	}
	if _, err := os.Stat("/var/run/postgresql"); err == nil {
		candidates = append(candidates, "postgres:///postgres?host=/var/run/postgresql&user="+url.QueryEscape(user)+"&connect_timeout=1")
	}
	for _, u := range candidates {
		tryCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(tryCtx, u)
		cancel()
		if err == nil {
			conn.Close(ctx)
			return u
		}
	}
	return ""
}

// ensureDatabase creates database name on the server of serverURL if missing and
// returns its URL. A URL that already names a non-default database is kept.
func ensureDatabase(ctx context.Context, serverURL, name string) (string, error) {
	cfg, err := pgx.ParseConfig(serverURL)
	if err != nil {
		return "", err
	}
	if cfg.Database != "postgres" && cfg.Database != "" {
		return serverURL, nil
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", describeConnectError(cfg.Host, cfg.Port, cfg.Database, err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", err
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
			return "", err
		}
	}
	u, err := url.Parse(serverURL)
	if err != nil {
		return "", err
	}
	if q := u.Query(); q.Get("dbname") != "" {
		q.Set("dbname", name)
		u.RawQuery = q.Encode()
	}
	u.Path = "/" + name
	return u.String(), nil
}

func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}
