-- What providers tell us after a send (notifier/webhook.go) and the addresses that
-- must not be mailed again.

-- Provider events, one row per event id: a replayed or retried webhook finds its
-- events here and changes nothing. No address is stored; detail is SendGrid's
-- fixed vocabulary (bounce type, drop reason) and is erased with the recipient.
CREATE TABLE delivery_events (
    provider     text NOT NULL,        -- 'sendgrid'
    event_id     text NOT NULL,        -- sg_event_id
    event        text NOT NULL,        -- delivered | bounce | dropped | spamreport | unsubscribe | group_unsubscribe
    delivery_id  bigint,               -- from the custom arg notifyd_delivery_id; NULL when absent or unknown
    detail       text,
    occurred_at  timestamptz NOT NULL, -- the provider's time of the event
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX delivery_events_by_delivery ON delivery_events (delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX delivery_events_by_age ON delivery_events (received_at);

-- The last provider event of a delivery; its status stays what the send recorded.
ALTER TABLE deliveries ADD COLUMN event text, ADD COLUMN event_at timestamptz;

-- Addresses that bounced or reported spam, never mailed again (read at expansion and
-- at claim). Only the sha256 of the lowercased address is kept, so erasing a
-- recipient leaves the address suppressed without keeping it.
CREATE TABLE suppressed_addresses (
    address_hash bytea PRIMARY KEY,
    reason       text NOT NULL CHECK (reason IN ('bounced', 'spam')),
    source       text NOT NULL,       -- 'sendgrid'
    event_id     text,                -- the event that added it
    created_at   timestamptz NOT NULL DEFAULT now()
);
