package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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

// `notifyd chaos` attacks a real deployment while it drains and then checks the
// invariants from the providers' side. It builds a throwaway durable PostgreSQL
// cluster and the SendGrid and FCM fakes in this process, runs the notifyd binary
// as one API process and (by default) three worker processes over them, and
// while a broadcast on email and push drains:
//
//   - kills a random worker with SIGKILL every few seconds and starts a new one;
//   - restarts PostgreSQL once (pg_ctl restart -m immediate: a crash);
//   - makes both fakes answer 500, 429 with Retry-After, and time out, at set rates;
//   - replays the create request from many goroutines, in several rounds, one of
//     them during the PostgreSQL restart: exactly one broadcast may result;
//   - creates a second broadcast and cancels it mid-run.
//
// When both broadcasts are final it stops the processes and checks, from the
// fakes' own records against the API's counts: no recipient got a message twice
// on a channel; every recipient was received, or counted failed, unknown,
// suppressed or cancelled, and the numbers add up; nothing of the cancelled
// broadcast reached a provider in a request that started after the cancel
// returned. It prints the figures and fails on any violation.
//
// Everything here is prefixed cx (chaos) to stay out of the way of the other
// commands of package main; it reuses bench's small helpers (bc*).

const (
	cxDirPrefix  = "notifyd-chaos-"
	cxFCMProject = "notifyd-chaos"
	cxDomain     = "@chaos.example"
)

// cxKnobs are settings of the child processes that make recovery quick enough
// for a short run. They are given to the children only with --fast-recovery
// (implied by --short), and only when the binary lists them in `notifyd help
// serve`; without them a killed worker's jobs come back after River's rescue
// delay (3 min) and interrupted claims are swept to unknown after 90 s.
var cxKnobs = []struct{ env, value, what string }{
	{"NOTIFYD_SEND_TIMEOUT", "10s", "bounds a provider call; interrupted claims are swept to unknown 2x this + 30 s after the claim"},
	// The shortest notifyd accepts with a 10 s send timeout (2x + 1 min: no job
	// runs that long, so no live job is re-run); River's rescuer looks every
	// 30 s, so a killed worker's jobs come back 80-110 s after the kill.
	{"NOTIFYD_RESCUE_AFTER", "80s", "River rescues (re-runs) the jobs of a killed worker after this"},
}

type cxOptions struct {
	recipients       int
	cancelRecipients int
	duration         time.Duration
	killEvery        time.Duration
	kills            int
	workers          int
	binary           string
	pgMode           string
	fail500          float64
	rateLimit        float64
	retryAfter       time.Duration
	timeoutRate      float64
	replayers        int
	replayRounds     int
	timeout          time.Duration
	stall            time.Duration
	fastRecovery     bool
	keepLogs         bool
	short            bool
}

func parseCxFlags(args []string, stderr io.Writer) (*cxOptions, error) {
	fs := flag.NewFlagSet("notifyd chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &cxOptions{}
	fs.IntVar(&o.recipients, "recipients", 20_000, "recipients of the broadcast that must complete (each has an email address and one push device)")
	fs.IntVar(&o.cancelRecipients, "cancel-recipients", 0, "recipients of the second broadcast, cancelled mid-run (default: a quarter of --recipients)")
	fs.DurationVar(&o.duration, "duration", 90*time.Second, "the chaos phase: the drain is paced to last about this long; the kills, the PostgreSQL restart and the cancel fall inside it")
	fs.DurationVar(&o.killEvery, "kill-every", 5*time.Second, "SIGKILL a random worker this often during the chaos phase")
	fs.IntVar(&o.kills, "kills", 0, "kill this many workers, spread over the chaos phase (0: one every --kill-every)")
	fs.IntVar(&o.workers, "workers", 3, "worker processes (there is one API process besides)")
	fs.StringVar(&o.binary, "binary", "", "the notifyd binary to run (default: this executable)")
	fs.StringVar(&o.pgMode, "pg-restart", "immediate", "how PostgreSQL is restarted mid-run: immediate (a crash and recovery), fast, or none")
	fs.Float64Var(&o.fail500, "fail-rate", 0.05, "share of provider requests the fakes answer 500")
	fs.Float64Var(&o.rateLimit, "rate-limit-rate", 0.03, "share of provider requests the fakes answer 429 with Retry-After")
	fs.DurationVar(&o.retryAfter, "retry-after", time.Second, "the Retry-After of those 429s")
	fs.Float64Var(&o.timeoutRate, "timeout-rate", 0.01, "share of provider requests the fakes never answer (the client times out: recorded unknown, never resent)")
	fs.IntVar(&o.replayers, "replayers", 32, "concurrent POSTs of the create request (one Idempotency-Key) per round")
	fs.IntVar(&o.replayRounds, "replay-rounds", 4, "rounds of those POSTs: the first creates, the second hits the PostgreSQL restart, the last comes after the end")
	fs.DurationVar(&o.timeout, "timeout", 20*time.Minute, "fail when the broadcasts are not final this long after the first POST")
	fs.DurationVar(&o.stall, "stall", 5*time.Minute, "fail when no delivery changes state for this long after the chaos phase (River rescues a killed worker's jobs after 3 min)")
	fs.BoolVar(&o.fastRecovery, "fast-recovery", false, "give the workers short send and rescue timeouts, where the binary has them (see notifyd help serve)")
	fs.BoolVar(&o.keepLogs, "keep-logs", false, "keep the notifyd logs afterwards (they are kept anyway when a check fails)")
	fs.BoolVar(&o.short, "short", false, "the CI form: 5,000 recipients, a 40 s chaos phase, 2 kills, one PostgreSQL restart, 0.5% 429s, --fast-recovery")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.short {
		if !flagSet(fs, "recipients") {
			o.recipients = 5000
		}
		if !flagSet(fs, "duration") {
			o.duration = 40 * time.Second
		}
		if !flagSet(fs, "kills") {
			o.kills = 2
		}
		if !flagSet(fs, "timeout") {
			o.timeout = 8 * time.Minute
		}
		if !flagSet(fs, "fast-recovery") {
			o.fastRecovery = true
		}
		// Every 429 holds the whole provider for its Retry-After and then ramps
		// up: 3% of requests keeps push (one request per message) blocked most
		// of the time, too slow for CI. 0.5% still backs off every few seconds.
		if !flagSet(fs, "rate-limit-rate") {
			o.rateLimit = 0.005
		}
	}
	if o.cancelRecipients == 0 {
		o.cancelRecipients = max(100, o.recipients/4)
	}
	var problems []error
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if o.recipients < 100 || o.recipients > 9_999_999 || o.cancelRecipients < 10 || o.cancelRecipients > 9_999_999 {
		problems = append(problems, errors.New("--recipients must be 100 to 9,999,999 and --cancel-recipients 10 to 9,999,999"))
	}
	if o.duration < 10*time.Second {
		problems = append(problems, errors.New("--duration must be at least 10s"))
	}
	if o.killEvery <= 0 || o.kills < 0 {
		problems = append(problems, errors.New("--kill-every must be positive and --kills not negative"))
	}
	if o.workers < 2 {
		problems = append(problems, errors.New("--workers must be at least 2 (one is killed at a time)"))
	}
	if o.pgMode != "immediate" && o.pgMode != "fast" && o.pgMode != "none" {
		problems = append(problems, fmt.Errorf("--pg-restart must be immediate, fast or none, not %q", o.pgMode))
	}
	for _, r := range []float64{o.fail500, o.rateLimit, o.timeoutRate} {
		if r < 0 || r >= 1 {
			problems = append(problems, errors.New("--fail-rate, --rate-limit-rate and --timeout-rate must be in [0, 1)"))
			break
		}
	}
	if o.replayers < 2 || o.replayRounds < 2 {
		problems = append(problems, errors.New("--replayers and --replay-rounds must be at least 2"))
	}
	if o.timeout <= o.duration {
		problems = append(problems, errors.New("--timeout must be longer than --duration"))
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

// killTimes are the offsets from the first POST at which a worker is killed:
// from 15% to 95% of the chaos phase.
func (o *cxOptions) killTimes() []time.Duration {
	first, last := o.duration*15/100, o.duration*95/100
	every := o.killEvery
	if o.kills > 0 {
		every = (last - first) / time.Duration(o.kills)
	}
	var out []time.Duration
	for t := first; t < last && (o.kills == 0 || len(out) < o.kills); t += every {
		out = append(out, t)
	}
	return out
}

func runChaos(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := parseCxFlags(args, stderr)
	if err != nil {
		return err
	}
	r := &cxRun{o: o, stdout: stdout, stderr: stderr}
	rep, err := r.run(ctx)
	failed := err != nil || rep == nil || len(rep.violations) > 0
	if rep != nil {
		r.printReport(rep)
	}
	r.teardown(failed)
	if err != nil {
		return err
	}
	if len(rep.violations) > 0 {
		return fmt.Errorf("chaos: %d violation(s): %s", len(rep.violations), strings.Join(rep.violations, "; "))
	}
	return nil
}

// cxRun is one chaos run: what it started (to stop it again) and what it saw.
type cxRun struct {
	o              *cxOptions
	stdout, stderr io.Writer
	outMu          sync.Mutex

	undo     []func()
	workDir  string
	cluster  *localpg.Cluster
	adminURL string
	dbURL    string
	pool     *pgxpool.Pool
	secret   string
	sgKey    string
	sgURL    string
	fcmURL   string
	sendgrid *sendgridfake.Server
	fcm      *fcmfake.Server
	childEnv []string
	apiAddr  string
	apiBase  string
	knobs    []string
	sendTO   time.Duration // the workers' provider call timeout

	procMu     sync.Mutex
	slots      []*cxProc // 0: the API, 1..: workers
	procs      []*cxProc // every process ever started
	nextWorker int
	stopping   atomic.Bool

	t0         time.Time
	b1, b2     int64
	body1      []byte
	key1       string
	repMu      sync.Mutex
	rep        *cxReport
	paceMu     sync.Mutex
	paceRanges map[string][2]time.Duration
}

// cxProc is one notifyd process.
type cxProc struct {
	name, role string
	pid        int
	cmd        *exec.Cmd
	logPath    string
	done       chan struct{}
	exitErr    error
	ready      atomic.Bool
	killed     atomic.Bool // by us: SIGKILL, or the stop at the end
	handled    atomic.Bool
	startedAt  time.Time
}

func (p *cxProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// cxReport is what the run saw and concluded.
type cxReport struct {
	events       []cxEvent
	rounds       []*cxRound
	created      time.Duration // setup time
	cancelSent   time.Time
	cancelAt     time.Time // when the cancel's 200 arrived
	cancelRes    *notifier.ControlResult
	cancelTook   time.Duration
	pgDowntime   time.Duration
	kills        int
	selfExits    int
	final1       *cxView
	final2       *cxView
	completed1   time.Duration // when broadcast 1 was seen completed
	allFinal     time.Duration
	rows         []*cxRow
	reasons      []string
	faults       []string
	broadcastsDB int
	pushAfter    int64 // FCM requests for broadcast 2's tokens that started after the cancel
	lastB2Start  time.Time
	wrongBody    int
	violations   []string
	notes        []string
}

type cxEvent struct {
	at   time.Duration
	what string
}

// cxRound is one round of concurrent create requests with one Idempotency-Key.
type cxRound struct {
	n, requests                           int
	label                                 string
	at, took                              time.Duration
	created, replayed, conflict, server5x int
	transport, other                      int
	ids                                   map[int64]int
	details                               []string
}

// cxView is the part of GET /v1/broadcasts/{id} chaos reads.
type cxView struct {
	ID       int64                             `json:"id"`
	Status   string                            `json:"status"`
	Expanded bool                              `json:"expanded"`
	Counts   notifier.Counts                   `json:"counts"`
	Channels map[string]notifier.ChannelCounts `json:"channels"`
}

// cxRow is one broadcast on one channel, as the API counts it and as the fake saw it.
type cxRow struct {
	label     string
	id        int64
	channel   string
	audience  int64 // expected
	api       notifier.ChannelCounts
	db        notifier.ChannelCounts
	received  int64 // messages the fake accepted for this broadcast and channel
	recvSent  int64 // distinct deliveries received whose status is sent
	recvUnkn  int64 // distinct deliveries received whose status is unknown
	recvOther int64 // distinct deliveries received with any other status: a violation
	missing   int64 // sent but never received
	dupID     int64 // messages beyond the first per delivery id
	dupAddr   int64 // messages beyond the first per address or token
	wrongAddr int64
	after     int64 // received in a request that started after the cancel returned
}

func (r *cxRun) say(format string, a ...any) {
	r.outMu.Lock()
	defer r.outMu.Unlock()
	fmt.Fprintf(r.stdout, format+"\n", a...)
}

func (r *cxRun) since() time.Duration {
	if r.t0.IsZero() {
		return 0
	}
	return time.Since(r.t0)
}

// event logs a step of the timeline, live and for the report.
func (r *cxRun) event(format string, a ...any) {
	e := cxEvent{at: r.since(), what: fmt.Sprintf(format, a...)}
	r.repMu.Lock()
	r.rep.events = append(r.rep.events, e)
	r.repMu.Unlock()
	r.say("[%6.1fs] %s", e.at.Seconds(), e.what)
}

func (r *cxRun) violation(format string, a ...any) {
	r.repMu.Lock()
	defer r.repMu.Unlock()
	r.rep.violations = append(r.rep.violations, fmt.Sprintf(format, a...))
}

func (r *cxRun) note(format string, a ...any) {
	r.repMu.Lock()
	defer r.repMu.Unlock()
	r.rep.notes = append(r.rep.notes, fmt.Sprintf(format, a...))
}

func (r *cxRun) teardown(failed bool) {
	for i := len(r.undo) - 1; i >= 0; i-- {
		r.undo[i]()
	}
	r.undo = nil
	if r.workDir == "" {
		return
	}
	if failed || r.o.keepLogs {
		r.say("notifyd logs kept in %s", r.workDir)
		return
	}
	os.RemoveAll(r.workDir)
}

// run sets up, attacks, waits and checks. err is for a run that could not be
// carried out; what the checks found is in the report.
func (r *cxRun) run(ctx context.Context) (*cxReport, error) {
	o := r.o
	r.rep = &cxReport{}
	r.say("notifyd chaos: %s + %s recipients (email and push), 1 API + %d worker processes, a %s chaos phase",
		thousands(int64(o.recipients)), thousands(int64(o.cancelRecipients)), o.workers, o.duration)
	r.say("kills at %s; PostgreSQL restart (%s) at %s; cancel of the second broadcast at %s; provider faults: %.1f%% 500, %.1f%% 429 (Retry-After %s), %.1f%% time out",
		cxOffsets(o.killTimes()), o.pgMode, cxOffset(o.duration*35/100), cxOffset(o.duration*45/100),
		o.fail500*100, o.rateLimit*100, o.retryAfter, o.timeoutRate*100)
	setupStart := time.Now()
	var err error
	if r.workDir, err = os.MkdirTemp("", "notifyd-chaos-logs-"); err != nil {
		return nil, err
	}
	if err := r.startFakes(); err != nil {
		return nil, err
	}
	if err := r.startDatabase(ctx); err != nil {
		return nil, err
	}
	if err := r.seed(ctx); err != nil {
		return nil, fmt.Errorf("seeding recipients: %w", err)
	}
	r.childEnv = r.buildChildEnv()
	if err := r.startProcesses(ctx); err != nil {
		return nil, err
	}
	if err := r.createSegments(ctx); err != nil {
		return nil, err
	}
	r.rep.created = time.Since(setupStart)
	r.say("setup done in %s; API at %s\n", bcSeconds(r.rep.created), r.apiBase)

	superCtx, stopSuper := context.WithCancel(ctx)
	defer stopSuper()
	go r.supervise(superCtx)

	if err := r.chaos(ctx); err != nil {
		return r.rep, err
	}
	r.waitFinal(ctx)
	r.afterRounds(ctx)
	stopSuper()
	r.stopProcesses()
	if err := r.measure(ctx); err != nil {
		return r.rep, fmt.Errorf("measuring: %w", err)
	}
	return r.rep, nil
}

// Setup.

func (r *cxRun) startFakes() error {
	r.sgKey = "SG.chaos-" + bcRandomHex(8)
	r.sendgrid = sendgridfake.New(r.sgKey)
	sgURL, closeSG, err := r.sendgrid.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	r.undo = append(r.undo, func() { _ = closeSG() })
	r.sgURL = sgURL
	r.fcm = fcmfake.NewServer(cxFCMProject)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: r.fcm, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln) //nolint:errcheck // ErrServerClosed on close
	r.undo = append(r.undo, func() { srv.Close() })
	r.fcmURL = "http://" + ln.Addr().String()
	r.setFaults(0, 0)
	r.say("SendGrid fake at %s, FCM fake at %s (in this process)", r.sgURL, r.fcmURL)
	return nil
}

// setFaults gives both fakes the run's fault rates and a latency each.
func (r *cxRun) setFaults(emailDelay, pushDelay time.Duration) {
	o := r.o
	r.sendgrid.SetBehavior(sendgridfake.Behavior{Delay: emailDelay, FailRate500: o.fail500, RateLimitRate: o.rateLimit,
		RetryAfter: o.retryAfter, TimeoutRate: o.timeoutRate})
	r.fcm.SetBehavior(fcmfake.Behavior{Delay: pushDelay, FailRate500: o.fail500, RateLimitRate: o.rateLimit,
		RetryAfter: o.retryAfter, TimeoutRate: o.timeoutRate})
}

func (r *cxRun) startDatabase(ctx context.Context) error {
	localpg.SweepOrphans(os.TempDir(), cxDirPrefix)
	dir, err := os.MkdirTemp("", cxDirPrefix)
	if err != nil {
		return err
	}
	cluster, err := localpg.Start(ctx, dir, localpg.Options{Durable: true})
	if err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("starting PostgreSQL: %w", err)
	}
	r.cluster = cluster
	r.undo = append(r.undo, func() {
		if err := cluster.Destroy(); err != nil {
			r.say("removing the PostgreSQL cluster: %v", err)
		}
	})
	r.adminURL = cluster.URL("postgres")
	admin, err := pgx.Connect(ctx, r.adminURL)
	if err != nil {
		return fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	var version string
	if err := admin.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		return err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE notifyd_chaos"); err != nil {
		return err
	}
	r.dbURL = cluster.URL("notifyd_chaos")
	if r.pool, err = openDB(ctx, r.dbURL); err != nil {
		return err
	}
	r.undo = append(r.undo, r.pool.Close)
	if _, err := migrations.Migrate(ctx, r.pool); err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	svc := notifier.NewService(r.pool, nil, nil)
	if _, r.secret, err = svc.CreateAPIKey(ctx, "chaos", []string{notifier.ScopeSend, notifier.ScopeAdmin}); err != nil {
		return fmt.Errorf("creating an API key: %w", err)
	}
	r.say("PostgreSQL %s: a throwaway durable cluster (fsync on) in %s, port %d", version, dir, cluster.Port)
	return nil
}

// seed writes both audiences straight into the tables (off the clock): group
// "main" (ids m0000001..) and group "cancel" (c0000001..), each with an email
// address and one Android device whose token is "tok-" + id.
func (r *cxRun) seed(ctx context.Context) error {
	start := time.Now()
	for _, g := range []struct {
		prefix, group string
		n             int
	}{{"m", "main", r.o.recipients}, {"c", "cancel", r.o.cancelRecipients}} {
		if _, err := r.pool.Exec(ctx, `
			INSERT INTO recipients (id, email, locale, timezone, attributes)
			SELECT $1::text || lpad(i::text, 7, '0'), $1::text || lpad(i::text, 7, '0') || '`+cxDomain+`', 'en-US', 'UTC',
				jsonb_build_object('name', 'Person ' || $1::text || i::text, 'group', $2::text)
			FROM generate_series(1, $3::int) AS i`, g.prefix, g.group, g.n); err != nil {
			return err
		}
		if _, err := r.pool.Exec(ctx, `
			INSERT INTO devices (recipient_id, token, platform)
			SELECT $1::text || lpad(i::text, 7, '0'), 'tok-' || $1::text || lpad(i::text, 7, '0'), 'android'
			FROM generate_series(1, $2::int) AS i`, g.prefix, g.n); err != nil {
			return err
		}
	}
	for _, q := range []string{"VACUUM (ANALYZE) recipients", "VACUUM (ANALYZE) devices", "CHECKPOINT"} {
		if _, err := r.pool.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	r.say("seeded %s + %s recipients with one device each in SQL in %s", thousands(int64(r.o.recipients)),
		thousands(int64(r.o.cancelRecipients)), bcSeconds(time.Since(start)))
	return nil
}

// buildChildEnv is the environment of every notifyd process but its role and
// address. Each provider's global rate is what drains both audiences in about
// the chaos phase (where the binary has a rate limiter; pace() covers the rest).
func (r *cxRun) buildChildEnv() []string {
	o := r.o
	rate := int(float64(o.recipients+o.cancelRecipients)/o.duration.Seconds()) + 1
	env := append(bcChildBaseEnv(),
		"DATABASE_URL="+r.dbURL,
		"NOTIFYD_SENDGRID_API_KEY="+r.sgKey,
		"NOTIFYD_SENDGRID_BASE_URL="+r.sgURL,
		"NOTIFYD_EMAIL_FROM=chaos@notifyd.example",
		"NOTIFYD_FCM_PROJECT_ID="+cxFCMProject,
		"NOTIFYD_FCM_CREDENTIALS=none",
		"NOTIFYD_FCM_ENDPOINT="+r.fcmURL+"/v1",
		"NOTIFYD_EMAIL_RATE="+strconv.Itoa(rate),
		"NOTIFYD_PUSH_RATE="+strconv.Itoa(rate),
		"NOTIFYD_LOG_FORMAT=json",
		"NOTIFYD_SHUTDOWN_TIMEOUT=2s",
		"NOTIFYD_SECRET="+bcRandomHex(24),
		"NOTIFYD_PUBLIC_URL=http://notifyd.chaos.example",
	)
	r.sendTO = 30 * time.Second
	help, _ := exec.Command(o.binary, "help", "serve").CombinedOutput()
	for _, k := range cxKnobs {
		switch {
		case !bytes.Contains(help, []byte(k.env)):
			if o.fastRecovery {
				r.say("knob %s: this binary does not have it (%s); the run takes longer", k.env, k.what)
			}
		case o.fastRecovery:
			env = append(env, k.env+"="+k.value)
			r.knobs = append(r.knobs, k.env+"="+k.value)
			if k.env == "NOTIFYD_SEND_TIMEOUT" {
				r.sendTO, _ = time.ParseDuration(k.value)
			}
		}
	}
	if len(r.knobs) > 0 {
		r.say("fast recovery: workers get %s", strings.Join(r.knobs, " "))
	}
	r.say("provider rates: NOTIFYD_EMAIL_RATE=NOTIFYD_PUSH_RATE=%d/s (both audiences in about %s)", rate, o.duration)
	return env
}

// Processes.

func (r *cxRun) startProcesses(ctx context.Context) error {
	port, err := bcFreePort()
	if err != nil {
		return err
	}
	r.apiAddr = "127.0.0.1:" + strconv.Itoa(port)
	r.apiBase = "http://" + r.apiAddr
	r.slots = make([]*cxProc, 1+r.o.workers)
	// Stop them (SIGTERM, then SIGKILL) before the fakes and the database go.
	r.undo = append(r.undo, r.stopProcesses)
	errs := make([]error, len(r.slots))
	var wg sync.WaitGroup
	for i := range r.slots {
		wg.Go(func() { _, errs[i] = r.launch(ctx, i, 30*time.Second) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// launch starts the process of slot (0: the API, else a worker) and waits until
// it is ready, starting it again while it fails at startup (PostgreSQL may be
// restarting), for up to limit.
func (r *cxRun) launch(ctx context.Context, slot int, limit time.Duration) (*cxProc, error) {
	deadline := time.Now().Add(limit)
	for attempt := 1; ; attempt++ {
		if r.stopping.Load() {
			return nil, errors.New("stopping")
		}
		p, err := r.startProc(slot)
		if err != nil {
			return nil, err
		}
		err = r.waitReady(ctx, p, deadline)
		if err == nil {
			p.ready.Store(true)
			r.procMu.Lock()
			r.slots[slot] = p
			r.procMu.Unlock()
			return p, nil
		}
		p.killed.Store(true)
		_ = p.cmd.Process.Kill()
		<-p.done
		if ctx.Err() != nil || time.Now().After(deadline) {
			return nil, fmt.Errorf("notifyd %s did not become ready within %s (%d attempts): %w", p.name, limit, attempt, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (r *cxRun) startProc(slot int) (*cxProc, error) {
	// Under the lock, so that stopProcesses sees every process started.
	r.procMu.Lock()
	defer r.procMu.Unlock()
	if r.stopping.Load() {
		return nil, errors.New("stopping")
	}
	p := &cxProc{role: "worker", done: make(chan struct{}), startedAt: time.Now()}
	addr := "127.0.0.1:0"
	if slot == 0 {
		p.role, p.name, addr = "api", fmt.Sprintf("api-%d", len(r.procs)), r.apiAddr
	} else {
		r.nextWorker++
		p.name = fmt.Sprintf("worker-%d", r.nextWorker)
	}
	p.logPath = filepath.Join(r.workDir, p.name+".log")
	logFile, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(r.o.binary, "serve")
	cmd.Env = append(slices.Clone(r.childEnv), "NOTIFYD_ROLE="+p.role, "NOTIFYD_ADDR="+addr)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Own process group: a Ctrl-C reaches only us. Pdeathsig: if we are killed
	// outright, they go too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", r.o.binary, err)
	}
	p.cmd, p.pid = cmd, cmd.Process.Pid
	r.procs = append(r.procs, p)
	go func() {
		p.exitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// waitReady waits until a worker logs "workers started", or the API answers /readyz.
func (r *cxRun) waitReady(ctx context.Context, p *cxProc, deadline time.Time) error {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		if p.role == "worker" && bcFileContains(p.logPath, `"workers started"`) {
			return nil
		}
		if p.role == "api" && bcFileContains(p.logPath, `"listening"`) {
			if resp, err := client.Get(r.apiBase + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited during startup: %v\n%s", p.exitErr, bcTail(p.logPath, 5))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready:\n%s", bcTail(p.logPath, 5))
		}
	}
}

// supervise notices a process that exits without being killed, counts it
// against the run, and starts another in its place.
func (r *cxRun) supervise(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.procMu.Lock()
		slots := slices.Clone(r.slots)
		r.procMu.Unlock()
		for i, p := range slots {
			if p == nil || !p.exited() || p.killed.Load() || r.stopping.Load() || !p.handled.CompareAndSwap(false, true) {
				continue
			}
			r.repMu.Lock()
			r.rep.selfExits++
			r.repMu.Unlock()
			r.event("!! %s (pid %d) exited by itself (%v); starting another", p.name, p.pid, p.exitErr)
			r.violation("notifyd %s (pid %d) exited without being killed: %v; its log ends:\n%s", p.name, p.pid, p.exitErr, bcTail(p.logPath, 8))
			go func() {
				if np, err := r.launch(ctx, i, 2*time.Minute); err != nil {
					r.violation("could not replace %s: %v", p.name, err)
				} else {
					r.event("%s (pid %d) replaces %s", np.name, np.pid, p.name)
				}
			}()
		}
	}
}

// killWorker SIGKILLs a random ready worker and starts another in its place.
func (r *cxRun) killWorker(ctx context.Context, n int) {
	r.procMu.Lock()
	var candidates []int
	for i := 1; i < len(r.slots); i++ {
		if p := r.slots[i]; p != nil && p.ready.Load() && !p.killed.Load() && !p.exited() {
			candidates = append(candidates, i)
		}
	}
	if len(candidates) == 0 {
		r.procMu.Unlock()
		r.event("kill %d: no worker is up; skipped", n)
		return
	}
	slot := candidates[rand.IntN(len(candidates))]
	p := r.slots[slot]
	p.killed.Store(true)
	r.procMu.Unlock()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	r.repMu.Lock()
	r.rep.kills++
	r.repMu.Unlock()
	r.event("kill %d: SIGKILL %s (pid %d, up %s)", n, p.name, p.pid, bcSeconds(time.Since(p.startedAt)))
	start := time.Now()
	np, err := r.launch(ctx, slot, 2*time.Minute)
	if err != nil {
		r.violation("kill %d: the replacement worker did not start: %v", n, err)
		return
	}
	r.event("kill %d: %s (pid %d) replaces it, ready in %s", n, np.name, np.pid, bcSeconds(time.Since(start)))
}

// stopProcesses stops every process still running: SIGTERM, then SIGKILL.
func (r *cxRun) stopProcesses() {
	r.procMu.Lock()
	if r.stopping.Swap(true) {
		r.procMu.Unlock()
		return
	}
	procs := slices.Clone(r.procs)
	r.procMu.Unlock()
	for _, p := range procs {
		if p.cmd != nil && !p.exited() {
			p.killed.Store(true)
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range procs {
		if p.cmd == nil {
			continue
		}
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			r.say("notifyd %s (pid %d) did not stop within 30 s of SIGTERM: killing it", p.name, p.pid)
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// PostgreSQL.

// restartPostgres restarts the cluster in place (same port) and returns once a
// new postmaster takes connections, detected by its start time: pg_ctl -w
// returns when the server accepts connections, but the run confirms it from the
// outside, as the workers see it.
func (r *cxRun) restartPostgres(ctx context.Context) (time.Duration, error) {
	var before time.Time
	if err := r.pool.QueryRow(ctx, "SELECT pg_postmaster_start_time()").Scan(&before); err != nil {
		return 0, err
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- r.cluster.Restart(context.WithoutCancel(ctx), r.o.pgMode) }()
	deadline := start.Add(2 * time.Minute)
	for {
		select {
		case err := <-done:
			if err != nil {
				return 0, err
			}
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		conn, err := pgx.Connect(cctx, r.adminURL)
		if err == nil {
			var now time.Time
			err = conn.QueryRow(cctx, "SELECT pg_postmaster_start_time()").Scan(&now)
			conn.Close(cctx)
			if err == nil && now.After(before) {
				cancel()
				return time.Since(start), nil
			}
		}
		cancel()
		if time.Now().After(deadline) {
			return 0, errors.New("PostgreSQL did not come back within 2 minutes")
		}
	}
}

// The API.

func (r *cxRun) call(ctx context.Context, method, path, idemKey string, body []byte) (int, http.Header, []byte, error) {
	return newAPIClient(r.apiBase, r.secret).do(ctx, method, path, idemKey, body)
}

func (r *cxRun) view(ctx context.Context, id int64) (*cxView, error) {
	status, _, raw, err := r.call(ctx, http.MethodGet, "/v1/broadcasts/"+strconv.FormatInt(id, 10), "", nil)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("GET /v1/broadcasts/%d = %d %s", id, status, bcSnippet(raw))
	}
	v := &cxView{}
	return v, json.Unmarshal(raw, v)
}

func (r *cxRun) createSegments(ctx context.Context) error {
	for _, s := range []struct{ key, group string }{{"chaos-main", "main"}, {"chaos-cancel", "cancel"}} {
		body, _ := json.Marshal(map[string]any{"description": "chaos run, group " + s.group,
			"filter": map[string]any{"attr": "group", "op": "eq", "value": s.group}})
		status, _, raw, err := r.call(ctx, http.MethodPut, "/v1/segments/"+s.key, "", body)
		if err != nil {
			return err
		}
		if status != http.StatusOK && status != http.StatusCreated {
			return fmt.Errorf("PUT /v1/segments/%s = %d %s", s.key, status, bcSnippet(raw))
		}
	}
	return nil
}

func cxBroadcastBody(name, segment string) []byte {
	body, _ := json.Marshal(map[string]any{
		"name": name, "category": "news", "segment": segment, "channels": []string{"email", "push"},
		"email": map[string]string{
			"subject": "News for {{.Recipient.Attributes.name}}",
			"text":    "Hello {{.Recipient.Attributes.name}},\n\nthere is news.\n",
			"html":    "<p>Hello {{.Recipient.Attributes.name}},</p><p>there is news.</p>",
		},
		"push": map[string]any{"title": "News", "body": "For {{.Recipient.Attributes.name}}", "data": map[string]string{"kind": "chaos"}},
	})
	return body
}

// storm POSTs the create request of broadcast 1 from many goroutines at once,
// all with the same Idempotency-Key and body.
func (r *cxRun) storm(ctx context.Context, n int, label string) *cxRound {
	o := r.o
	round := &cxRound{n: n, label: label, requests: o.replayers, at: r.since(), ids: map[int64]int{}}
	type reply struct {
		status   int
		id       int64
		replayed bool
		err      error
		raw      []byte
	}
	replies := make([]reply, o.replayers)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range replies {
		wg.Go(func() {
			<-gate
			status, hdr, raw, err := r.call(ctx, http.MethodPost, "/v1/broadcasts", r.key1, r.body1)
			rp := reply{status: status, err: err, raw: raw}
			if err == nil && status == http.StatusAccepted {
				var v struct {
					ID int64 `json:"id"`
				}
				_ = json.Unmarshal(raw, &v)
				rp.id, rp.replayed = v.ID, hdr.Get("Idempotent-Replayed") == "true"
			}
			replies[i] = rp
		})
	}
	start := time.Now()
	close(gate)
	wg.Wait()
	round.took = time.Since(start)
	for _, rp := range replies {
		switch {
		case rp.err != nil:
			round.transport++
			round.details = append(round.details, rp.err.Error())
		case rp.status == http.StatusAccepted:
			round.ids[rp.id]++
			if rp.replayed {
				round.replayed++
			} else {
				round.created++
			}
		case rp.status == http.StatusConflict:
			round.conflict++
		case rp.status >= 500:
			round.server5x++
			round.details = append(round.details, fmt.Sprintf("%d %s", rp.status, bcSnippet(rp.raw)))
		default:
			round.other++
			round.details = append(round.details, fmt.Sprintf("%d %s", rp.status, bcSnippet(rp.raw)))
		}
	}
	r.repMu.Lock()
	r.rep.rounds = append(r.rep.rounds, round)
	r.repMu.Unlock()
	r.event("replay round %d (%s): %d concurrent POSTs in %s: %d created, %d replayed, %d 409, %d 5xx, %d other, %d transport errors",
		n, label, o.replayers, bcSeconds(round.took), round.created, round.replayed, round.conflict, round.server5x, round.other, round.transport)
	return round
}

// The chaos phase.

func (r *cxRun) chaos(ctx context.Context) error {
	o := r.o
	r.key1 = "chaos-main-" + bcRandomHex(8)
	r.body1 = cxBroadcastBody("chaos: must complete", "chaos-main")
	r.t0 = time.Now()
	paceCtx, stopPace := context.WithCancel(ctx)
	r.undo = append(r.undo, stopPace)
	go r.pace(paceCtx)

	first := r.storm(ctx, 1, "create")
	for id := range first.ids {
		r.b1 = id
	}
	if first.created != 1 || len(first.ids) != 1 {
		r.violation("one request, one effect: the first round of %d concurrent POSTs created %d broadcast(s) with %d distinct id(s)",
			o.replayers, first.created, len(first.ids))
	}
	if r.b1 == 0 {
		return fmt.Errorf("the first round of POST /v1/broadcasts created nothing: %v", first.details)
	}
	r.event("broadcast %d (%s recipients) created", r.b1, thousands(int64(o.recipients)))
	// The second broadcast drains beside the first (the provider rates are
	// shared), so it is part-way when the cancel comes.
	if err := r.createSecond(ctx); err != nil {
		return fmt.Errorf("creating the second broadcast: %w", err)
	}

	var wg sync.WaitGroup
	at := func(d time.Duration, f func()) {
		wg.Go(func() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(r.t0.Add(d))):
			}
			f()
		})
	}
	for i, t := range o.killTimes() {
		at(t, func() { r.killWorker(ctx, i+1) })
	}
	restartAt := o.duration * 35 / 100
	if o.pgMode != "none" {
		at(restartAt, func() {
			r.event("PostgreSQL: pg_ctl restart -m %s ...", o.pgMode)
			d, err := r.restartPostgres(ctx)
			if err != nil {
				r.violation("restarting PostgreSQL: %v", err)
				r.event("PostgreSQL restart failed: %v", err)
				return
			}
			r.repMu.Lock()
			r.rep.pgDowntime = d
			r.repMu.Unlock()
			r.event("PostgreSQL is back (new postmaster) after %s", bcSeconds(d))
		})
	}
	// Round 2 races the restart; the others spread over the rest of the phase;
	// the last comes after the end (afterRounds).
	middle := o.replayRounds - 2
	for i := range middle {
		t := restartAt + 400*time.Millisecond // inside the outage (0.5 to 3 s)
		if i > 0 {
			t = o.duration/2 + o.duration*2/5*time.Duration(i)/time.Duration(max(1, middle-1))
		}
		label := "mid-run"
		if i == 0 && o.pgMode != "none" {
			label = "during the PostgreSQL restart"
		}
		at(t, func() { r.storm(ctx, 2+i, label) })
	}
	at(o.duration*45/100, func() { r.cancelSecond(ctx) })

	progressCtx, stopProgress := context.WithCancel(ctx)
	go r.progress(progressCtx)
	wg.Wait()
	// The phase lasts at least its duration, whatever ran early.
	select {
	case <-ctx.Done():
	case <-time.After(time.Until(r.t0.Add(o.duration))):
	}
	stopProgress()
	r.repMu.Lock()
	kills, selfExits := r.rep.kills, r.rep.selfExits
	r.repMu.Unlock()
	r.event("chaos phase over: %d kills, %d processes exited by themselves", kills, selfExits)
	return ctx.Err()
}

// createSecond creates broadcast 2, the one to cancel.
func (r *cxRun) createSecond(ctx context.Context) error {
	status, _, raw, err := r.call(ctx, http.MethodPost, "/v1/broadcasts", "chaos-cancel-"+bcRandomHex(8), cxBroadcastBody("chaos: cancelled mid-run", "chaos-cancel"))
	if err != nil || status != http.StatusAccepted {
		return fmt.Errorf("%d %v %s", status, err, bcSnippet(raw))
	}
	var v struct {
		ID int64 `json:"id"`
	}
	if err := json.Unmarshal(raw, &v); err != nil || v.ID == 0 {
		return fmt.Errorf("no id in %s", bcSnippet(raw))
	}
	r.b2 = v.ID
	r.event("broadcast %d (%s recipients, to be cancelled) created", r.b2, thousands(int64(r.o.cancelRecipients)))
	return nil
}

// cancelSecond cancels broadcast 2 through the admin API, retrying while the API
// cannot answer (the database may be restarting), and notes when the 200 arrived.
func (r *cxRun) cancelSecond(ctx context.Context) {
	path := fmt.Sprintf("/admin/v1/broadcasts/%d/cancel", r.b2)
	for attempt := 1; ctx.Err() == nil; attempt++ {
		sent := time.Now()
		r.event("POST %s ...", path)
		status, _, raw, err := r.call(ctx, http.MethodPost, path, "", nil)
		returned := time.Now()
		if err == nil && status == http.StatusOK {
			res := &notifier.ControlResult{}
			if err := json.Unmarshal(raw, res); err != nil {
				r.violation("cancel answered 200 with %s: %v", bcSnippet(raw), err)
				return
			}
			r.repMu.Lock()
			r.rep.cancelSent, r.rep.cancelAt, r.rep.cancelRes, r.rep.cancelTook = sent, returned, res, returned.Sub(sent)
			r.repMu.Unlock()
			r.event("cancel of broadcast %d returned after %s: status %s, sent %s, in flight %s, pending %s, cancelled %s",
				r.b2, bcSeconds(returned.Sub(sent)), res.Status, thousands(res.Counts.Sent), thousands(res.Counts.InFlight),
				thousands(res.Counts.Pending), thousands(res.Counts.Cancelled))
			return
		}
		r.event("cancel attempt %d: %d %v %s; retrying", attempt, status, err, bcSnippet(raw))
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// pace keeps each fake's latency such that the drain lasts about the chaos
// phase even when the binary does not pace itself: a provider that slows down
// when it is pushed. It never lets a request take long enough to time out.
func (r *cxRun) pace(ctx context.Context) {
	o := r.o
	total := float64(o.recipients + o.cancelRecipients)
	type lane struct {
		name        string
		count       func() int
		floor, ceil time.Duration
		delay       time.Duration
	}
	lanes := []*lane{
		{name: "email", count: r.sendgrid.Count, floor: 5 * time.Millisecond, ceil: r.sendTO / 4},
		// SendEach sends up to 500 messages 50 at a time: ten rounds in one call.
		{name: "push", count: r.fcm.Count, floor: 5 * time.Millisecond, ceil: r.sendTO / 15},
	}
	r.paceMu.Lock()
	r.paceRanges = map[string][2]time.Duration{}
	r.paceMu.Unlock()
	for _, l := range lanes {
		l.delay = l.ceil / 4
	}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		want := min(1, r.since().Seconds()/o.duration.Seconds()) * total
		for _, l := range lanes {
			got := float64(l.count())
			switch {
			case got > want+total/50:
				l.delay = min(l.ceil, max(2*l.floor, l.delay*3/2))
			case got < want:
				l.delay = max(l.floor, l.delay*2/3)
			}
			r.paceMu.Lock()
			rg, ok := r.paceRanges[l.name]
			if !ok {
				rg = [2]time.Duration{l.delay, l.delay}
			}
			r.paceRanges[l.name] = [2]time.Duration{min(rg[0], l.delay), max(rg[1], l.delay)}
			r.paceMu.Unlock()
		}
		r.setFaults(lanes[0].delay, lanes[1].delay)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *cxRun) progress(ctx context.Context) {
	total := int64(r.o.recipients + r.o.cancelRecipients)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
		r.say("[%6.1fs] the fakes accepted: email %s / %s, push %s / %s", r.since().Seconds(),
			thousands(int64(r.sendgrid.Count())), thousands(total), thousands(int64(r.fcm.Count())), thousands(total))
	}
}

// waitFinal polls both broadcasts until they are final: broadcast 1 completed
// (or failed) and broadcast 2 cancelled, neither with a delivery pending or in flight.
func (r *cxRun) waitFinal(ctx context.Context) {
	o := r.o
	deadline := r.t0.Add(o.timeout)
	final := func(v *cxView) bool {
		if v == nil || v.Counts.Pending != 0 || v.Counts.Sending != 0 {
			return false
		}
		return (v.Status == notifier.StatusCompleted && v.Expanded) || v.Status == notifier.StatusCancelled || v.Status == notifier.StatusFailed
	}
	var v1, v2 *cxView
	lastLine := time.Time{}
	lastKey, lastChange := "", time.Now()
	for {
		if a, err := r.view(ctx, r.b1); err == nil {
			v1 = a
			if final(v1) && r.rep.completed1 == 0 {
				r.rep.completed1 = r.since()
				r.event("broadcast %d is %s", r.b1, v1.Status)
			}
		}
		if b, err := r.view(ctx, r.b2); err == nil {
			v2 = b
		}
		if final(v1) && final(v2) {
			r.rep.final1, r.rep.final2, r.rep.allFinal = v1, v2, r.since()
			r.event("both broadcasts are final: %d %s, %d %s", r.b1, v1.Status, r.b2, v2.Status)
			return
		}
		if time.Since(lastLine) >= 10*time.Second {
			lastLine = time.Now()
			r.say("[%6.1fs] waiting for the end: %s | %s", r.since().Seconds(), cxProgress(v1), cxProgress(v2))
			r.say("          delivery jobs: %s", r.jobStates(ctx))
		}
		if key := cxProgress(v1) + cxProgress(v2); key != lastKey {
			lastKey, lastChange = key, time.Now()
		}
		stalled := time.Since(lastChange) > o.stall
		if ctx.Err() != nil || time.Now().After(deadline) || stalled {
			r.rep.final1, r.rep.final2 = v1, v2
			why := fmt.Sprintf("the broadcasts were not final %s after the first POST", bcSeconds(r.since()))
			if stalled {
				why = fmt.Sprintf("no delivery changed state for %s", o.stall)
			}
			r.violation("nothing accepted is lost: %s: %s | %s; delivery jobs: %s", why, cxProgress(v1), cxProgress(v2), r.jobStates(ctx))
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// jobStates describes the delivery jobs that are not finished, for a run that
// is slow to end: how many in each River state, and for how long.
func (r *cxRun) jobStates(ctx context.Context) string {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := r.pool.Query(qctx, `SELECT state::text, count(*), count(DISTINCT attempted_by[array_length(attempted_by, 1)]),
			extract(epoch FROM now() - min(attempted_at)), extract(epoch FROM max(scheduled_at) - now()), max(attempt)
		FROM river_job WHERE kind = 'notifyd.deliver' AND state NOT IN ('completed', 'cancelled', 'discarded')
		GROUP BY 1 ORDER BY 1`)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var parts []string
	for rows.Next() {
		var state string
		var n, clients int64
		var oldest, latest *float64
		var attempt *int64
		if err := rows.Scan(&state, &n, &clients, &oldest, &latest, &attempt); err != nil {
			return err.Error()
		}
		p := fmt.Sprintf("%d %s", n, state)
		switch {
		case state == "running" && oldest != nil:
			p += fmt.Sprintf(" (on %d clients, oldest attempt %.0f s ago)", clients, *oldest)
		case (state == "scheduled" || state == "retryable") && latest != nil:
			p += fmt.Sprintf(" (last due in %.0f s)", *latest)
		}
		if attempt != nil && *attempt > 1 {
			p += fmt.Sprintf(" [attempt up to %d]", *attempt)
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return "none open"
	}
	return strings.Join(parts, ", ")
}

func cxProgress(v *cxView) string {
	if v == nil {
		return "(no answer)"
	}
	c := v.Counts
	return fmt.Sprintf("#%d %s: %s deliveries, %s pending, %s sending, %s sent, %s failed, %s unknown, %s cancelled", v.ID, v.Status,
		thousands(c.Deliveries), thousands(c.Pending), thousands(c.Sending), thousands(c.Sent), thousands(c.Failed),
		thousands(c.Unknown), thousands(c.Cancelled))
}

// afterRounds replays the create request once more after the end (every answer
// must be the original), and once with another body (422).
func (r *cxRun) afterRounds(ctx context.Context) {
	last := r.storm(ctx, r.o.replayRounds, "after the end")
	if last.server5x+last.transport > 0 {
		r.violation("one request, one effect: after the end, %d replays failed (5xx or transport): %v", last.server5x+last.transport, last.details)
	}
	var other map[string]any
	_ = json.Unmarshal(r.body1, &other)
	other["name"] = "something else"
	body, _ := json.Marshal(other)
	status, _, _, err := r.call(ctx, http.MethodPost, "/v1/broadcasts", r.key1, body)
	r.rep.wrongBody = status
	if err != nil || status != http.StatusUnprocessableEntity {
		r.violation("one request, one effect: the same key with another body answered %d (%v), want 422", status, err)
	}
}

// Measurement.

type cxDelivery struct {
	broadcast int64
	channel   string
	recipient string
	status    string
}

// measure reads the fakes' records and the deliveries, and checks them against
// the API's counts.
func (r *cxRun) measure(ctx context.Context) error {
	rep := r.rep
	o := r.o
	if err := r.pool.QueryRow(ctx, "SELECT count(*) FROM broadcasts").Scan(&rep.broadcastsDB); err != nil {
		return err
	}
	if rep.broadcastsDB != 2 {
		r.violation("one request, one effect: %d broadcasts in the database, want 2", rep.broadcastsDB)
	}
	rows, err := r.pool.Query(ctx, `SELECT id, broadcast_id, channel, recipient_id, status FROM deliveries WHERE broadcast_id = ANY($1)`, []int64{r.b1, r.b2})
	if err != nil {
		return err
	}
	deliveries := map[int64]*cxDelivery{}
	for rows.Next() {
		var id int64
		d := &cxDelivery{}
		if err := rows.Scan(&id, &d.broadcast, &d.channel, &d.recipient, &d.status); err != nil {
			rows.Close()
			return err
		}
		deliveries[id] = d
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}

	type key struct {
		id      int64
		channel string
	}
	byKey := map[key]*cxRow{}
	for _, b := range []struct {
		label    string
		id       int64
		audience int
		view     *cxView
	}{{"must complete", r.b1, o.recipients, rep.final1}, {"cancelled", r.b2, o.cancelRecipients, rep.final2}} {
		for _, ch := range []string{notifier.ChannelEmail, notifier.ChannelPush} {
			row := &cxRow{label: b.label, id: b.id, channel: ch, audience: int64(b.audience)}
			if b.view != nil {
				row.api = b.view.Channels[ch]
			}
			byKey[key{b.id, ch}] = row
			rep.rows = append(rep.rows, row)
		}
	}
	for _, d := range deliveries {
		if row := byKey[key{d.broadcast, d.channel}]; row != nil {
			cxAdd(&row.db, d.status)
		}
	}
	if rep.allFinal == 0 {
		// The API's last counts are older than what the processes did until they
		// stopped; compare the fakes with the deliveries table instead.
		for _, row := range rep.rows {
			row.api = row.db
		}
		r.note("the broadcasts were not final: the deliveries table shows the counts, as it stood after the processes stopped")
	}

	// What the providers received, by delivery id and by address or token.
	type msg struct {
		broadcast, delivery string
		channel, addr       string
		start               time.Time
	}
	var msgs []msg
	for _, m := range r.sendgrid.Messages() {
		msgs = append(msgs, msg{m.CustomArgs["notifyd_broadcast_id"], m.CustomArgs["notifyd_delivery_id"], notifier.ChannelEmail, strings.ToLower(m.To), m.RequestStart})
	}
	for _, m := range r.fcm.Messages() {
		if !m.ValidateOnly {
			msgs = append(msgs, msg{m.Data["notifyd_broadcast_id"], m.Data["notifyd_delivery_id"], notifier.ChannelPush, m.Token, m.Start})
		}
	}
	perID := map[int64]int{}
	perAddr := map[string]int{}
	stray := 0
	for _, m := range msgs {
		id, err := strconv.ParseInt(m.delivery, 10, 64)
		d := deliveries[id]
		if err != nil || d == nil || strconv.FormatInt(d.broadcast, 10) != m.broadcast || d.channel != m.channel {
			stray++
			if stray <= 3 {
				r.violation("the %s provider received a message that is no delivery of broadcast %s on %s: delivery id %q, to %s",
					m.channel, m.broadcast, m.channel, m.delivery, m.addr)
			}
			continue
		}
		row := byKey[key{d.broadcast, d.channel}]
		row.received++
		perID[id]++
		if perID[id] > 1 {
			row.dupID++
		} else {
			switch d.status {
			case notifier.DeliverySent:
				row.recvSent++
			case notifier.DeliveryUnknown:
				row.recvUnkn++
			default:
				row.recvOther++
			}
		}
		addrKey := m.broadcast + "/" + m.channel + "/" + m.addr
		perAddr[addrKey]++
		if perAddr[addrKey] > 1 {
			row.dupAddr++
		}
		want := d.recipient + cxDomain
		if m.channel == notifier.ChannelPush {
			want = "tok-" + d.recipient
		}
		if m.addr != want {
			row.wrongAddr++
		}
		if d.broadcast == r.b2 && rep.cancelRes != nil && m.start.After(rep.cancelAt) {
			row.after++
		}
		if d.broadcast == r.b2 && m.start.After(rep.lastB2Start) {
			rep.lastB2Start = m.start
		}
	}
	if stray > 3 {
		r.violation("... %d such messages in all", stray)
	}
	for id, d := range deliveries {
		if d.status == notifier.DeliverySent && perID[id] == 0 {
			byKey[key{d.broadcast, d.channel}].missing++
		}
	}
	// Cancel means stop: no provider call for broadcast 2 starts after the cancel
	// returned, accepted or not. FCM requests name their token; broadcast 2's are
	// tok-c....
	if rep.cancelRes != nil {
		for _, q := range r.fcm.Requests() {
			if strings.HasPrefix(q.Token, "tok-c") && q.Start.After(rep.cancelAt) {
				rep.pushAfter++
			}
		}
	}

	// Why deliveries did not go.
	rrows, err := r.pool.Query(ctx, `SELECT broadcast_id, channel, status, coalesce(reason, ''), count(*) FROM deliveries
		WHERE broadcast_id = ANY($1) AND status IN ('failed', 'unknown', 'suppressed')
		GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 5 DESC`, []int64{r.b1, r.b2})
	if err != nil {
		return err
	}
	for rrows.Next() {
		var b, n int64
		var ch, st, reason string
		if err := rrows.Scan(&b, &ch, &st, &reason, &n); err != nil {
			rrows.Close()
			return err
		}
		rep.reasons = append(rep.reasons, fmt.Sprintf("#%d %s %s: %s %s", b, ch, st, thousands(n), reason))
	}
	rrows.Close()
	rep.faults = r.faultFigures()
	r.check()
	return nil
}

func cxAdd(c *notifier.ChannelCounts, status string) {
	c.Deliveries++
	switch status {
	case notifier.DeliveryPending:
		c.Pending++
	case notifier.DeliverySending:
		c.Sending++
	case notifier.DeliverySent:
		c.Sent++
	case notifier.DeliveryFailed:
		c.Failed++
	case notifier.DeliverySuppressed:
		c.Suppressed++
	case notifier.DeliveryCancelled:
		c.Cancelled++
	case notifier.DeliveryUnknown:
		c.Unknown++
	}
}

// faultFigures summarises what each fake answered.
func (r *cxRun) faultFigures() []string {
	count := func(statuses []int) string {
		by := map[int]int{}
		for _, s := range statuses {
			by[s]++
		}
		var parts []string
		for _, s := range []int{200, 202, 500, 429, 0} {
			if by[s] == 0 {
				continue
			}
			what := map[int]string{200: "accepted", 202: "accepted", 500: "answered 500", 429: "answered 429 + Retry-After", 0: "timed out (no answer)"}[s]
			parts = append(parts, fmt.Sprintf("%s %s", thousands(int64(by[s])), what))
			delete(by, s)
		}
		var rest []int
		for s := range by {
			rest = append(rest, s)
		}
		slices.Sort(rest)
		for _, s := range rest {
			parts = append(parts, fmt.Sprintf("%s answered %d", thousands(int64(by[s])), s))
		}
		return fmt.Sprintf("%s requests: %s", thousands(int64(len(statuses))), strings.Join(parts, ", "))
	}
	var sg, fcm []int
	for _, q := range r.sendgrid.Requests() {
		sg = append(sg, q.Status)
	}
	for _, q := range r.fcm.Requests() {
		fcm = append(fcm, q.Status)
	}
	r.paceMu.Lock()
	defer r.paceMu.Unlock()
	return []string{
		fmt.Sprintf("email (SendGrid fake): %s; latency paced %s..%s", count(sg), r.paceRanges["email"][0], r.paceRanges["email"][1]),
		fmt.Sprintf("push (FCM fake): %s; latency paced %s..%s", count(fcm), r.paceRanges["push"][0], r.paceRanges["push"][1]),
	}
}

// check turns the figures into verdicts.
func (r *cxRun) check() {
	rep := r.rep
	// One request, one effect, over every round.
	created, ids := 0, map[int64]bool{}
	for _, rd := range rep.rounds {
		created += rd.created
		for id := range rd.ids {
			ids[id] = true
		}
		if rd.other > 0 {
			r.violation("one request, one effect: replay round %d (%s) had %d answers other than 202, 409 or 5xx: %v", rd.n, rd.label, rd.other, rd.details)
		}
		// 409 is for a key whose first request is still in flight; every round
		// after the first starts after that request returned.
		if rd.n > 1 && rd.conflict > 0 {
			r.violation("one request, one effect: replay round %d (%s, +%s): %d of %d replays answered 409 although the first request had returned long before; replays of a finished request must answer the original",
				rd.n, rd.label, bcSeconds(rd.at), rd.conflict, rd.requests)
		}
	}
	if created != 1 || len(ids) != 1 {
		r.violation("one request, one effect: %d rounds of replays created %d broadcasts (%d distinct ids answered)", len(rep.rounds), created, len(ids))
	}
	for _, v := range []struct {
		v    *cxView
		want string
		n    int
	}{{rep.final1, notifier.StatusCompleted, r.o.recipients}, {rep.final2, notifier.StatusCancelled, r.o.cancelRecipients}} {
		switch {
		case v.v == nil:
			r.violation("the API never answered for a broadcast")
		case v.v.Status != v.want:
			r.violation("broadcast %d ended %s, want %s", v.v.ID, v.v.Status, v.want)
		case v.v.Counts.Recipients != int64(v.n):
			r.violation("snapshot: broadcast %d has %d recipients, want %d", v.v.ID, v.v.Counts.Recipients, v.n)
		}
	}
	for _, row := range rep.rows {
		name := fmt.Sprintf("broadcast %d %s", row.id, row.channel)
		c := row.api
		if c != row.db && rep.allFinal > 0 {
			r.violation("%s: the API counts %+v, the deliveries table %+v", name, c, row.db)
		}
		if c.Deliveries != row.audience {
			r.violation("nothing accepted is lost: %s has %d deliveries for %d recipients", name, c.Deliveries, row.audience)
		}
		if c.Pending != 0 || c.Sending != 0 {
			r.violation("nothing accepted is lost: %s still has %d pending and %d sending", name, c.Pending, c.Sending)
		}
		if sum := c.Sent + c.Failed + c.Unknown + c.Suppressed + c.Cancelled; sum != c.Deliveries {
			r.violation("%s: sent+failed+unknown+suppressed+cancelled = %d, deliveries %d", name, sum, c.Deliveries)
		}
		if row.dupID > 0 || row.dupAddr > 0 {
			r.violation("one recipient, one message: %s: %d messages repeated a delivery id, %d repeated an address or token", name, row.dupID, row.dupAddr)
		}
		if row.recvSent != c.Sent || row.missing > 0 {
			r.violation("%s: the API counts %d sent, the fake received %d of them (%d sent but never received)", name, c.Sent, row.recvSent, row.missing)
		}
		if row.recvOther > 0 {
			r.violation("%s: the fake received %d deliveries whose status is neither sent nor unknown", name, row.recvOther)
		}
		if row.wrongAddr > 0 {
			r.violation("%s: %d messages went to an address or token not the delivery's recipient's", name, row.wrongAddr)
		}
		if row.after > 0 {
			r.violation("cancel means stop: %s: %d messages arrived in requests that started after the cancel returned", name, row.after)
		}
	}
	if rep.pushAfter > 0 {
		r.violation("cancel means stop: %d FCM requests for broadcast %d's tokens started after the cancel returned", rep.pushAfter, r.b2)
	}
	if res := rep.cancelRes; res == nil {
		r.violation("cancel means stop: the cancel of broadcast %d never returned 200", r.b2)
	} else {
		if res.Status != notifier.StatusCancelled {
			r.violation("cancel answered status %s", res.Status)
		}
		if res.Counts.Cancelled == 0 {
			r.violation("the run did not test cancel: broadcast %d had nothing left to cancel when the cancel returned (%+v)", r.b2, res.Counts)
		}
		if res.Counts.Sent == 0 {
			r.note("broadcast %d had sent nothing when it was cancelled: the cancel did not race any send", r.b2)
		}
		if v := rep.final2; v != nil && v.Counts.Sent > res.Counts.Sent+res.Counts.InFlight {
			r.violation("cancel means stop: broadcast %d counted %d sent at its cancel (+%d in flight) and %d at the end", r.b2, res.Counts.Sent, res.Counts.InFlight, v.Counts.Sent)
		}
	}
	if rep.kills == 0 {
		r.violation("the run killed no worker")
	}
	if r.o.pgMode != "none" && rep.pgDowntime == 0 {
		r.violation("the run did not restart PostgreSQL")
	}
}

// The report.

func (r *cxRun) printReport(rep *cxReport) {
	r.outMu.Lock()
	defer r.outMu.Unlock()
	r.repMu.Lock() // a straggling goroutine may still add an event
	defer r.repMu.Unlock()
	out := bufio.NewWriter(r.stdout)
	defer out.Flush()
	o := r.o
	fmt.Fprintf(out, "\nRESULTS  notifyd chaos: broadcast %d (%s recipients) and broadcast %d (%s recipients, cancelled), email and push; 1 API + %d workers\n",
		r.b1, thousands(int64(o.recipients)), r.b2, thousands(int64(o.cancelRecipients)), o.workers)
	final := "NOT final"
	if rep.allFinal > 0 {
		final = "final " + bcSeconds(rep.allFinal) + " after the first POST"
	}
	fmt.Fprintf(out, "setup %s; broadcasts %s; %d workers SIGKILLed; PostgreSQL restart (-m %s) down %s\n",
		bcSeconds(rep.created), final, rep.kills, o.pgMode, bcSeconds(rep.pgDowntime))
	if len(r.knobs) > 0 {
		fmt.Fprintf(out, "worker settings: %s\n", strings.Join(r.knobs, " "))
	}

	fmt.Fprintln(out, "\nprovider faults")
	for _, f := range rep.faults {
		fmt.Fprintln(out, "  "+f)
	}

	fmt.Fprintln(out, "\nidempotency (one Idempotency-Key, one body)")
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\tat\tPOSTs\tcreated\treplayed\t409\t5xx\tother\terrors\tids\twhen\t")
	rounds := slices.Clone(rep.rounds)
	slices.SortFunc(rounds, func(a, b *cxRound) int { return a.n - b.n })
	for _, rd := range rounds {
		var ids []string
		for id, n := range rd.ids {
			ids = append(ids, fmt.Sprintf("%d x%d", id, n))
		}
		slices.Sort(ids)
		fmt.Fprintf(tw, "%d\t%.1fs\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t\n", rd.n, rd.at.Seconds(), rd.requests, rd.created, rd.replayed,
			rd.conflict, rd.server5x, rd.other, rd.transport, strings.Join(ids, " "), rd.label)
	}
	tw.Flush()
	fmt.Fprintf(out, "  same key, other body: %d; broadcasts in the database: %d\n", rep.wrongBody, rep.broadcastsDB)

	fmt.Fprintln(out, "\ndeliveries (the API's counts; received, duplicates and after-cancel from the fakes' own records)")
	tw = tabwriter.NewWriter(out, 2, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "broadcast\tchannel\taudience\tdeliveries\tsent\tfailed\tunknown\tsuppressed\tcancelled\tpending+sending\treceived\tof sent\tof unknown\tdup id\tdup addr\tafter cancel\t")
	for _, row := range rep.rows {
		c := row.api
		fmt.Fprintf(tw, "%d %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t\n", row.id, row.label, row.channel,
			thousands(row.audience), thousands(c.Deliveries), thousands(c.Sent), thousands(c.Failed), thousands(c.Unknown),
			thousands(c.Suppressed), thousands(c.Cancelled), thousands(c.Pending+c.Sending), thousands(row.received),
			thousands(row.recvSent), thousands(row.recvUnkn), row.dupID, row.dupAddr, cxAfter(row))
	}
	tw.Flush()
	if res := rep.cancelRes; res != nil {
		last := "none arrived"
		if !rep.lastB2Start.IsZero() {
			last = "+" + bcSeconds(rep.lastB2Start.Sub(r.t0))
		}
		fmt.Fprintf(out, "  cancel of %d: answered %s after it was sent, at +%s: sent %s, in flight %s, cancelled %s; the last request carrying a message of %d started at %s; FCM requests for its tokens started after the cancel: %d\n",
			r.b2, bcSeconds(rep.cancelTook), bcSeconds(rep.cancelAt.Sub(r.t0)), thousands(res.Counts.Sent), thousands(res.Counts.InFlight),
			thousands(res.Counts.Cancelled), r.b2, last, rep.pushAfter)
	}
	if len(rep.reasons) > 0 {
		fmt.Fprintln(out, "  not sent, by reason: "+strings.Join(rep.reasons, "; "))
	}

	fmt.Fprintln(out, "\ntimeline")
	for _, e := range rep.events {
		fmt.Fprintf(out, "  [%6.1fs] %s\n", e.at.Seconds(), e.what)
	}
	for _, n := range rep.notes {
		fmt.Fprintf(out, "note: %s\n", n)
	}
	for _, v := range rep.violations {
		fmt.Fprintf(out, "\n!!! VIOLATION: %s\n", v)
	}
	if len(rep.violations) == 0 {
		fmt.Fprintln(out, "\nno invariant violated: one broadcast per key; nobody received a message twice on a channel; every recipient received, or counted failed, unknown, suppressed or cancelled, and the counts add up; nothing started after the cancel returned")
	}
}

func cxAfter(row *cxRow) string {
	if row.label != "cancelled" {
		return "-"
	}
	return strconv.FormatInt(row.after, 10)
}

func cxOffset(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
}

func cxOffsets(ds []time.Duration) string {
	if len(ds) == 0 {
		return "(none)"
	}
	var parts []string
	for _, d := range ds {
		parts = append(parts, cxOffset(d))
	}
	return strings.Join(parts, ", ")
}
