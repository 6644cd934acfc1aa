-- Idempotency keys: one row per (API key, Idempotency-Key), written in the same
-- transaction as the effect, so a key is either absent or carries its response.
CREATE TABLE idempotency_keys (
    api_key_id  text NOT NULL,
    key         text NOT NULL,
    request     text NOT NULL,  -- "POST /v1/broadcasts"
    fingerprint bytea NOT NULL, -- sha256 of the canonical JSON body
    status      int NOT NULL,
    response    bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

CREATE TABLE broadcasts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL,
    category        text NOT NULL,
    segment_key     text,           -- audience: a segment ...
    filter          jsonb,          -- ... whose filter is copied here at creation
    recipient_ids   text[],         -- ... or an explicit list
    channels        text[] NOT NULL,
    content         jsonb NOT NULL,
    cutoff_at       timestamptz NOT NULL,
    send_at         timestamptz,
    dedupe_key      text,
    rate_per_second double precision,
    status          text NOT NULL CHECK (status IN ('scheduled','expanding','sending','paused','completed','cancelled','failed')),
    -- Expansion resumes after the last recipient id it committed.
    expand_cursor   text,
    expanded        boolean NOT NULL DEFAULT false,
    audience_size   bigint NOT NULL DEFAULT 0,
    failure_reason  text,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    expanded_at     timestamptz,
    completed_at    timestamptz,
    cancelled_at    timestamptz
);
CREATE INDEX broadcasts_by_status ON broadcasts (status, id);

CREATE TABLE notifications (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient_id text NOT NULL,
    category     text NOT NULL,
    channels     text[] NOT NULL,
    content      jsonb NOT NULL,
    dedupe_key   text,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- A delivery is one (broadcast or notification, recipient, channel).
-- pending -> sending (claimed just before the provider call) -> sent | failed | unknown;
-- pending -> suppressed | cancelled. Only pending is ever claimed, so nothing is
-- sent twice whatever the job queue re-runs.
CREATE TABLE deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    broadcast_id    bigint REFERENCES broadcasts (id),
    notification_id bigint REFERENCES notifications (id),
    recipient_id    text NOT NULL,
    channel         text NOT NULL CHECK (channel IN ('email','push','inbox')),
    status          text NOT NULL CHECK (status IN ('pending','sending','sent','failed','suppressed','cancelled','unknown')),
    reason          text,   -- why suppressed / failed / unknown / cancelled
    address         text,   -- the email address as of the cut-off
    provider_id     text,
    attempts        int NOT NULL DEFAULT 0,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    claimed_at      timestamptz,
    finished_at     timestamptz,
    CHECK ((broadcast_id IS NULL) <> (notification_id IS NULL))
);
CREATE UNIQUE INDEX deliveries_broadcast_recipient ON deliveries (broadcast_id, recipient_id, channel) WHERE broadcast_id IS NOT NULL;
CREATE UNIQUE INDEX deliveries_notification ON deliveries (notification_id, channel) WHERE notification_id IS NOT NULL;
-- The open deliveries: small, and what cancel, resume and completion look at.
CREATE INDEX deliveries_open ON deliveries (broadcast_id, id) WHERE status IN ('pending','sending');
CREATE INDEX deliveries_by_recipient ON deliveries (recipient_id);
-- Fill factor leaves room for the status updates to stay on the page (HOT).
ALTER TABLE deliveries SET (fillfactor = 80);

-- No recipient gets two deliveries with the same dedupe key on one channel, across
-- broadcasts and notifications.
CREATE TABLE dedupe_claims (
    dedupe_key   text NOT NULL,
    recipient_id text NOT NULL,
    channel      text NOT NULL,
    delivery_id  bigint NOT NULL,
    PRIMARY KEY (dedupe_key, recipient_id, channel)
);

-- In-app inbox items, written by the inbox channel; one per delivery.
CREATE TABLE inbox_items (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient_id text NOT NULL,
    delivery_id  bigint NOT NULL UNIQUE,
    broadcast_id bigint,
    category     text NOT NULL,
    title        text NOT NULL,
    body         text NOT NULL DEFAULT '',
    url          text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    read_at      timestamptz
);
CREATE INDEX inbox_items_by_recipient ON inbox_items (recipient_id, id DESC);
CREATE INDEX inbox_items_unread ON inbox_items (recipient_id, id DESC) WHERE read_at IS NULL;
