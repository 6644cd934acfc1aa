package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/channels/email/sendgridfake"
	"github.com/notifyd/notifyd/channels/push/fcmfake"
	"github.com/notifyd/notifyd/migrations"
	"github.com/notifyd/notifyd/migrations/localpg"
	"github.com/notifyd/notifyd/notifier"
)

// bench measures the broadcast pipeline end to end, the way production runs it:
// notifyd runs as its own process(es) (`notifyd serve`) over a database of its
// own, the provider fakes run in this process on loopback, and one broadcast to
// segment "all" goes through the real API. Afterwards the figures come from
// Postgres (expansion and delivery rates), from the fakes (what was received,
// duplicates) and from /proc (peak RSS of each notifyd process).
//
// Everything here is prefixed bc (broadcast bench) so that it stays out of the
// way of the other commands of package main.

// bcProfiledServe is the hidden sub-command a child runs under --cpuprofile:
// `notifyd bench _serve-profiled FILE [serve flags]` is `notifyd serve` with a
// CPU profile written to FILE and heap profiles at its RSS peaks.
const bcProfiledServe = "_serve-profiled"

// bcDirPrefix names the throwaway cluster directories (swept when orphaned).
const bcDirPrefix = "notifyd-bcast-"

// bcOptions are the flags of bench.
type bcOptions struct {
	recipients    int
	channels      []string
	databaseURL   string
	workers       int
	binary        string
	poll          time.Duration
	timeout       time.Duration
	stall         time.Duration
	cpuProfileDir string
	pgStats       bool
	keep          bool
	waitIdle      time.Duration
	// emailRate and pushRate are the providers' rate limits given to the
	// children (messages/s); the default is high enough never to pace.
	emailRate, pushRate float64
	// cancelAfterExpansion cancels the broadcast once it is expanded and every
	// channel has sent, instead of waiting for its delivery.
	cancelAfterExpansion bool
}

func parseBcFlags(args []string, getenv func(string) string, stderr io.Writer) (*bcOptions, error) {
	fs := flag.NewFlagSet("notifyd bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &bcOptions{}
	var channels string
	fs.IntVar(&o.recipients, "recipients", 1_000_000, "recipients in the audience (each has an email address and one push device)")
	fs.StringVar(&channels, "channels", "email,push", "channels of the broadcast: email, push, inbox, comma-separated")
	fs.StringVar(&o.databaseURL, "database-url", getenv("DATABASE_URL"),
		"PostgreSQL server to create a throwaway database on; empty: start a throwaway durable cluster (DATABASE_URL)")
	fs.IntVar(&o.workers, "workers", 1, "notifyd processes: the first runs role all, the others role worker")
	fs.StringVar(&o.binary, "binary", "", "the notifyd binary to run as the child processes (default: this executable)")
	fs.DurationVar(&o.poll, "poll", 250*time.Millisecond, "how often GET /v1/broadcasts/{id} is polled (at most every 10x its latency)")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Hour, "give up when the broadcast has not completed after this long")
	fs.DurationVar(&o.stall, "stall", 3*time.Minute, "give up when no delivery changes state for this long")
	fs.StringVar(&o.cpuProfileDir, "cpuprofile", "", "write a CPU profile (and heap profiles at RSS peaks) of each notifyd process, and a CPU profile of this one (the fakes), into this directory")
	fs.BoolVar(&o.pgStats, "pg-stats", false, "load pg_stat_statements and print the statements that took the most time")
	fs.DurationVar(&o.waitIdle, "wait-idle", 0, "before the broadcast, wait up to this long for the machine to be idle (other work under 0.2 cores for 10 s)")
	fs.Float64Var(&o.emailRate, "email-rate", 1_000_000, "NOTIFYD_EMAIL_RATE of the children: SendGrid's rate limit in messages/s (the default never paces)")
	fs.Float64Var(&o.pushRate, "push-rate", 1_000_000, "NOTIFYD_PUSH_RATE of the children: FCM's rate limit in messages/s (the default never paces)")
	fs.BoolVar(&o.cancelAfterExpansion, "cancel-after-expansion", false,
		"once the broadcast is expanded and every channel has sent its first message, cancel it (POST /admin/v1/broadcasts/{id}/cancel) instead of waiting for its delivery: "+
			"with --email-rate and --push-rate at the providers' real limits (e.g. the service defaults, 1000/s) this measures the expansion "+
			"while delivery runs paced, and the cancel of a large broadcast in flight (the POST's latency, the last in-flight send, "+
			"what the providers still received after it returned)")
	fs.BoolVar(&o.keep, "keep", false, "leave the database (and the cluster, running) in place afterwards, for EXPLAIN and friends")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var problems []error
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if o.recipients < 1 {
		problems = append(problems, errors.New("--recipients must be at least 1"))
	}
	for _, ch := range strings.Split(channels, ",") {
		ch = strings.TrimSpace(ch)
		switch {
		case ch == "":
		case ch != notifier.ChannelEmail && ch != notifier.ChannelPush && ch != notifier.ChannelInbox:
			problems = append(problems, fmt.Errorf("--channels: %q is not email, push or inbox", ch))
		case slices.Contains(o.channels, ch):
			problems = append(problems, fmt.Errorf("--channels: %s is listed twice", ch))
		default:
			o.channels = append(o.channels, ch)
		}
	}
	if len(o.channels) == 0 {
		problems = append(problems, errors.New("--channels must name at least one channel"))
	}
	if o.workers < 1 {
		problems = append(problems, errors.New("--workers must be at least 1"))
	}
	if o.emailRate <= 0 || o.pushRate <= 0 {
		problems = append(problems, errors.New("--email-rate and --push-rate must be above 0"))
	}
	if o.poll <= 0 || o.timeout <= 0 || o.stall <= 0 {
		problems = append(problems, errors.New("--poll, --timeout and --stall must be positive"))
	}
	if o.binary == "" {
		exe, err := os.Executable()
		if err != nil {
			problems = append(problems, fmt.Errorf("cannot find this executable (give --binary): %w", err))
		}
		o.binary = exe
	}
	return o, errors.Join(problems...)
}

func runBench(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == bcProfiledServe {
		return runBcProfiledServe(ctx, args[1:], getenv, stdout, stderr)
	}
	opts, err := parseBcFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	// This process runs the fakes, which stand in for SendGrid's and Google's
	// side, not notifyd: a lazier garbage collector here leaves more of the
	// shared cores to what is measured (notifyd keeps its own GOGC).
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	b := &bcBench{opts: opts, stdout: stdout, stderr: stderr}
	defer b.teardown()
	rep, err := b.run(ctx)
	if rep != nil {
		b.printReport(rep)
	}
	if err != nil {
		return err
	}
	return rep.verdict()
}

// bcBench is one run: what it started (to stop it again) and what it measured.
type bcBench struct {
	opts           *bcOptions
	stdout, stderr io.Writer
	outMu          sync.Mutex

	// setup, undone by teardown in reverse order
	undo      []func()
	workDir   string
	cluster   *localpg.Cluster
	adminURL  string
	database  string
	dbURL     string
	pool      *pgxpool.Pool
	secret    string
	sendgrid  *sendgridfake.Server
	sgKey     string
	sgURL     string
	fcm       *fcmfake.Server
	fcmURL    string
	emailSeen *bcReceipts
	pushSeen  *bcReceipts
	children  []*bcChild
	apiBase   string
	pgVersion string
}

func (b *bcBench) say(format string, a ...any) {
	b.outMu.Lock()
	defer b.outMu.Unlock()
	fmt.Fprintf(b.stdout, format+"\n", a...)
}

func (b *bcBench) teardown() {
	for i := len(b.undo) - 1; i >= 0; i-- {
		b.undo[i]()
	}
	b.undo = nil
}

// run sets everything up, sends the broadcast, waits for it and measures. The
// report it returns may be partial when err is set.
func (b *bcBench) run(ctx context.Context) (*bcReport, error) {
	o := b.opts
	b.say("notifyd bench: broadcast to %s recipients on %s, %d notifyd process(es); %d CPUs, Go %s",
		thousands(int64(o.recipients)), strings.Join(o.channels, ","), o.workers, runtime.NumCPU(), runtime.Version())

	var err error
	if b.workDir, err = os.MkdirTemp("", "notifyd-bcrun-"); err != nil {
		return nil, err
	}
	b.undo = append(b.undo, func() { os.RemoveAll(b.workDir) })

	setupStart := time.Now()
	if err := b.startFakes(); err != nil {
		return nil, err
	}
	if err := b.startDatabase(ctx); err != nil {
		return nil, err
	}
	loadStart := time.Now()
	if err := b.loadRecipients(ctx); err != nil {
		return nil, fmt.Errorf("loading recipients: %w", err)
	}
	b.say("loaded %s recipients and %s devices in SQL in %s (off the clock)",
		thousands(int64(o.recipients)), thousands(int64(o.recipients)), bcSeconds(time.Since(loadStart)))
	if err := b.startChildren(ctx); err != nil {
		return nil, err
	}
	b.say("setup done in %s; notifyd API at %s", bcSeconds(time.Since(setupStart)), b.apiBase)
	if t := bcTuning(); len(t) > 0 {
		b.say("the notifyd processes inherit: %s", strings.Join(t, " "))
	}
	if o.emailRate < 1_000_000 || o.pushRate < 1_000_000 {
		b.say("provider rate limits: email %s/s, push %s/s", thousands(int64(o.emailRate)), thousands(int64(o.pushRate)))
	}

	rep := &bcReport{opts: o, channels: o.channels}
	for _, c := range b.children {
		rep.idleRSS = append(rep.idleRSS, procStatusKiB(c.pid, "VmRSS"))
	}
	if o.pgStats {
		if _, err := b.pool.Exec(ctx, "SELECT pg_stat_statements_reset()"); err != nil {
			b.say("pg_stat_statements is not available (%v); --pg-stats ignored", err)
			o.pgStats = false
		}
	}

	if o.waitIdle > 0 {
		if err := b.waitIdle(ctx, o.waitIdle); err != nil {
			return rep, err
		}
	}
	cpuBefore := b.sampleCPU()
	if err := b.broadcast(ctx, rep); err != nil {
		return rep, err
	}
	rep.cpu = bcCPUBetween(cpuBefore, b.sampleCPU())
	// Peak RSS before the processes go: VmHWM lives as long as the process.
	for _, c := range b.children {
		rep.procs = append(rep.procs, bcProcMem{role: c.role, pid: c.pid,
			hwmKiB: procStatusKiB(c.pid, "VmHWM"), maxSampledKiB: c.maxRSS.Load()})
	}
	if err := b.measure(ctx, rep); err != nil {
		return rep, err
	}
	if o.pgStats {
		rep.pgStats, err = b.topStatements(ctx)
		if err != nil {
			b.say("pg_stat_statements: %v", err)
		}
	}
	return rep, nil
}

// waitIdle waits until the machine has been quiet for 10 s: benchmarks on a
// shared machine measure the neighbours otherwise.
func (b *bcBench) waitIdle(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	b.say("waiting up to %s for the machine to be idle ...", limit)
	quietSince := time.Time{}
	prev := b.sampleCPU()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
		cur := b.sampleCPU()
		busy := bcCPUBetween(prev, cur).machine
		prev = cur
		if busy < 0.2 {
			if quietSince.IsZero() {
				quietSince = time.Now()
			}
			if time.Since(quietSince) >= 10*time.Second {
				return nil
			}
		} else {
			quietSince = time.Time{}
		}
		if time.Now().After(deadline) {
			b.say("the machine did not become idle within %s (busy %.2f cores); going ahead", limit, busy)
			return nil
		}
	}
}

// Fakes.

// startFakes serves the SendGrid and FCM fakes on loopback. Each tells a
// counter about every message it accepted, and keeps only the newest ones, to
// stay small.
func (b *bcBench) startFakes() error {
	b.sgKey = "SG.bench-" + bcRandomHex(8)
	b.sendgrid = sendgridfake.New(b.sgKey)
	b.sendgrid.SetRetention(1000)
	b.fcm = fcmfake.NewServer("notifyd-bench")
	b.fcm.SetRetention(1000)
	b.emailSeen = newBcReceipts(b.opts.recipients)
	b.pushSeen = newBcReceipts(b.opts.recipients)
	b.sendgrid.SetObserver(func(m sendgridfake.Message) { b.emailSeen.add(m.ReceivedAt, strings.ToLower(m.To)) })
	b.fcm.SetObserver(func(m fcmfake.Message) { b.pushSeen.add(m.End, m.Token) })
	for _, f := range []struct {
		handler http.Handler
		url     *string
	}{
		{b.sendgrid, &b.sgURL},
		{b.fcm, &b.fcmURL},
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: f.handler, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln) //nolint:errcheck // ErrServerClosed on close
		b.undo = append(b.undo, func() { srv.Close() })
		*f.url = "http://" + ln.Addr().String()
	}
	b.say("SendGrid fake at %s, FCM fake at %s (in this process)", b.sgURL, b.fcmURL)
	return nil
}

// bcReceipts counts what a fake accepted, by address or token.
type bcReceipts struct {
	mu      sync.Mutex
	seen    map[string]uint32
	total   int64
	dups    int64
	dupKeys []string // the first few, for the report
	first   time.Time
	last    time.Time
	// arrivals are the times of the messages accepted since recordArrivals
	// was called: only around a cancel, so that they stay few.
	recording bool
	arrivals  []time.Time
}

func newBcReceipts(hint int) *bcReceipts {
	return &bcReceipts{seen: make(map[string]uint32, hint)}
}

func (r *bcReceipts) add(at time.Time, key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.first.IsZero() || at.Before(r.first) {
		r.first = at
	}
	if at.After(r.last) {
		r.last = at
	}
	r.total++
	n := r.seen[key]
	if n > 0 {
		r.dups++
		if len(r.dupKeys) < 5 {
			r.dupKeys = append(r.dupKeys, key)
		}
	}
	r.seen[key] = n + 1
	if r.recording {
		r.arrivals = append(r.arrivals, at)
	}
}

// recordArrivals keeps the time of every message accepted from now on, for
// countAfter.
func (r *bcReceipts) recordArrivals() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recording = true
}

// countAfter is how many messages were accepted after t. t must not be
// before the recordArrivals call.
func (r *bcReceipts) countAfter(t time.Time) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, at := range r.arrivals {
		if at.After(t) {
			n++
		}
	}
	return n
}

// snapshot returns the totals.
func (r *bcReceipts) snapshot() (total, distinct, dups int64, dupKeys []string, first, last time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total, int64(len(r.seen)), r.dups, slices.Clone(r.dupKeys), r.first, r.last
}

// Database.

// startDatabase makes a fresh database (on DATABASE_URL's server, else on a
// throwaway durable cluster), migrates it and creates an API key.
func (b *bcBench) startDatabase(ctx context.Context) error {
	o := b.opts
	b.adminURL = o.databaseURL
	if b.adminURL == "" {
		localpg.SweepOrphans(os.TempDir(), bcDirPrefix)
		dir, err := os.MkdirTemp("", bcDirPrefix)
		if err != nil {
			return err
		}
		b.say("starting a throwaway PostgreSQL (durable: fsync on) in %s ...", dir)
		cluster, err := localpg.Start(ctx, dir, localpg.Options{Durable: true})
		if err != nil {
			os.RemoveAll(dir)
			return fmt.Errorf("starting PostgreSQL: %w", err)
		}
		if o.pgStats {
			// localpg's Restart does not come back (pg_ctl restart keeps its output
			// pipe open), so: set the library, stop, and start the same directory again.
			if cluster, err = bcPreloadStatements(ctx, cluster, dir); err != nil {
				return err
			}
		}
		b.cluster = cluster
		b.undo = append(b.undo, func() {
			if o.keep {
				// Sweeps stop clusters whose owner died; a kept one belongs to init.
				_ = os.WriteFile(filepath.Join(dir, "owner.pid"), []byte("1"), 0o644)
				b.say("kept the cluster running at %s: stop it with", redactURL(b.dbURL))
				b.say("  su postgres -c 'pg_ctl -D %s stop' && rm -rf %s", filepath.Join(dir, "data"), dir)
				return
			}
			if err := cluster.Destroy(); err != nil {
				b.say("removing the PostgreSQL cluster: %v", err)
			}
		})
		b.adminURL = cluster.URL("postgres")
	}

	b.database = "notifyd_bench_" + bcRandomHex(6)
	var err error
	if b.dbURL, err = bcWithDatabase(b.adminURL, b.database); err != nil {
		return err
	}
	admin, err := pgx.Connect(ctx, b.adminURL)
	if err != nil {
		return fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{b.database}.Sanitize()); err != nil {
		return fmt.Errorf("creating database: %w", err)
	}
	if b.cluster == nil {
		// A server we did not start: drop what we created.
		b.undo = append(b.undo, func() {
			if o.keep {
				b.say("kept database %s", redactURL(b.dbURL))
				return
			}
			dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			admin, err := pgx.Connect(dctx, b.adminURL)
			if err != nil {
				b.say("dropping database %s: %v", b.database, err)
				return
			}
			defer admin.Close(dctx)
			if _, err := admin.Exec(dctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{b.database}.Sanitize()+" WITH (FORCE)"); err != nil {
				b.say("dropping database %s: %v", b.database, err)
			}
		})
	}
	if err := admin.QueryRow(ctx, "SHOW server_version").Scan(&b.pgVersion); err != nil {
		return err
	}

	if b.pool, err = openDB(ctx, b.dbURL); err != nil {
		return err
	}
	b.undo = append(b.undo, b.pool.Close)
	if _, err := migrations.Migrate(ctx, b.pool); err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	if o.pgStats {
		if _, err := b.pool.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
			b.say("pg_stat_statements cannot be created (%v); --pg-stats ignored", err)
			o.pgStats = false
		}
	}
	svc := notifier.NewService(b.pool, nil, nil)
	if _, b.secret, err = svc.CreateAPIKey(ctx, "bench", []string{notifier.ScopeSend, notifier.ScopeAdmin}); err != nil {
		return fmt.Errorf("creating an API key: %w", err)
	}
	where := "the server of DATABASE_URL"
	if b.cluster != nil {
		where = "a throwaway durable cluster"
	}
	b.say("database %s on %s (PostgreSQL %s)", b.database, where, b.pgVersion)
	return nil
}

// bcPreloadStatements restarts the cluster with pg_stat_statements loaded.
func bcPreloadStatements(ctx context.Context, cluster *localpg.Cluster, dir string) (*localpg.Cluster, error) {
	conn, err := pgx.Connect(ctx, cluster.URL("postgres"))
	if err != nil {
		return cluster, err
	}
	_, err = conn.Exec(ctx, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
	conn.Close(ctx)
	if err != nil {
		return cluster, err
	}
	if err := cluster.Stop(); err != nil {
		return cluster, err
	}
	restarted, err := localpg.Start(ctx, dir, localpg.Options{Durable: true})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("restarting PostgreSQL with pg_stat_statements: %w", err)
	}
	return restarted, nil
}

// bcWithDatabase returns serverURL pointing at database name instead.
func bcWithDatabase(serverURL, name string) (string, error) {
	u, err := url.Parse(serverURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", errors.New("DATABASE_URL must be a postgres:// URL for bench")
	}
	if q := u.Query(); q.Has("dbname") {
		q.Set("dbname", name)
		u.RawQuery = q.Encode()
	}
	u.Path = "/" + name
	return u.String(), nil
}

// bcRecipientID is the id of the i-th generated recipient (1-based).
func bcRecipientID(i, n int) string {
	return fmt.Sprintf("r%0*d", bcIDWidth(n), i)
}

func bcIDWidth(n int) int {
	return max(7, len(strconv.Itoa(n)))
}

// loadRecipients writes the audience straight into the tables: recipients with
// an email and {"name", "plan"} attributes, and one Android device each. Then
// it vacuums and analyzes them and takes a checkpoint, as a long-lived
// directory would be, so that the run does not pay for the setup.
func (b *bcBench) loadRecipients(ctx context.Context) error {
	n, width := b.opts.recipients, bcIDWidth(b.opts.recipients)
	// Two halves in parallel: the machine has more than one core.
	parts := min(runtime.NumCPU(), 4, max(1, n/50_000))
	var wg sync.WaitGroup
	errs := make([]error, parts)
	for p := range parts {
		lo, hi := 1+p*n/parts, (p+1)*n/parts
		wg.Go(func() {
			_, errs[p] = b.pool.Exec(ctx, `
				INSERT INTO recipients (id, email, locale, timezone, attributes)
				SELECT 'r' || lpad(i::text, $3, '0'), 'r' || lpad(i::text, $3, '0') || '@bench.example', 'en-US', 'UTC',
					jsonb_build_object('name', 'Person ' || i, 'plan', (ARRAY['free', 'pro', 'team'])[1 + i % 3])
				FROM generate_series($1::int, $2::int) AS i`, lo, hi, width)
			if errs[p] != nil {
				return
			}
			_, errs[p] = b.pool.Exec(ctx, `
				INSERT INTO devices (recipient_id, token, platform)
				SELECT 'r' || lpad(i::text, $3, '0'), 'tok-' || lpad(i::text, $3, '0'), 'android'
				FROM generate_series($1::int, $2::int) AS i`, lo, hi, width)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, q := range []string{"VACUUM (ANALYZE) recipients", "VACUUM (ANALYZE) devices", "ANALYZE", "CHECKPOINT"} {
		if _, err := b.pool.Exec(ctx, q); err != nil {
			if q == "CHECKPOINT" {
				continue // needs privileges we may lack on a server we did not start
			}
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// Children.

// bcChild is one notifyd process.
type bcChild struct {
	role    string
	addr    string
	pid     int
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process exited
	exitErr error
	maxRSS  atomic.Int64 // KiB, the highest VmRSS sampled
}

// startChildren starts the notifyd processes and waits until their workers run
// and the API answers /readyz.
func (b *bcBench) startChildren(ctx context.Context) error {
	o := b.opts
	if o.cpuProfileDir != "" {
		if err := os.MkdirAll(o.cpuProfileDir, 0o755); err != nil {
			return err
		}
		// This process runs the fakes, which share the machine with notifyd.
		f, err := os.Create(filepath.Join(o.cpuProfileDir, "bench-and-fakes.cpu.pprof"))
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		b.undo = append(b.undo, func() { pprof.StopCPUProfile(); f.Close() })
	}
	base := bcChildBaseEnv()
	secret := bcRandomHex(24)
	for i := range o.workers {
		role := "worker"
		addr := "127.0.0.1:0"
		if i == 0 {
			role = "all"
			port, err := bcFreePort()
			if err != nil {
				return err
			}
			addr = "127.0.0.1:" + strconv.Itoa(port)
			b.apiBase = "http://" + addr
		}
		env := append(slices.Clone(base),
			"DATABASE_URL="+b.dbURL,
			"NOTIFYD_ROLE="+role,
			"NOTIFYD_ADDR="+addr,
			"NOTIFYD_SENDGRID_API_KEY="+b.sgKey,
			"NOTIFYD_SENDGRID_BASE_URL="+b.sgURL,
			"NOTIFYD_EMAIL_FROM=bench@notifyd.example",
			"NOTIFYD_FCM_PROJECT_ID=notifyd-bench",
			"NOTIFYD_FCM_CREDENTIALS=none",
			"NOTIFYD_FCM_ENDPOINT="+b.fcmURL+"/v1",
			"NOTIFYD_EMAIL_RATE="+strconv.FormatFloat(b.opts.emailRate, 'f', -1, 64),
			"NOTIFYD_PUSH_RATE="+strconv.FormatFloat(b.opts.pushRate, 'f', -1, 64),
			"NOTIFYD_LOG_FORMAT=json",
			// Every email carries a signed one-click unsubscribe link.
			"NOTIFYD_SECRET="+secret,
			"NOTIFYD_PUBLIC_URL="+b.apiBase,
		)
		args := []string{"serve"}
		if o.cpuProfileDir != "" {
			prof, err := filepath.Abs(filepath.Join(o.cpuProfileDir, fmt.Sprintf("notifyd-%d-%s.cpu.pprof", i, role)))
			if err != nil {
				return err
			}
			args = []string{"bench", bcProfiledServe, prof}
		}
		c, err := b.startChild(role, addr, i, args, env)
		if err != nil {
			return err
		}
		b.children = append(b.children, c)
	}
	// Stop them (SIGTERM, then a drain) before the fakes and the database go.
	b.undo = append(b.undo, b.stopChildren)
	go b.sampleRSS()

	deadline := time.Now().Add(90 * time.Second)
	for _, c := range b.children {
		for !bcFileContains(c.logPath, `"workers started"`) {
			if err := b.childWait(ctx, c, deadline); err != nil {
				return err
			}
		}
	}
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(b.apiBase + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if err := b.childWait(ctx, b.children[0], deadline); err != nil {
			return err
		}
	}
}

// childWait sleeps a little, failing when c died, ctx ended or the deadline passed.
func (b *bcBench) childWait(ctx context.Context, c *bcChild, deadline time.Time) error {
	select {
	case <-c.done:
		return fmt.Errorf("notifyd (%s, pid %d) exited during startup: %v\n%s", c.role, c.pid, c.exitErr, bcTail(c.logPath, 15))
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(50 * time.Millisecond):
	}
	if time.Now().After(deadline) {
		return fmt.Errorf("notifyd (%s, pid %d) did not become ready:\n%s", c.role, c.pid, bcTail(c.logPath, 15))
	}
	return nil
}

func (b *bcBench) startChild(role, addr string, i int, args, env []string) (*bcChild, error) {
	c := &bcChild{role: role, addr: addr, done: make(chan struct{}),
		logPath: filepath.Join(b.workDir, fmt.Sprintf("notifyd-%d-%s.log", i, role))}
	logFile, err := os.Create(c.logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(b.opts.binary, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Own process group: a Ctrl-C reaches only us, and we stop the children in
	// order. Pdeathsig: if we are killed outright, they go too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", b.opts.binary, err)
	}
	c.cmd, c.pid = cmd, cmd.Process.Pid
	go func() {
		c.exitErr = cmd.Wait()
		logFile.Close()
		close(c.done)
	}()
	return c, nil
}

// bcChildBaseEnv is this process's environment: tuning such as
// NOTIFYD_BULK_WORKERS or GOMEMLIMIT reaches the children. The settings bench
// gives them itself come later and win (exec keeps the last of a key).
func bcChildBaseEnv() []string {
	return os.Environ()
}

// bcTuning lists the variables that change how the children run, for the report.
func bcTuning() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "DATABASE_URL", k == "NOTIFYD_ROLE", k == "NOTIFYD_ADDR", k == "NOTIFYD_LOG_FORMAT",
			k == "NOTIFYD_SECRET", k == "NOTIFYD_PUBLIC_URL", k == "NOTIFYD_EMAIL_RATE", k == "NOTIFYD_PUSH_RATE",
			strings.HasPrefix(k, "NOTIFYD_SENDGRID_"), strings.HasPrefix(k, "NOTIFYD_FCM_"), k == "NOTIFYD_EMAIL_FROM":
		case strings.HasPrefix(k, "NOTIFYD_"), strings.HasPrefix(k, "GO"), strings.HasPrefix(k, "OTEL_"):
			if k != "GOPATH" && k != "GOROOT" && k != "GOCACHE" && k != "GOMODCACHE" && k != "GOFLAGS" && k != "GOTOOLCHAIN" {
				out = append(out, kv)
			}
		}
	}
	slices.Sort(out)
	return out
}

// sampleRSS records each child's highest VmRSS, every 200 ms, while it runs.
func (b *bcBench) sampleRSS() {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for range t.C {
		alive := false
		for _, c := range b.children {
			select {
			case <-c.done:
				continue
			default:
			}
			alive = true
			if kib := procStatusKiB(c.pid, "VmRSS"); kib > c.maxRSS.Load() {
				c.maxRSS.Store(kib)
			}
		}
		if !alive {
			return
		}
	}
}

func (b *bcBench) stopChildren() {
	for _, c := range b.children {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, c := range b.children {
		select {
		case <-c.done:
		case <-time.After(45 * time.Second):
			b.say("notifyd (%s, pid %d) did not stop within 45 s of SIGTERM: killing it", c.role, c.pid)
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		if c.exitErr != nil {
			b.say("notifyd (%s, pid %d) exited with %v; log %s:\n%s", c.role, c.pid, c.exitErr, c.logPath, bcTail(c.logPath, 10))
		}
	}
}

// The broadcast.

// bcBroadcastView is the part of GET /v1/broadcasts/{id} the bench reads.
type bcBroadcastView struct {
	ID       int64  `json:"id"`
	Status   string `json:"status"`
	Expanded bool   `json:"expanded"`
	Counts   struct {
		Recipients int64 `json:"recipients"`
		Deliveries int64 `json:"deliveries"`
		Pending    int64 `json:"pending"`
		Sending    int64 `json:"sending"`
		Sent       int64 `json:"sent"`
		Failed     int64 `json:"failed"`
		Suppressed int64 `json:"suppressed"`
		Cancelled  int64 `json:"cancelled"`
		Unknown    int64 `json:"unknown"`
	} `json:"counts"`
	Channels map[string]notifier.ChannelCounts `json:"channels"`
	Failure  string                            `json:"failure_reason"`
}

func (b *bcBench) api(ctx context.Context, method, path, idemKey string, body []byte) (int, []byte, error) {
	status, _, raw, err := newAPIClient(b.apiBase, b.secret).do(ctx, method, path, idemKey, body)
	return status, raw, err
}

// broadcast POSTs the broadcast and follows it to completion, drawing progress;
// with --cancel-after-expansion, until it is expanded and sending on every
// channel, and then cancels it.
func (b *bcBench) broadcast(ctx context.Context, rep *bcReport) error {
	o := b.opts
	in := map[string]any{
		"name":     fmt.Sprintf("bench %d recipients", o.recipients),
		"category": "announcements",
		"segment":  "all",
		"channels": o.channels,
	}
	for _, ch := range o.channels {
		switch ch {
		case notifier.ChannelEmail:
			in["email"] = map[string]string{
				"subject": "News for {{.Recipient.Attributes.name}}",
				"text":    "Hello {{.Recipient.Attributes.name}},\n\nyour {{.Recipient.Attributes.plan}} plan has news.\n",
				"html":    "<p>Hello {{.Recipient.Attributes.name}},</p><p>your {{.Recipient.Attributes.plan}} plan has news.</p>",
			}
		case notifier.ChannelPush:
			in["push"] = map[string]any{"title": "Hello {{.Recipient.Attributes.name}}", "body": "Your {{.Recipient.Attributes.plan}} plan has news.",
				"data": map[string]string{"kind": "bench"}}
		case notifier.ChannelInbox:
			in["inbox"] = map[string]string{"title": "Hello {{.Recipient.Attributes.name}}", "body": "Your {{.Recipient.Attributes.plan}} plan has news.",
				"url": "https://notifyd.example/news"}
		}
	}
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	b.say("\nPOST /v1/broadcasts (segment all) ...")
	rep.postedAt = time.Now()
	status, raw, err := b.api(ctx, http.MethodPost, "/v1/broadcasts", "bench-"+bcRandomHex(8), body)
	if err != nil {
		return fmt.Errorf("POST /v1/broadcasts: %w", err)
	}
	rep.postLatency = time.Since(rep.postedAt)
	if status != http.StatusAccepted {
		return fmt.Errorf("POST /v1/broadcasts = %d %s", status, bcSnippet(raw))
	}
	var created bcBroadcastView
	if err := json.Unmarshal(raw, &created); err != nil || created.ID == 0 {
		return fmt.Errorf("POST /v1/broadcasts: no id in %s", bcSnippet(raw))
	}
	rep.broadcastID = created.ID
	if err := b.follow(ctx, rep); err != nil {
		return err
	}
	if o.cancelAfterExpansion {
		return b.cancelAndSettle(ctx, rep)
	}
	return nil
}

// getBroadcast reads GET /v1/broadcasts/{id}, counting the poll for the report.
func (b *bcBench) getBroadcast(ctx context.Context, rep *bcReport) (bcBroadcastView, time.Duration, error) {
	path := "/v1/broadcasts/" + strconv.FormatInt(rep.broadcastID, 10)
	var v bcBroadcastView
	start := time.Now()
	status, raw, err := b.api(ctx, http.MethodGet, path, "", nil)
	lat := time.Since(start)
	if err != nil {
		if ctx.Err() != nil {
			return v, lat, ctx.Err()
		}
		return v, lat, fmt.Errorf("GET %s: %w", path, err)
	}
	if status != http.StatusOK {
		return v, lat, fmt.Errorf("GET %s = %d %s", path, status, bcSnippet(raw))
	}
	rep.polls++
	rep.pollTotal += lat
	rep.pollMax = max(rep.pollMax, lat)
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, lat, fmt.Errorf("GET %s: %w", path, err)
	}
	return v, lat, nil
}

// childrenAlive fails when a notifyd process exited during the run.
func (b *bcBench) childrenAlive() error {
	for _, c := range b.children {
		select {
		case <-c.done:
			return fmt.Errorf("notifyd (%s, pid %d) exited during the run: %v\n%s", c.role, c.pid, c.exitErr, bcTail(c.logPath, 15))
		default:
		}
	}
	return nil
}

// follow polls the broadcast until it completes (with --cancel-after-expansion:
// until it is expanded and sending on every channel), fails, stalls or times out.
func (b *bcBench) follow(ctx context.Context, rep *bcReport) error {
	o := b.opts
	expected := int64(o.recipients) * int64(len(o.channels))
	terminal := bcIsTerminal(b.stderr)
	deadline := rep.postedAt.Add(o.timeout)
	lastChange, lastKey := time.Now(), ""
	var lastLine time.Time
	// A broadcast turns sending when its expansion is done. The cancel is
	// meant to meet a broadcast in flight, so it also waits for every
	// channel's first send: on a loaded machine the expansion can end before
	// delivery has begun.
	done := func(v *bcBroadcastView) bool { return v.Status == notifier.StatusCompleted }
	if o.cancelAfterExpansion {
		done = func(v *bcBroadcastView) bool { return v.Status == notifier.StatusSending && bcEverySent(v, o.channels) }
	}
	defer func() {
		if terminal {
			fmt.Fprintln(b.stderr)
		}
	}()
	for {
		v, lat, err := b.getBroadcast(ctx, rep)
		if err != nil {
			return err
		}
		line := bcProgressLine(&v, o.channels, expected, time.Since(rep.postedAt))
		switch {
		case terminal:
			fmt.Fprintf(b.stderr, "\r%-150s", line)
		case time.Since(lastLine) >= 5*time.Second || done(&v):
			fmt.Fprintln(b.stderr, line)
			lastLine = time.Now()
		}
		if done(&v) {
			rep.observedDone = time.Since(rep.postedAt)
			rep.final = v
			return nil
		}
		switch v.Status {
		case notifier.StatusCompleted: // only with --cancel-after-expansion
			rep.final = v
			return fmt.Errorf("broadcast %d completed before it was seen sending on every channel, so it could not be cancelled in flight: "+
				"lower --email-rate/--push-rate or raise --recipients", v.ID)
		case notifier.StatusFailed, notifier.StatusCancelled, notifier.StatusPaused:
			rep.final = v
			return fmt.Errorf("broadcast %d ended %s %s", v.ID, v.Status, v.Failure)
		}
		key := fmt.Sprint(v.Counts)
		if key != lastKey {
			lastKey, lastChange = key, time.Now()
		}
		if time.Since(lastChange) > o.stall {
			rep.final = v
			return fmt.Errorf("broadcast %d stalled: nothing changed for %s (%s)", v.ID, o.stall, line)
		}
		if time.Now().After(deadline) {
			rep.final = v
			return fmt.Errorf("broadcast %d did not complete within %s", v.ID, o.timeout)
		}
		// The count behind this endpoint reads every delivery of the broadcast
		// (a parallel scan at a million recipients): keep the observer at a tenth
		// of the time, well under the work it observes. The end-to-end figure
		// comes from the database's timestamps, not from this loop.
		wait := max(o.poll, 10*lat)
		if err := b.childrenAlive(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// bcEverySent reports whether every channel of the broadcast has sent at least
// one message.
func bcEverySent(v *bcBroadcastView, channels []string) bool {
	for _, ch := range channels {
		if v.Channels[ch].Sent == 0 {
			return false
		}
	}
	return true
}

// bcCancel is what --cancel-after-expansion measured of the cancel.
type bcCancel struct {
	postedAt, answeredAt time.Time // the POST was sent, its answer arrived
	result               notifier.ControlResult
}

func (c *bcCancel) latency() time.Duration { return c.answeredAt.Sub(c.postedAt) }

// summary renders the cancel's answer.
func (c *bcCancel) summary() string {
	n := c.result.Counts
	return fmt.Sprintf("status %s (changed %t): sent %s, cancelled %s, in flight %s, pending %s, failed %s, suppressed %s, unknown %s",
		c.result.Status, c.result.Changed, thousands(n.Sent), thousands(n.Cancelled), thousands(n.InFlight), thousands(n.Pending),
		thousands(n.Failed), thousands(n.Suppressed), thousands(n.Unknown))
}

// cancelAndSettle cancels the expanded broadcast and times the call, then waits
// until none of its deliveries is pending or sending (calls in flight when the
// cancel returned may finish), and one second more, so that a provider call
// that started after the cancel would have reached the fakes.
func (b *bcBench) cancelAndSettle(ctx context.Context, rep *bcReport) error {
	o := b.opts
	path := "/admin/v1/broadcasts/" + strconv.FormatInt(rep.broadcastID, 10) + "/cancel"
	// From here on the fakes' arrival times are kept, to count what came
	// after the answer.
	b.emailSeen.recordArrivals()
	b.pushSeen.recordArrivals()
	c := &bcCancel{}
	rep.cancel = c
	b.say("POST %s ...", path)
	c.postedAt = time.Now()
	status, raw, err := b.api(ctx, http.MethodPost, path, "", nil)
	c.answeredAt = time.Now()
	if err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	if status != http.StatusOK {
		return fmt.Errorf("POST %s = %d %s", path, status, bcSnippet(raw))
	}
	if err := json.Unmarshal(raw, &c.result); err != nil {
		return fmt.Errorf("POST %s: %w in %s", path, err, bcSnippet(raw))
	}
	b.say("cancel answered in %s: %s", bcMillis(c.latency()), c.summary())

	deadline := time.Now().Add(o.stall)
	for {
		v, _, err := b.getBroadcast(ctx, rep)
		if err != nil {
			return err
		}
		rep.final = v
		if v.Counts.Pending == 0 && v.Counts.Sending == 0 {
			rep.observedDone = time.Since(rep.postedAt)
			break
		}
		if time.Now().After(deadline) {
			// Not an error here: measure reports what is left as a problem.
			b.say("%s after the cancel, %s deliveries are still pending and %s sending",
				o.stall, thousands(v.Counts.Pending), thousands(v.Counts.Sending))
			break
		}
		if err := b.childrenAlive(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(o.poll):
		}
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Second):
	}
	return nil
}

func bcProgressLine(v *bcBroadcastView, channels []string, expected int64, elapsed time.Duration) string {
	done := v.Counts.Sent + v.Counts.Failed + v.Counts.Suppressed + v.Counts.Unknown
	frac := 0.0
	if expected > 0 {
		frac = min(1, float64(done)/float64(expected))
	}
	const width = 20
	bar := strings.Repeat("#", int(frac*width)) + strings.Repeat(".", width-int(frac*width))
	var parts []string
	for _, ch := range channels {
		c := v.Channels[ch]
		parts = append(parts, fmt.Sprintf("%s %s sent/%s pending", ch, thousands(c.Sent), thousands(c.Pending+c.Sending)))
	}
	return fmt.Sprintf("[%s] %3.0f%% %6.1fs %-9s written %s/%s | %s", bar, frac*100, elapsed.Seconds(), v.Status,
		thousands(v.Counts.Deliveries), thousands(expected), strings.Join(parts, " | "))
}

// Measurements.

// bcReport is what one run measured.
type bcReport struct {
	opts         *bcOptions
	channels     []string
	broadcastID  int64
	postedAt     time.Time
	postLatency  time.Duration
	observedDone time.Duration
	final        bcBroadcastView
	polls        int
	pollTotal    time.Duration
	pollMax      time.Duration

	createdAt, expandedAt, completedAt time.Time
	// with --cancel-after-expansion: the cancel, when the broadcast was
	// cancelled, and when its last delivery finished (database times)
	cancel                 *bcCancel
	cancelledAt, settledAt time.Time
	audience               int64
	deliveries             int64
	perChannel             []bcChannelResult
	idleRSS                []int64
	procs                  []bcProcMem
	cpu                    bcCPUUse
	pgStats                []string
	problems               []string
}

type bcChannelResult struct {
	channel             string
	deliveries, sent    int64
	byStatus            map[string]int64
	firstClaim, lastEnd time.Time
	// sent after the expansion finished: the delivery rate no longer capped by
	// how fast deliveries are written
	sentAfterExpansion int64
	// what the provider (fake) or the inbox table received
	received, distinct, dups int64
	dupKeys                  []string
	fakeCount                int64
	recvFirst, recvLast      time.Time
	// with --cancel-after-expansion: when the last delivery that was not
	// cancelled finished, and what the receiver accepted after the cancel
	// returned
	lastInFlightEnd     time.Time
	receivedAfterCancel int64
}

func (c *bcChannelResult) rate() float64 {
	d := c.lastEnd.Sub(c.firstClaim).Seconds()
	if d <= 0 {
		return 0
	}
	return float64(c.sent) / d
}

type bcProcMem struct {
	role          string
	pid           int
	hwmKiB        int64
	maxSampledKiB int64
}

func (p bcProcMem) peakKiB() int64 { return max(p.hwmKiB, p.maxSampledKiB) }

func (r *bcReport) expansionSeconds() float64 {
	if r.expandedAt.IsZero() {
		return 0
	}
	return r.expandedAt.Sub(r.createdAt).Seconds()
}

func (r *bcReport) expansionRate() float64 {
	if s := r.expansionSeconds(); s > 0 {
		return float64(r.deliveries) / s
	}
	return 0
}

// measure reads the run's figures from Postgres and the fakes.
func (b *bcBench) measure(ctx context.Context, rep *bcReport) error {
	var expandedAt, completedAt, cancelledAt *time.Time
	err := b.pool.QueryRow(ctx, `SELECT created_at, expanded_at, completed_at, cancelled_at, audience_size FROM broadcasts WHERE id = $1`, rep.broadcastID).
		Scan(&rep.createdAt, &expandedAt, &completedAt, &cancelledAt, &rep.audience)
	if err != nil {
		return err
	}
	if expandedAt != nil {
		rep.expandedAt = *expandedAt
	}
	if completedAt != nil {
		rep.completedAt = *completedAt
	}
	if cancelledAt != nil {
		rep.cancelledAt, rep.settledAt = *cancelledAt, *cancelledAt
	}
	rows, err := b.pool.Query(ctx, `SELECT channel, status, count(*), min(claimed_at), max(finished_at)
		FROM deliveries WHERE broadcast_id = $1 GROUP BY channel, status`, rep.broadcastID)
	if err != nil {
		return err
	}
	byChannel := map[string]*bcChannelResult{}
	for _, ch := range rep.channels {
		byChannel[ch] = &bcChannelResult{channel: ch, byStatus: map[string]int64{}}
	}
	for rows.Next() {
		var ch, status string
		var n int64
		var claimed, finished *time.Time
		if err := rows.Scan(&ch, &status, &n, &claimed, &finished); err != nil {
			rows.Close()
			return err
		}
		c := byChannel[ch]
		if c == nil {
			c = &bcChannelResult{channel: ch, byStatus: map[string]int64{}}
			byChannel[ch] = c
		}
		c.deliveries += n
		c.byStatus[status] += n
		rep.deliveries += n
		if finished != nil {
			if finished.After(rep.settledAt) {
				rep.settledAt = *finished
			}
			if status != notifier.DeliveryCancelled && finished.After(c.lastInFlightEnd) {
				c.lastInFlightEnd = *finished
			}
		}
		if status == notifier.DeliverySent {
			c.sent = n
			if claimed != nil {
				c.firstClaim = *claimed
			}
			if finished != nil {
				c.lastEnd = *finished
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if !rep.expandedAt.IsZero() {
		rows, err := b.pool.Query(ctx, `SELECT channel, count(*) FROM deliveries
			WHERE broadcast_id = $1 AND status = 'sent' AND finished_at > $2 GROUP BY channel`, rep.broadcastID, rep.expandedAt)
		if err != nil {
			return err
		}
		for rows.Next() {
			var ch string
			var n int64
			if err := rows.Scan(&ch, &n); err != nil {
				rows.Close()
				return err
			}
			if c := byChannel[ch]; c != nil {
				c.sentAfterExpansion = n
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	for _, ch := range rep.channels {
		c := byChannel[ch]
		switch ch {
		case notifier.ChannelEmail:
			c.received, c.distinct, c.dups, c.dupKeys, c.recvFirst, c.recvLast = b.emailSeen.snapshot()
			c.fakeCount = int64(b.sendgrid.Count())
			if rep.cancel != nil {
				c.receivedAfterCancel = b.emailSeen.countAfter(rep.cancel.answeredAt)
			}
		case notifier.ChannelPush:
			c.received, c.distinct, c.dups, c.dupKeys, c.recvFirst, c.recvLast = b.pushSeen.snapshot()
			c.fakeCount = int64(b.fcm.Count())
			if rep.cancel != nil {
				c.receivedAfterCancel = b.pushSeen.countAfter(rep.cancel.answeredAt)
			}
		case notifier.ChannelInbox:
			err := b.pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT recipient_id), min(created_at), max(created_at)
				FROM inbox_items WHERE broadcast_id = $1`, rep.broadcastID).Scan(&c.received, &c.distinct, &c.recvFirst, &c.recvLast)
			if err != nil {
				return err
			}
			c.dups, c.fakeCount = c.received-c.distinct, c.received
			if c.dups > 0 {
				dupRows, err := b.pool.Query(ctx, `SELECT recipient_id FROM inbox_items WHERE broadcast_id = $1
					GROUP BY recipient_id HAVING count(*) > 1 LIMIT 5`, rep.broadcastID)
				if err == nil {
					c.dupKeys, _ = pgx.CollectRows(dupRows, pgx.RowTo[string])
				}
			}
			if rep.cancel != nil {
				// created_at is the inserting transaction's start, on this machine's clock.
				err := b.pool.QueryRow(ctx, `SELECT count(*) FROM inbox_items WHERE broadcast_id = $1 AND created_at > $2`,
					rep.broadcastID, rep.cancel.answeredAt).Scan(&c.receivedAfterCancel)
				if err != nil {
					return err
				}
			}
		}
		rep.perChannel = append(rep.perChannel, *c)
	}
	// Every problem is an error of the run, said loudly.
	want := int64(b.opts.recipients)
	if rep.audience != want {
		rep.problems = append(rep.problems, fmt.Sprintf("audience is %s recipients, want %s", thousands(rep.audience), thousands(want)))
	}
	if rep.cancel != nil {
		rep.problems = append(rep.problems, rep.cancelProblems()...)
		return nil
	}
	for _, c := range rep.perChannel {
		if c.deliveries != want || c.sent != want {
			rep.problems = append(rep.problems, fmt.Sprintf("%s: %s deliveries, %s sent, want %s (by status: %v)",
				c.channel, thousands(c.deliveries), thousands(c.sent), thousands(want), c.byStatus))
		}
		if c.dups > 0 {
			rep.problems = append(rep.problems, fmt.Sprintf("DUPLICATES: %s received %s messages twice or more (e.g. %s)",
				c.channel, thousands(c.dups), strings.Join(c.dupKeys, ", ")))
		}
		if c.received != c.sent || c.distinct != c.sent {
			rep.problems = append(rep.problems, fmt.Sprintf("%s: %s sent but the provider received %s (%s distinct)",
				c.channel, thousands(c.sent), thousands(c.received), thousands(c.distinct)))
		}
		if c.fakeCount != c.received {
			rep.problems = append(rep.problems, fmt.Sprintf("%s: the fake counted %s, the bench %s", c.channel, thousands(c.fakeCount), thousands(c.received)))
		}
	}
	return nil
}

// cancelProblems are the checks of a cancelled run: every delivery ended, none
// was received twice, and the providers received no more than the database
// counts as sent. Messages that arrived after the cancel returned are reported,
// not judged: calls in flight then may finish.
func (r *bcReport) cancelProblems() []string {
	var problems []string
	for _, c := range r.perChannel {
		if c.dups > 0 {
			problems = append(problems, fmt.Sprintf("DUPLICATES: %s received %s messages twice or more (e.g. %s)",
				c.channel, thousands(c.dups), strings.Join(c.dupKeys, ", ")))
		}
		if received := max(c.received, c.fakeCount); received > c.sent {
			problems = append(problems, fmt.Sprintf("%s: the provider received %s messages (fake's own count %s), the database counts %s sent",
				c.channel, thousands(c.received), thousands(c.fakeCount), thousands(c.sent)))
		}
		if ended := c.endedCount(); ended != c.deliveries {
			problems = append(problems, fmt.Sprintf("%s: sent+cancelled+suppressed+failed+unknown is %s, not the %s deliveries (by status: %v)",
				c.channel, thousands(ended), thousands(c.deliveries), c.byStatus))
		}
		if left := c.byStatus[notifier.DeliveryPending] + c.byStatus[notifier.DeliverySending]; left > 0 {
			problems = append(problems, fmt.Sprintf("%s: %s deliveries still pending or sending at the end (by status: %v)",
				c.channel, thousands(left), c.byStatus))
		}
	}
	return problems
}

// endedCount is how many deliveries reached a final status.
func (c *bcChannelResult) endedCount() int64 {
	var n int64
	for _, s := range []string{notifier.DeliverySent, notifier.DeliveryCancelled, notifier.DeliverySuppressed,
		notifier.DeliveryFailed, notifier.DeliveryUnknown} {
		n += c.byStatus[s]
	}
	return n
}

func (b *bcBench) topStatements(ctx context.Context) ([]string, error) {
	rows, err := b.pool.Query(ctx, `SELECT calls, total_exec_time, mean_exec_time, rows,
			left(regexp_replace(query, '\s+', ' ', 'g'), 160)
		FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
		ORDER BY total_exec_time DESC LIMIT 15`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var calls, nrows int64
		var total, mean float64
		var q string
		if err := rows.Scan(&calls, &total, &mean, &nrows, &q); err != nil {
			return nil, err
		}
		out = append(out, fmt.Sprintf("%9.1f s\t%8d calls\t%8.2f ms\t%10d rows\t%s", total/1000, calls, mean, nrows, q))
	}
	return out, rows.Err()
}

// verdict is the run's error when a check failed.
func (r *bcReport) verdict() error {
	if len(r.problems) > 0 {
		return fmt.Errorf("bench found %d problem(s): %s", len(r.problems), strings.Join(r.problems, "; "))
	}
	return nil
}

// Goals for 1,000,000 recipients (issue 3).
const (
	bcGoalExpansion = 100_000 // deliveries/s
	bcGoalEmail     = 20_000  // msgs/s
	bcGoalPush      = 5_000   // msgs/s
	bcGoalRSSBytes  = 150e6   // bytes
)

func bcGoal(ok bool, goal string) string {
	if ok {
		return "pass (goal " + goal + ")"
	}
	return "FAIL (goal " + goal + ")"
}

func (b *bcBench) printReport(r *bcReport) {
	b.outMu.Lock()
	defer b.outMu.Unlock()
	out := bufio.NewWriter(b.stdout)
	defer out.Flush()
	fmt.Fprintf(out, "\nRESULTS  broadcast %d: %s recipients, channels %s, %d notifyd process(es)\n",
		r.broadcastID, thousands(int64(r.opts.recipients)), strings.Join(r.channels, ","), r.opts.workers)
	if r.opts.recipients != 1_000_000 {
		fmt.Fprintln(out, "(the goals are set for 1,000,000 recipients)")
	}
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	if !r.createdAt.IsZero() {
		fmt.Fprintf(tw, "expansion\t%s deliveries in %s\t%s deliveries/s\t%s\n", thousands(r.deliveries),
			bcSeconds(time.Duration(r.expansionSeconds()*float64(time.Second))), thousands(int64(r.expansionRate())),
			bcGoal(r.expansionRate() >= bcGoalExpansion, "100,000/s"))
	}
	if r.cancel != nil {
		r.printCancelResults(tw) // no delivery rates: the broadcast was cancelled
	} else {
		for _, c := range r.perChannel {
			goal := ""
			switch c.channel {
			case notifier.ChannelEmail:
				goal = bcGoal(c.rate() >= bcGoalEmail, "20,000/s")
			case notifier.ChannelPush:
				goal = bcGoal(c.rate() >= bcGoalPush, "5,000/s")
			}
			fmt.Fprintf(tw, "%s delivery\t%s sent in %s\t%s msgs/s\t%s\n", c.channel, thousands(c.sent),
				bcSeconds(c.lastEnd.Sub(c.firstClaim)), thousands(int64(c.rate())), goal)
		}
	}
	if !r.completedAt.IsZero() {
		fmt.Fprintf(tw, "end to end\tcreated -> completed %s\t(client saw %s, POST took %s)\t\n",
			bcSeconds(r.completedAt.Sub(r.createdAt)), bcSeconds(r.observedDone), bcMillis(r.postLatency))
	}
	if r.cancel != nil && !r.settledAt.IsZero() {
		fmt.Fprintf(tw, "end to end\tcreated -> cancelled settled %s\t(client saw %s, POST took %s)\t\n",
			bcSeconds(r.settledAt.Sub(r.createdAt)), bcSeconds(r.observedDone), bcMillis(r.postLatency))
	}
	for i, p := range r.procs {
		idle := int64(-1)
		if i < len(r.idleRSS) {
			idle = r.idleRSS[i]
		}
		fmt.Fprintf(tw, "peak RSS notifyd[%d] %s\t%s (VmHWM %s, max sampled VmRSS %s)\tidle before: %s\t%s\n", i, p.role,
			bcMB(p.peakKiB()), bcMB(p.hwmKiB), bcMB(p.maxSampledKiB), bcMB(idle), bcGoal(float64(p.peakKiB())*1024 <= bcGoalRSSBytes, "150 MB"))
	}
	tw.Flush()
	if r.cancel != nil {
		fmt.Fprintf(out, "delivery paced at %s: delivery goals not measured in this mode\n", r.pacing())
	}

	fmt.Fprintln(out, "\ndetails")
	tw = tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	for _, c := range r.perChannel {
		var st []string
		for _, s := range []string{"sent", "failed", "suppressed", "unknown", "cancelled", "pending", "sending"} {
			if n := c.byStatus[s]; n > 0 {
				st = append(st, s+" "+thousands(n))
			}
		}
		recv := "provider"
		if c.channel == notifier.ChannelInbox {
			recv = "inbox_items"
		}
		window := c.recvLast.Sub(c.recvFirst).Seconds()
		fmt.Fprintf(tw, "%s\tdeliveries %s (%s); %s received %s, %s distinct (fake's own count %s); %s/s as the receiver saw it\n", c.channel,
			thousands(c.deliveries), strings.Join(st, ", "), recv, thousands(c.received), thousands(c.distinct),
			thousands(c.fakeCount), thousands(int64(bcDiv(float64(c.received), window))))
		if !c.firstClaim.IsZero() {
			fmt.Fprintf(tw, "\tfirst claim %s after create, last finish %s after create\n",
				bcSeconds(c.firstClaim.Sub(r.createdAt)), bcSeconds(c.lastEnd.Sub(r.createdAt)))
		}
		if !r.expandedAt.IsZero() && c.lastEnd.After(r.expandedAt) {
			drain := c.lastEnd.Sub(r.expandedAt)
			fmt.Fprintf(tw, "\tafter the expansion ended: %s sent in %s, %s msgs/s (the backlog drain, not capped by expansion)\n",
				thousands(c.sentAfterExpansion), bcSeconds(drain), thousands(int64(bcDiv(float64(c.sentAfterExpansion), drain.Seconds()))))
		}
	}
	if r.audience > 0 && r.expansionSeconds() > 0 {
		fmt.Fprintf(tw, "expansion\t%s recipients/s (created_at -> expanded_at, both transaction times)\n",
			thousands(int64(float64(r.audience)/r.expansionSeconds())))
	}
	if r.polls > 0 {
		fmt.Fprintf(tw, "observer\t%d polls of GET /v1/broadcasts/{id}, mean %s, max %s\n", r.polls,
			bcMillis(r.pollTotal/time.Duration(r.polls)), bcMillis(r.pollMax))
	}
	end := "completed"
	if r.cancel != nil {
		end = "cancelled settled"
	}
	fmt.Fprintf(tw, "CPU\tcores used from POST to %s: %s\n", end, r.cpu)
	fmt.Fprintf(tw, "\tCPU time per delivery: %s\n", r.cpu.perDelivery(r.deliveries))
	tw.Flush()

	for _, c := range r.perChannel {
		if r.cancel != nil {
			r.printCancelCheck(out, c)
			continue
		}
		status := "OK"
		if c.sent != int64(r.opts.recipients) || c.dups > 0 || c.received != c.sent || c.distinct != c.sent {
			status = "FAILED"
		}
		fmt.Fprintf(out, "check %s: sent %s of %s deliveries; received %s (%s distinct, %s duplicates): %s\n", c.channel,
			thousands(c.sent), thousands(c.deliveries), thousands(c.received), thousands(c.distinct), thousands(c.dups), status)
	}
	if len(r.pgStats) > 0 {
		fmt.Fprintln(out, "\ntop statements (pg_stat_statements, by total time):")
		tw = tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
		for _, l := range r.pgStats {
			fmt.Fprintln(tw, l)
		}
		tw.Flush()
	}
	if r.cpu.pgOK && r.cpu.other() > 0.25 {
		fmt.Fprintf(out, "\nWARNING: other processes used %.2f cores during the run: the machine was not quiet, the figures are low\n", r.cpu.other())
	}
	for _, p := range r.problems {
		fmt.Fprintf(out, "\n!!! ERROR: %s\n", p)
	}
	switch {
	case len(r.problems) > 0 || len(r.perChannel) == 0:
	case r.cancel != nil:
		fmt.Fprintln(out, "\ncancel held: every delivery ended, none received twice, the providers received no more than was recorded sent")
	default:
		fmt.Fprintln(out, "\nall deliveries sent once; no duplicates")
	}
}

// printCancelResults writes the cancel's lines of RESULTS: per channel what
// was sent and cancelled, then the cancel call.
func (r *bcReport) printCancelResults(tw io.Writer) {
	c := r.cancel
	for _, ch := range r.perChannel {
		last := "none sent"
		if !ch.lastInFlightEnd.IsZero() {
			last = "last send finished " + bcBeforeAfter(ch.lastInFlightEnd.Sub(c.postedAt)) + " the cancel POST"
		}
		fmt.Fprintf(tw, "%s\tsent before cancel %s, cancelled %s\t%s\treceived after the cancel returned: %s\n", ch.channel,
			thousands(ch.sent), thousands(ch.byStatus[notifier.DeliveryCancelled]), last, thousands(ch.receivedAfterCancel))
	}
	if c.answeredAt.IsZero() {
		return // the call failed: the run's error says why
	}
	n := c.result.Counts
	fmt.Fprintf(tw, "cancel\tPOST took %s\tanswer: %s, sent %s, cancelled %s\tin flight %s, pending %s\n", bcMillis(c.latency()),
		c.result.Status, thousands(n.Sent), thousands(n.Cancelled), thousands(n.InFlight), thousands(n.Pending))
}

// printCancelCheck writes one channel's check line of a cancelled run.
func (r *bcReport) printCancelCheck(out io.Writer, c bcChannelResult) {
	status := "OK"
	left := c.byStatus[notifier.DeliveryPending] + c.byStatus[notifier.DeliverySending]
	if c.dups > 0 || max(c.received, c.fakeCount) > c.sent || c.endedCount() != c.deliveries || left > 0 {
		status = "FAILED"
	}
	fmt.Fprintf(out, "check %s: sent %s + cancelled %s + suppressed %s + failed %s + unknown %s = %s of %s deliveries, %s pending or sending; "+
		"received %s (%s distinct, %s duplicates, %s after the cancel returned): %s\n", c.channel,
		thousands(c.sent), thousands(c.byStatus[notifier.DeliveryCancelled]), thousands(c.byStatus[notifier.DeliverySuppressed]),
		thousands(c.byStatus[notifier.DeliveryFailed]), thousands(c.byStatus[notifier.DeliveryUnknown]), thousands(c.endedCount()),
		thousands(c.deliveries), thousands(left), thousands(c.received), thousands(c.distinct), thousands(c.dups),
		thousands(c.receivedAfterCancel), status)
}

// pacing renders the provider rate limits of the run's channels.
func (r *bcReport) pacing() string {
	rates := map[string]float64{notifier.ChannelEmail: r.opts.emailRate, notifier.ChannelPush: r.opts.pushRate}
	var parts []string
	for _, ch := range r.channels {
		if rate, ok := rates[ch]; ok {
			parts = append(parts, ch+" "+thousands(int64(rate))+"/s")
		}
	}
	if len(parts) == 0 {
		return "no provider rate (inbox only)"
	}
	if r.opts.emailRate == r.opts.pushRate {
		return thousands(int64(r.opts.emailRate)) + "/s per channel"
	}
	return strings.Join(parts, ", ")
}

// CPU accounting from /proc.

type bcCPUSample struct {
	at       time.Time
	children []time.Duration
	postgres time.Duration
	pgOK     bool
	self     time.Duration
	busy     uint64
	total    uint64
}

type bcCPUUse struct {
	children     []float64
	postgres     float64
	pgOK         bool
	self         float64
	machine      float64 // busy cores
	machineCores int
	wall         time.Duration
}

// perDelivery renders the CPU time each part spent per delivery: unlike the
// rates, it hardly depends on what else the machine is doing.
func (u bcCPUUse) perDelivery(deliveries int64) string {
	if deliveries <= 0 || u.wall <= 0 {
		return "n/a"
	}
	us := func(cores float64) string {
		return strconv.FormatFloat(cores*u.wall.Seconds()*1e6/float64(deliveries), 'f', 0, 64) + " µs"
	}
	var notifyd float64
	for _, c := range u.children {
		notifyd += c
	}
	parts := []string{"notifyd " + us(notifyd)}
	if u.pgOK {
		parts = append(parts, "postgres "+us(u.postgres))
	}
	parts = append(parts, "bench+fakes "+us(u.self))
	return strings.Join(parts, ", ")
}

// other is what processes outside this bench used: a busy machine makes the
// figures say less.
func (u bcCPUUse) other() float64 {
	sum := u.postgres + u.self
	for _, c := range u.children {
		sum += c
	}
	return max(0, u.machine-sum)
}

func (u bcCPUUse) String() string {
	var parts []string
	for i, c := range u.children {
		parts = append(parts, fmt.Sprintf("notifyd[%d] %.2f", i, c))
	}
	if u.pgOK {
		parts = append(parts, fmt.Sprintf("postgres %.2f", u.postgres))
	} else {
		parts = append(parts, "postgres n/a")
	}
	parts = append(parts, fmt.Sprintf("bench+fakes %.2f", u.self))
	if u.pgOK {
		parts = append(parts, fmt.Sprintf("other processes %.2f", u.other()))
	}
	parts = append(parts, fmt.Sprintf("machine busy %.2f of %d", u.machine, u.machineCores))
	return strings.Join(parts, ", ")
}

func (b *bcBench) sampleCPU() bcCPUSample {
	s := bcCPUSample{at: time.Now()}
	for _, c := range b.children {
		t, _ := processCPU(c.pid)
		s.children = append(s.children, t)
	}
	if b.cluster != nil {
		s.postgres, s.pgOK = clusterCPU(filepath.Join(b.cluster.Dir, "data"))
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	s.busy, s.total, _ = readMachineCPU()
	return s
}

func bcCPUBetween(a, b bcCPUSample) bcCPUUse {
	wall := b.at.Sub(a.at).Seconds()
	u := bcCPUUse{pgOK: a.pgOK && b.pgOK, machineCores: runtime.NumCPU(), wall: b.at.Sub(a.at)}
	for i := range min(len(a.children), len(b.children)) {
		u.children = append(u.children, (b.children[i]-a.children[i]).Seconds()/wall)
	}
	if u.pgOK {
		u.postgres = (b.postgres - a.postgres).Seconds() / wall
	}
	u.self = (b.self - a.self).Seconds() / wall
	if b.total > a.total {
		u.machine = float64(b.busy-a.busy) / float64(b.total-a.total) * float64(u.machineCores)
	}
	return u
}

// The profiled child.

// runBcProfiledServe is `notifyd serve` with a CPU profile, and a heap profile
// (plus the Go runtime's memory figures) written whenever RSS reaches a new peak.
func runBcProfiledServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) < 1 {
		return errors.New("usage: notifyd bench " + bcProfiledServe + " FILE [serve flags]")
	}
	file := args[0]
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	defer pprof.StopCPUProfile()
	heapCtx, stopHeap := context.WithCancel(ctx)
	defer stopHeap()
	go bcHeapAtPeaks(heapCtx, strings.TrimSuffix(file, ".cpu.pprof"))
	return runServe(ctx, args[1:], getenv, stdout, stderr)
}

func bcHeapAtPeaks(ctx context.Context, prefix string) {
	var peak int64
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rss := procStatusKiB(os.Getpid(), "VmRSS")
		if rss < peak+peak/20 { // 5% above the last snapshot
			continue
		}
		peak = rss
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if f, err := os.Create(prefix + ".heap.pprof"); err == nil {
			_ = pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
		summary := fmt.Sprintf("at %s: VmRSS %d KiB\nHeapAlloc %d\nHeapInuse %d\nHeapIdle %d\nHeapReleased %d\nHeapSys %d\nStackInuse %d\nStackSys %d\nMSpanSys %d\nGCSys %d\nOtherSys %d\nSys %d\nNumGC %d\nNextGC %d\nGoroutines %d\n",
			time.Now().Format(time.RFC3339Nano), rss, ms.HeapAlloc, ms.HeapInuse, ms.HeapIdle, ms.HeapReleased, ms.HeapSys,
			ms.StackInuse, ms.StackSys, ms.MSpanSys, ms.GCSys, ms.OtherSys, ms.Sys, ms.NumGC, ms.NextGC, runtime.NumGoroutine())
		_ = os.WriteFile(prefix+".memstats.txt", []byte(summary), 0o644)
	}
}

// Small helpers.

func bcFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func bcFileContains(path, s string) bool {
	raw, err := os.ReadFile(path)
	return err == nil && bytes.Contains(raw, []byte(s))
}

func bcTail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

func bcIsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func bcRandomHex(n int) string {
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	return hex.EncodeToString(buf)
}

func bcSnippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

func bcSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + " s"
}

func bcMillis(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) + " ms"
}

// bcMB renders KiB as decimal megabytes, the unit of the RSS goal.
func bcMB(kib int64) string {
	if kib < 0 {
		return "n/a"
	}
	return strconv.FormatFloat(float64(kib)*1024/1e6, 'f', 1, 64) + " MB"
}

// bcBeforeAfter renders d as "X ms after", or "X ms before" when negative.
func bcBeforeAfter(d time.Duration) string {
	if d < 0 {
		return bcMillis(-d) + " before"
	}
	return bcMillis(d) + " after"
}

func bcDiv(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}
