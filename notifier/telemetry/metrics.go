// Package telemetry holds notifyd's Prometheus metrics. Counts that must agree
// with the API (deliveries by status, queue depth) are read from Postgres at
// scrape time, so every replica reports the same truth and nothing resets on a
// restart; latencies and rates are measured in-process.
package telemetry

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is the registry and the in-process instruments.
type Metrics struct {
	Registry *prometheus.Registry

	HTTPDuration      *prometheus.HistogramVec // route, method, status
	ProviderDuration  *prometheus.HistogramVec // channel, status
	IdempotentReplays *prometheus.CounterVec   // request
}

// New registers the metrics; pool feeds the database-backed ones (nil: none).
func New(pool *pgxpool.Pool, logger *slog.Logger) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "notifyd_http_request_duration_seconds", Help: "HTTP API request latency by route.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}, []string{"route", "method", "status"}),
		ProviderDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "notifyd_provider_request_duration_seconds", Help: "Provider HTTP request latency by channel and HTTP status (0: no answer).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}, []string{"channel", "status"}),
		IdempotentReplays: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notifyd_idempotent_replays_total", Help: "Requests answered from a stored Idempotency-Key response.",
		}, []string{"request"}),
	}
	reg.MustRegister(m.HTTPDuration, m.ProviderDuration, m.IdempotentReplays,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if pool != nil {
		reg.MustRegister(newDBCollector(pool, logger))
	}
	return m
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}

// Middleware records request latency by chi route pattern (not the raw path,
// which would make one series per recipient).
func (m *Metrics) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		m.HTTPDuration.WithLabelValues(routePattern(r), r.Method, strconv.Itoa(rec.status)).Observe(time.Since(start).Seconds())
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// Transport wraps a provider client's transport to time each request.
func (m *Metrics) Transport(channel string, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		start := time.Now()
		resp, err := base.RoundTrip(req)
		status := "0"
		if err == nil {
			status = strconv.Itoa(resp.StatusCode)
		}
		m.ProviderDuration.WithLabelValues(channel, status).Observe(time.Since(start).Seconds())
		return resp, err
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// dbCollector reads the database-backed metrics at scrape time, at most once per
// cacheFor so that frequent scrapes of many replicas stay cheap.
type dbCollector struct {
	pool   *pgxpool.Pool
	logger *slog.Logger

	deliveries, queueDepth, oldestAge, broadcastProgress, broadcasts *prometheus.Desc
	providerRate, providerTokens, providerBlocked, providerBreaker   *prometheus.Desc

	mu      sync.Mutex
	cached  []prometheus.Metric
	fetched time.Time
}

const cacheFor = 5 * time.Second

func newDBCollector(pool *pgxpool.Pool, logger *slog.Logger) *dbCollector {
	return &dbCollector{
		pool: pool, logger: logger,
		deliveries: prometheus.NewDesc("notifyd_deliveries", "Deliveries by channel and status (pending, sending, sent, failed, suppressed, cancelled, unknown).",
			[]string{"channel", "status"}, nil),
		queueDepth: prometheus.NewDesc("notifyd_queue_jobs", "Jobs waiting to run by queue and state (available, scheduled, retryable, running).",
			[]string{"queue", "state"}, nil),
		oldestAge: prometheus.NewDesc("notifyd_queue_oldest_pending_seconds", "Age of the oldest job due to run, by queue.",
			[]string{"queue"}, nil),
		broadcastProgress: prometheus.NewDesc("notifyd_broadcast_open_deliveries", "Deliveries still pending or sending, per unfinished broadcast.",
			[]string{"broadcast_id"}, nil),
		broadcasts: prometheus.NewDesc("notifyd_broadcasts", "Broadcasts by status.", []string{"status"}, nil),
		providerRate: prometheus.NewDesc("notifyd_provider_rate_per_second", "The shared rate limit of a provider (the bucket refills at this rate).",
			[]string{"channel"}, nil),
		providerTokens: prometheus.NewDesc("notifyd_provider_tokens", "Tokens in a provider's bucket now; negative: grants reserved ahead (waiting).",
			[]string{"channel"}, nil),
		providerBlocked: prometheus.NewDesc("notifyd_provider_backoff_seconds", "Seconds until a provider's 429 backoff ends (0: not backing off).",
			[]string{"channel"}, nil),
		providerBreaker: prometheus.NewDesc("notifyd_provider_breaker_open", "1 when a provider's circuit breaker is open or probing after sustained 5xx.",
			[]string{"channel"}, nil),
	}
}

func (c *dbCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.deliveries, c.queueDepth, c.oldestAge, c.broadcastProgress, c.broadcasts,
		c.providerRate, c.providerTokens, c.providerBlocked, c.providerBreaker} {
		ch <- d
	}
}

func (c *dbCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.fetched) > cacheFor {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		metrics, err := c.fetch(ctx)
		cancel()
		if err != nil {
			c.logger.Warn("metrics: reading the database failed", "err", err)
		} else {
			c.cached, c.fetched = metrics, time.Now()
		}
	}
	for _, m := range c.cached {
		ch <- m
	}
}

func (c *dbCollector) fetch(ctx context.Context) ([]prometheus.Metric, error) {
	var out []prometheus.Metric
	gauges := func(desc *prometheus.Desc, sql string) error {
		rows, err := c.pool.Query(ctx, sql)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var labels [2]string
			var value float64
			n := len(rows.FieldDescriptions()) - 1
			dest := []any{&labels[0]}
			if n == 2 {
				dest = append(dest, &labels[1])
			}
			if err := rows.Scan(append(dest, &value)...); err != nil {
				return err
			}
			out = append(out, prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, value, labels[:n]...))
		}
		return rows.Err()
	}
	queries := []struct {
		desc *prometheus.Desc
		sql  string
	}{
		// delivery_counts (migration 008) holds the deliveries' counts as deltas
		// kept by triggers: a few rows per broadcast, not a scan of deliveries.
		{c.deliveries, `SELECT channel, status, sum(n)::float8 FROM delivery_counts GROUP BY 1, 2 HAVING sum(n) <> 0`},
		{c.queueDepth, `SELECT queue, state::text, count(*)::float8 FROM river_job
			WHERE state IN ('available', 'scheduled', 'retryable', 'running') GROUP BY 1, 2`},
		{c.oldestAge, `SELECT queue, extract(epoch FROM now() - min(scheduled_at))::float8 FROM river_job
			WHERE state = 'available' GROUP BY 1`},
		{c.broadcastProgress, `SELECT broadcast_id::text, sum(n)::float8 FROM delivery_counts
			WHERE status IN ('pending', 'sending') AND broadcast_id <> 0 GROUP BY 1 HAVING sum(n) <> 0`},
		{c.broadcasts, `SELECT status, count(*)::float8 FROM broadcasts GROUP BY 1`},
		// The provider rows of the shared limiter (queue/ratelimit.go).
		{c.providerRate, `SELECT key, rate FROM provider_limits WHERE key NOT LIKE 'broadcast:%'`},
		{c.providerTokens, `SELECT key, least(burst, rate * extract(epoch FROM clock_timestamp() - tat))::float8
			FROM provider_limits WHERE key NOT LIKE 'broadcast:%'`},
		{c.providerBlocked, `SELECT key, greatest(0, extract(epoch FROM coalesce(blocked_until, now()) - clock_timestamp()))::float8
			FROM provider_limits WHERE key NOT LIKE 'broadcast:%'`},
		{c.providerBreaker, `SELECT key, CASE WHEN breaker_state = 'closed' THEN 0 ELSE 1 END::float8
			FROM provider_limits WHERE key NOT LIKE 'broadcast:%'`},
	}
	for _, q := range queries {
		if err := gauges(q.desc, q.sql); err != nil {
			return nil, err
		}
	}
	return out, nil
}
