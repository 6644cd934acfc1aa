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
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/migrations"
	"github.com/notifyd/notifyd/migrations/localpg"
	"github.com/notifyd/notifyd/notifier"
)

// bench-import measures the recipient import and segment counts end to end: real
// HTTP into the real API, served in this process, over a database of its own.
//
//	import:  POST /v1/recipients/batch with N generated recipients
//	update:  the same endpoint again for every 10th recipient, with a new plan, so
//	         recipient_history holds rows (and the update path is measured too)
//	count:   GET /v1/segments/{key}/count, now and ?as_of= the middle of the import

// benchImportOptions are the flags of bench-import.
type benchImportOptions struct {
	recipients  int
	batch       int
	concurrency int
	runs        int
	databaseURL string
	cpuProfile  string
}

// benchSeed makes the generated directory the same on every run.
const benchSeed = 0x6e6f746966796421

// benchUpdateEvery: the update pass changes the plan of every n-th recipient.
const benchUpdateEvery = 10

func parseBenchImportFlags(args []string, getenv func(string) string, stderr io.Writer) (*benchImportOptions, error) {
	fs := flag.NewFlagSet("notifyd bench-import", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &benchImportOptions{}
	fs.IntVar(&o.recipients, "recipients", 1_000_000, "how many recipients to import")
	fs.IntVar(&o.batch, "batch", notifier.MaxBatchRecipients, "recipients per POST /v1/recipients/batch")
	fs.IntVar(&o.concurrency, "concurrency", 2, "requests in flight at once")
	fs.IntVar(&o.runs, "runs", 5, "how many times each segment count is timed")
	fs.StringVar(&o.databaseURL, "database-url", getenv("DATABASE_URL"),
		"PostgreSQL server to create a throwaway database on; empty: start a throwaway durable cluster (DATABASE_URL)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this process during the import to this file")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var problems []error
	if o.recipients < 1 {
		problems = append(problems, errors.New("--recipients must be at least 1"))
	}
	if o.batch < 1 || o.batch > notifier.MaxBatchRecipients {
		problems = append(problems, fmt.Errorf("--batch must be 1 to %d", notifier.MaxBatchRecipients))
	}
	if o.concurrency < 1 {
		problems = append(problems, errors.New("--concurrency must be at least 1"))
	}
	if o.runs < 1 {
		problems = append(problems, errors.New("--runs must be at least 1"))
	}
	return o, errors.Join(problems...)
}

func runBenchImport(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	opts, err := parseBenchImportFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	out := bufio.NewWriter(stdout)
	// Every line goes out at once: the progress lines are for a person watching.
	say := func(format string, a ...any) {
		fmt.Fprintf(out, format+"\n", a...)
		out.Flush()
	}

	// Off the clock: generate and encode every request body before the server
	// starts. The import then measures HTTP + decoding + validation + Postgres,
	// not the client's JSON encoding.
	say("notifyd bench-import: %s recipients, batches of %s, concurrency %d", thousands(int64(opts.recipients)), thousands(int64(opts.batch)), opts.concurrency)
	encodeStart := time.Now()
	work, err := buildBenchWork(opts.recipients, opts.batch)
	if err != nil {
		return err
	}
	rssAfterEncoding := procStatusKiB(os.Getpid(), "VmHWM")
	say("encoded %d import bodies (%s, %d bytes per recipient on average) and %d update bodies in %s (off the clock)",
		len(work.importBodies), mib(work.importBytes), work.importBytes/int64(opts.recipients), len(work.updateBodies), roundDuration(time.Since(encodeStart)))

	env, err := startBenchEnv(ctx, opts, stdout, stderr)
	if err != nil {
		return err
	}
	defer env.close(say)
	say("database %s on %s (%s)", env.database, env.where, env.serverVersion)
	say("API served in this process at %s", env.baseURL)

	client := &http.Client{Transport: &http.Transport{
		MaxIdleConns:        opts.concurrency + 2,
		MaxIdleConnsPerHost: opts.concurrency + 2,
		DisableCompression:  true,
	}}
	defer client.CloseIdleConnections()
	api := &benchAPI{client: client, baseURL: env.baseURL, secret: env.secret}

	if opts.cpuProfile != "" {
		f, err := os.Create(opts.cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
	}
	say("\nimporting ...")
	before := env.sampleCPU()
	imp, err := api.postAll(ctx, "import", work.importBodies, work.importSizes, opts.concurrency, say)
	importCPU := cpuBetween(before, env.sampleCPU())
	if opts.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	if imp.totals.Created != opts.recipients {
		return fmt.Errorf("import: the server reports %d recipients created, want %d", imp.totals.Created, opts.recipients)
	}

	say("updating the plan of every %dth recipient ...", benchUpdateEvery)
	before = env.sampleCPU()
	upd, err := api.postAll(ctx, "update", work.updateBodies, work.updateSizes, opts.concurrency, say)
	updateCPU := cpuBetween(before, env.sampleCPU())
	if err != nil {
		return fmt.Errorf("update pass: %w", err)
	}
	if upd.totals.Updated != work.updated {
		return fmt.Errorf("update pass: the server reports %d recipients updated, want %d", upd.totals.Updated, work.updated)
	}
	var history int64
	if err := env.pool.QueryRow(ctx, `SELECT count(*) FROM recipient_history`).Scan(&history); err != nil {
		return fmt.Errorf("counting recipient_history: %w", err)
	}

	segments := benchSegments(work)
	for _, s := range segments {
		if s.filter == "" {
			continue
		}
		if err := api.putSegment(ctx, s.key, s.filter); err != nil {
			return fmt.Errorf("PUT segment %s: %w", s.key, err)
		}
	}
	say("timing segment counts (%d runs each) ...", opts.runs)
	before = env.sampleCPU()
	now := make([]benchCount, len(segments))
	past := make([]benchCount, len(segments))
	for i, s := range segments {
		if now[i], err = api.timeCount(ctx, s.key, nil, opts.runs); err != nil {
			return fmt.Errorf("count %s: %w", s.key, err)
		}
	}
	for i, s := range segments {
		if past[i], err = api.timeCount(ctx, s.key, &imp.midpoint, opts.runs); err != nil {
			return fmt.Errorf("count %s as of %s: %w", s.key, imp.midpoint.Format(time.RFC3339Nano), err)
		}
	}

	countCPU := cpuBetween(before, env.sampleCPU())
	peakRSS := procStatusKiB(os.Getpid(), "VmHWM")
	say("")
	say("== Import: POST /v1/recipients/batch, real HTTP on loopback, concurrency %d ==", opts.concurrency)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PASS\tRECIPIENTS\tBATCHES\tTIME\tRECIPIENTS/S\tBATCH P50\tBATCH P95\tBATCH MAX\tCPU: NOTIFYD\tPOSTGRES\tOTHER")
	for _, p := range []struct {
		name string
		n    int
		r    *benchPhase
		cpu  cpuUse
	}{{"import", imp.totals.Created, imp, importCPU}, {"update", upd.totals.Updated, upd, updateCPU}} {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", p.name, thousands(int64(p.n)), len(p.r.latencies),
			roundDuration(p.r.elapsed), thousands(int64(float64(p.n)/p.r.elapsed.Seconds())),
			ms(percentile(p.r.latencies, 50)), ms(percentile(p.r.latencies, 95)), ms(slices.Max(p.r.latencies)),
			p.cpu)
	}
	tw.Flush()
	say("imported %s recipients (created %s); update pass changed %s, recipient_history holds %s rows",
		thousands(int64(imp.totals.Created)), thousands(int64(imp.totals.Created)), thousands(int64(upd.totals.Updated)), thousands(history))
	say("CPU in cores of %d: NOTIFYD is this process (API server and client), POSTGRES the benchmark's own cluster", runtime.NumCPU())
	say("(n/a on DATABASE_URL), OTHER the rest of the machine; more than 0.1 in OTHER means the figures are disturbed.")
	say("")
	say("== Segment counts: GET /v1/segments/{key}/count over %s recipients, %d runs each ==", thousands(int64(opts.recipients)), opts.runs)
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEGMENT\tAS OF\tCOUNT\tEXPECTED\tMEDIAN\tMIN\tMAX\tFILTER")
	for i, s := range segments {
		fmt.Fprintf(tw, "%s\tnow\t%s\t%s\t%s\t%s\t%s\t%s\n", s.key, thousands(now[i].count), thousands(s.expected),
			ms(now[i].median), ms(now[i].min), ms(now[i].max), s.describe)
	}
	for i, s := range segments {
		fmt.Fprintf(tw, "%s\tmid-import\t%s\t-\t%s\t%s\t%s\t%s\n", s.key, thousands(past[i].count),
			ms(past[i].median), ms(past[i].min), ms(past[i].max), s.describe)
	}
	tw.Flush()
	say("mid-import = %s, when half the recipients had been acknowledged", imp.midpoint.UTC().Format(time.RFC3339Nano))
	say("CPU during the counts (cores): %s", countCPU.cpuColumns(" "))
	say("")
	say("peak RSS (VmHWM) %s; %s of it was reached before the server started, holding the pre-encoded bodies.",
		kibString(peakRSS), kibString(rssAfterEncoding))
	say("The API server runs in this process, so the peak includes the client's bodies (%s).", mib(work.importBytes+work.updateBytes))

	var mismatches []string
	for i, s := range segments {
		if now[i].count != s.expected {
			mismatches = append(mismatches, fmt.Sprintf("%s counted %d, want %d", s.key, now[i].count, s.expected))
		}
	}
	if len(mismatches) > 0 {
		return fmt.Errorf("segment counts are wrong: %s", strings.Join(mismatches, "; "))
	}
	return nil
}

// benchEnv is the throwaway setup: database, schema, key and in-process API.
type benchEnv struct {
	cluster       *localpg.Cluster // nil with DATABASE_URL
	adminURL      string           // the server's URL, as given
	database      string
	where         string
	serverVersion string
	pool          *pgxpool.Pool
	server        *http.Server
	baseURL       string
	secret        string
}

// startBenchEnv creates a fresh database (on DATABASE_URL's server, else on a
// throwaway durable cluster), migrates it, makes a send key and serves the API on
// loopback. On error it undoes what it did.
func startBenchEnv(ctx context.Context, opts *benchImportOptions, stdout, stderr io.Writer) (env *benchEnv, err error) {
	env = &benchEnv{adminURL: opts.databaseURL}
	defer func() {
		if err != nil {
			env.close(func(string, ...any) {})
			env = nil
		}
	}()
	if env.adminURL == "" {
		localpg.SweepOrphans(os.TempDir(), "notifyd-bench-")
		dir, err := os.MkdirTemp("", "notifyd-bench-")
		if err != nil {
			return env, fmt.Errorf("cluster dir: %w", err)
		}
		fmt.Fprintf(stdout, "starting a throwaway PostgreSQL (durable: fsync on) in %s ...\n", dir)
		env.cluster, err = localpg.Start(ctx, dir, localpg.Options{Durable: true})
		if err != nil {
			os.RemoveAll(dir)
			return env, fmt.Errorf("starting PostgreSQL: %w", err)
		}
		env.adminURL = env.cluster.URL("postgres")
		env.where = "a throwaway durable cluster in " + dir
	} else {
		env.where = "the server of DATABASE_URL"
	}

	env.database = "notifyd_bench_" + randomHex(6)
	databaseURL, err := withBenchDatabase(env.adminURL, env.database)
	if err != nil {
		return env, err
	}
	admin, err := pgx.Connect(ctx, env.adminURL)
	if err != nil {
		return env, fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{env.database}.Sanitize()); err != nil {
		env.database = "" // nothing to drop
		return env, fmt.Errorf("creating database: %w", err)
	}
	if err := admin.QueryRow(ctx, "SHOW server_version").Scan(&env.serverVersion); err != nil {
		return env, fmt.Errorf("server version: %w", err)
	}
	env.serverVersion = "PostgreSQL " + env.serverVersion

	if env.pool, err = openDB(ctx, databaseURL); err != nil {
		return env, err
	}
	if _, err := migrations.Migrate(ctx, env.pool); err != nil {
		return env, fmt.Errorf("migrating: %w", err)
	}
	svc := notifier.NewService(env.pool, nil, nil)
	if _, env.secret, err = svc.CreateAPIKey(ctx, "bench-import", []string{notifier.ScopeSend}); err != nil {
		return env, fmt.Errorf("creating an API key: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return env, fmt.Errorf("listening: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	env.server = &http.Server{Handler: notifier.NewServer(svc, logger, nil), ReadHeaderTimeout: 10 * time.Second}
	env.baseURL = "http://" + ln.Addr().String()
	go env.server.Serve(ln) //nolint:errcheck // returns ErrServerClosed on close
	return env, nil
}

// close stops the server and removes the database and cluster. It runs on every
// exit, Ctrl-C included (run turns SIGINT into a cancelled context), with fresh
// contexts since ctx may be done.
func (env *benchEnv) close(say func(string, ...any)) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if env.server != nil {
		_ = env.server.Shutdown(ctx)
	}
	if env.pool != nil {
		env.pool.Close()
	}
	if env.database != "" && env.cluster == nil {
		// On a server we did not start, drop what we created; a throwaway cluster
		// goes as a whole.
		if admin, err := pgx.Connect(ctx, env.adminURL); err == nil {
			if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{env.database}.Sanitize()+" WITH (FORCE)"); err != nil {
				say("dropping database %s: %v", env.database, err)
			}
			admin.Close(ctx)
		}
	}
	if env.cluster != nil {
		if err := env.cluster.Destroy(); err != nil {
			say("removing the PostgreSQL cluster: %v", err)
		}
	}
}

// withBenchDatabase returns serverURL pointing at database name instead.
func withBenchDatabase(serverURL, name string) (string, error) {
	u, err := url.Parse(serverURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", errors.New("DATABASE_URL must be a postgres:// URL for bench-import")
	}
	if q := u.Query(); q.Has("dbname") {
		q.Set("dbname", name)
		u.RawQuery = q.Encode()
	}
	u.Path = "/" + name
	return u.String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// The generated directory.

var (
	benchPlans   = []string{"free", "pro", "team"}
	benchTags    = []string{"newsletter", "beta", "vip", "mobile", "early-adopter", "churn-risk"}
	benchRegions = []struct{ locale, timezone, country string }{
		{"en-US", "America/New_York", "US"}, {"en-US", "America/Los_Angeles", "US"},
		{"en-GB", "Europe/London", "GB"}, {"de-DE", "Europe/Berlin", "DE"},
		{"fr-FR", "Europe/Paris", "FR"}, {"pt-BR", "America/Sao_Paulo", "BR"},
		{"ja-JP", "Asia/Tokyo", "JP"}, {"es-MX", "America/Mexico_City", "MX"},
		{"en-IN", "Asia/Kolkata", "IN"}, {"nl-NL", "Europe/Amsterdam", "NL"},
		{"en-AU", "Australia/Sydney", "AU"}, {"sv-SE", "Europe/Stockholm", "SE"},
	}
)

// benchPerson is the part of a generated recipient that segments look at.
type benchPerson struct {
	plan string
	age  int
	tags []string
}

// benchRecipient returns recipient i, the same on every run; updated gives it the
// next plan, as the update pass sends it.
func benchRecipient(i int, updated bool) (notifier.RecipientInput, benchPerson) {
	rng := mathrand.New(mathrand.NewPCG(benchSeed, uint64(i)))
	id := fmt.Sprintf("r%07d", i)
	region := benchRegions[rng.IntN(len(benchRegions))]
	p := benchPerson{age: 18 + rng.IntN(62)}
	planIndex := 0 // free 60%, pro 30%, team 10%
	switch x := rng.IntN(10); {
	case x >= 9:
		planIndex = 2
	case x >= 6:
		planIndex = 1
	}
	if updated {
		planIndex = (planIndex + 1) % len(benchPlans)
	}
	p.plan = benchPlans[planIndex]
	p.tags = []string{}
	for _, t := range benchTags {
		if rng.IntN(4) == 0 {
			p.tags = append(p.tags, t)
		}
	}
	signup := time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, rng.IntN(1500))
	in := notifier.RecipientInput{
		ID:       id,
		Email:    id + "@example.com",
		Locale:   region.locale,
		Timezone: region.timezone,
		Attributes: map[string]any{
			"plan":        p.plan,
			"age":         p.age,
			"country":     region.country,
			"tags":        p.tags,
			"signup_date": signup.Format(time.DateOnly),
			"sessions":    rng.IntN(500),
			"marketing":   rng.IntN(3) != 0,
		},
	}
	return in, p
}

// benchWork is every request body, encoded up front, and the counts the
// segments must come to after the update pass.
type benchWork struct {
	importBodies, updateBodies [][]byte
	importSizes, updateSizes   []int // recipients per body
	importBytes, updateBytes   int64
	updated                    int
	total, pro, engaged        int64
}

func buildBenchWork(n, batch int) (*benchWork, error) {
	w := &benchWork{}
	var imports, updates []notifier.RecipientInput
	flush := func(list *[]notifier.RecipientInput, bodies *[][]byte, sizes *[]int, total *int64) error {
		if len(*list) == 0 {
			return nil
		}
		b, err := json.Marshal(map[string]any{"recipients": *list})
		if err != nil {
			return fmt.Errorf("encoding a batch: %w", err)
		}
		*bodies = append(*bodies, b)
		*sizes = append(*sizes, len(*list))
		*total += int64(len(b))
		*list = (*list)[:0]
		return nil
	}
	for i := range n {
		in, person := benchRecipient(i, false)
		imports = append(imports, in)
		if i%benchUpdateEvery == 0 {
			var changed notifier.RecipientInput
			changed, person = benchRecipient(i, true)
			updates = append(updates, changed)
			w.updated++
		}
		w.total++
		if person.plan == "pro" {
			w.pro++
		}
		if person.age >= 30 && (slices.Contains(person.tags, "beta") || slices.Contains(person.tags, "vip")) {
			w.engaged++
		}
		if len(imports) == batch {
			if err := flush(&imports, &w.importBodies, &w.importSizes, &w.importBytes); err != nil {
				return nil, err
			}
		}
		if len(updates) == batch {
			if err := flush(&updates, &w.updateBodies, &w.updateSizes, &w.updateBytes); err != nil {
				return nil, err
			}
		}
	}
	if err := flush(&imports, &w.importBodies, &w.importSizes, &w.importBytes); err != nil {
		return nil, err
	}
	if err := flush(&updates, &w.updateBodies, &w.updateSizes, &w.updateBytes); err != nil {
		return nil, err
	}
	return w, nil
}

type benchSegment struct {
	key      string
	filter   string // "" for the built-in segment
	describe string
	expected int64
}

func benchSegments(w *benchWork) []benchSegment {
	return []benchSegment{
		{key: "pro", filter: `{"attr":"plan","op":"eq","value":"pro"}`,
			describe: "plan eq pro", expected: w.pro},
		{key: "engaged", filter: `{"all":[{"attr":"age","op":"gte","value":30},{"any":[{"attr":"tags","op":"contains","value":"beta"},{"attr":"tags","op":"contains","value":"vip"}]}]}`,
			describe: "all[age gte 30, any[tags contains beta, tags contains vip]]", expected: w.engaged},
		{key: notifier.SegmentAll, describe: "built in: everyone", expected: w.total},
	}
}

// The HTTP side.

type benchAPI struct {
	client  *http.Client
	baseURL string
	secret  string
}

// benchPhase is what one pass of batch posts measured.
type benchPhase struct {
	elapsed   time.Duration
	latencies []time.Duration
	totals    notifier.BatchResult
	midpoint  time.Time // when half the recipients had been acknowledged
}

type batchOutcome struct {
	index   int
	latency time.Duration
	result  notifier.BatchResult
	err     error
}

// postAll posts every body to /v1/recipients/batch, concurrency at a time, and
// prints progress about every tenth of the way.
func (a *benchAPI) postAll(ctx context.Context, label string, bodies [][]byte, sizes []int, concurrency int, say func(string, ...any)) (*benchPhase, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	total := 0
	for _, n := range sizes {
		total += n
	}
	phase := &benchPhase{}
	start := time.Now()

	jobs := make(chan int)
	results := make(chan batchOutcome)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			for i := range jobs {
				t0 := time.Now()
				res, err := a.postBatch(ctx, bodies[i])
				results <- batchOutcome{index: i, latency: time.Since(t0), result: res, err: err}
			}
		})
	}
	go func() {
		defer close(jobs)
		for i := range bodies {
			select {
			case jobs <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() {
		wg.Wait()
		close(results)
	}()

	var firstErr error
	done := 0
	every := max(1, len(bodies)/10)
	for o := range results {
		if o.err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("batch %d: %w", o.index, o.err)
				cancel()
			}
			continue
		}
		phase.latencies = append(phase.latencies, o.latency)
		phase.totals.Received += o.result.Received
		phase.totals.Created += o.result.Created
		phase.totals.Updated += o.result.Updated
		phase.totals.Unchanged += o.result.Unchanged
		done += sizes[o.index]
		if phase.midpoint.IsZero() && done*2 >= total {
			phase.midpoint = time.Now()
		}
		if len(phase.latencies)%every == 0 || len(phase.latencies) == len(bodies) {
			elapsed := time.Since(start)
			say("  %-6s %3d%%  %9s recipients  %7s  %9s/s", label, done*100/total, thousands(int64(done)),
				roundDuration(elapsed), thousands(int64(float64(done)/elapsed.Seconds())))
		}
	}
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		return nil, firstErr
	}
	phase.elapsed = time.Since(start)
	return phase, nil
}

func (a *benchAPI) do(ctx context.Context, method, path string, body []byte) (*http.Response, []byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.baseURL+path, r)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.secret)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: reading the response: %w", method, path, err)
	}
	return resp, raw, nil
}

func (a *benchAPI) postBatch(ctx context.Context, body []byte) (notifier.BatchResult, error) {
	var res notifier.BatchResult
	resp, raw, err := a.do(ctx, http.MethodPost, "/v1/recipients/batch", body)
	if err != nil {
		return res, err
	}
	if resp.StatusCode != http.StatusOK {
		return res, fmt.Errorf("POST /v1/recipients/batch: %s: %s", resp.Status, snippet(raw))
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return res, fmt.Errorf("POST /v1/recipients/batch: decoding %q: %w", snippet(raw), err)
	}
	return res, nil
}

func (a *benchAPI) putSegment(ctx context.Context, key, filter string) error {
	body := []byte(`{"description":"bench-import","filter":` + filter + `}`)
	resp, raw, err := a.do(ctx, http.MethodPut, "/v1/segments/"+key, body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("%s: %s", resp.Status, snippet(raw))
	}
	return nil
}

// benchCount is a segment's count and how long the request took over the runs.
type benchCount struct {
	count            int64
	median, min, max time.Duration
}

func (a *benchAPI) timeCount(ctx context.Context, key string, asOf *time.Time, runs int) (benchCount, error) {
	path := "/v1/segments/" + key + "/count"
	if asOf != nil {
		path += "?" + url.Values{"as_of": {asOf.UTC().Format(time.RFC3339Nano)}}.Encode()
	}
	var c benchCount
	var took []time.Duration
	for run := range runs {
		t0 := time.Now()
		resp, raw, err := a.do(ctx, http.MethodGet, path, nil)
		if err != nil {
			return c, err
		}
		elapsed := time.Since(t0)
		if resp.StatusCode != http.StatusOK {
			return c, fmt.Errorf("GET %s: %s: %s", path, resp.Status, snippet(raw))
		}
		var body struct {
			Count int64 `json:"count"`
		}
		if err := json.Unmarshal(raw, &body); err != nil {
			return c, fmt.Errorf("GET %s: decoding %q: %w", path, snippet(raw), err)
		}
		if run > 0 && body.Count != c.count {
			return c, fmt.Errorf("GET %s: the count changed between runs: %d then %d", path, c.count, body.Count)
		}
		c.count = body.Count
		took = append(took, elapsed)
	}
	c.median, c.min, c.max = percentile(took, 50), slices.Min(took), slices.Max(took)
	return c, nil
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// CPU accounting (Linux /proc; n/a elsewhere): who used the machine during a
// phase, so a run disturbed by other work shows it.

// cpuSample is a snapshot of CPU time used so far.
type cpuSample struct {
	at          time.Time
	notifyd     time.Duration
	postgres    time.Duration // the cluster's postmaster and its children
	postgresOK  bool
	busy, total uint64 // whole machine, clock ticks
	machineOK   bool
}

func (env *benchEnv) sampleCPU() cpuSample {
	c := cpuSample{at: time.Now()}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		c.notifyd = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if env.cluster != nil {
		c.postgres, c.postgresOK = clusterCPU(filepath.Join(env.cluster.Dir, "data"))
	}
	c.busy, c.total, c.machineOK = readMachineCPU()
	return c
}

// cpuUse is the CPU used between two samples, in cores.
type cpuUse struct {
	notifyd, postgres, other float64
	postgresOK, machineOK    bool
}

func cpuBetween(a, b cpuSample) cpuUse {
	wall := b.at.Sub(a.at).Seconds()
	u := cpuUse{notifyd: (b.notifyd - a.notifyd).Seconds() / wall, postgresOK: a.postgresOK && b.postgresOK,
		machineOK: a.machineOK && b.machineOK && b.total > a.total}
	if u.postgresOK {
		u.postgres = (b.postgres - a.postgres).Seconds() / wall
	}
	if u.machineOK && u.postgresOK {
		machine := float64(b.busy-a.busy) / float64(b.total-a.total) * float64(runtime.NumCPU())
		u.other = max(0, machine-u.notifyd-u.postgres)
	}
	return u
}

// cpuColumns renders notifyd, postgres and other, separated by sep.
func (u cpuUse) cpuColumns(sep string) string {
	pg, other := "n/a", "n/a"
	if u.postgresOK {
		pg = strconv.FormatFloat(u.postgres, 'f', 2, 64)
	}
	if u.postgresOK && u.machineOK {
		other = strconv.FormatFloat(u.other, 'f', 2, 64)
	}
	return "notifyd " + strconv.FormatFloat(u.notifyd, 'f', 2, 64) + sep + "postgres " + pg + sep + "other " + other
}

func (u cpuUse) String() string {
	return strings.NewReplacer("notifyd ", "", "postgres ", "", "other ", "").Replace(u.cpuColumns("\t"))
}

// Formatting.

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sorted := slices.Clone(ds)
	slices.Sort(sorted)
	// Nearest rank.
	rank := (p*len(sorted) + 99) / 100
	return sorted[max(rank, 1)-1]
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) + " ms"
}

func roundDuration(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + " s"
}

func mib(bytes int64) string {
	return strconv.FormatFloat(float64(bytes)/(1<<20), 'f', 0, 64) + " MiB"
}

func kibString(kib int64) string {
	if kib < 0 {
		return "n/a"
	}
	return mib(kib << 10)
}
