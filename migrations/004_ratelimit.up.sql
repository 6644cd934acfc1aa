-- Provider protection shared by every worker process (queue/ratelimit.go): one row
-- per rate-limited provider ('email', 'push') and one per broadcast that has its own
-- rate_per_second ('broadcast:<id>'). Every grant is one atomic statement against
-- its row, timed by the database's clock_timestamp(), so all processes share one
-- clock and one bucket.
CREATE TABLE provider_limits (
    key                  text PRIMARY KEY,
    rate                 double precision NOT NULL CHECK (rate > 0),   -- refill, messages/s (95% of the configured rate)
    burst                double precision NOT NULL CHECK (burst > 0),  -- most an idle bucket grants at once
    -- The token bucket, kept as the time at which every token granted so far has
    -- accrued (GCRA's "theoretical arrival time"): tokens now = least(burst,
    -- rate * (now - tat)); a tat in the future means grants are reserved ahead.
    tat                  timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- 429 / Retry-After: nothing is granted before blocked_until.
    blocked_until        timestamptz,
    -- After a block or a closed breaker the rate restarts at 25% at ramp_from and
    -- doubles every second back to full.
    ramp_from            timestamptz,
    -- Circuit breaker for sustained 5xx: closed (normal), open (no grant before
    -- breaker_until, then one probe), probing (one probe out, until breaker_until).
    breaker_state        text NOT NULL DEFAULT 'closed' CHECK (breaker_state IN ('closed', 'open', 'probing')),
    breaker_until        timestamptz,
    probe_interval       double precision NOT NULL DEFAULT 0,  -- seconds
    consecutive_failures int NOT NULL DEFAULT 0,
    backoffs             bigint NOT NULL DEFAULT 0,
    trips                bigint NOT NULL DEFAULT 0
);
