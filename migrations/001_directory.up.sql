-- The recipient directory. Current state lives in recipients/preferences; every
-- earlier state is copied by trigger into the *_history tables with the interval
-- it was valid for, so the directory can be read as of any past moment.

CREATE TABLE recipients (
    id          text PRIMARY KEY,
    email       text,
    locale      text,
    timezone    text,
    attributes  jsonb NOT NULL DEFAULT '{}',
    -- erased: DELETE /v1/recipients/{id} removed the personal data; the row stays
    -- as a tombstone so history reads as "gone from this moment".
    erased      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    valid_from  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE recipient_history (
    recipient_id text NOT NULL,
    email        text,
    locale       text,
    timezone     text,
    attributes   jsonb NOT NULL,
    erased       boolean NOT NULL,
    valid_from   timestamptz NOT NULL,
    valid_to     timestamptz NOT NULL
);
CREATE INDEX recipient_history_by_recipient ON recipient_history (recipient_id, valid_from);
CREATE INDEX recipient_history_by_time ON recipient_history (valid_to, valid_from);

CREATE FUNCTION notifyd_archive_recipient() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.email, OLD.locale, OLD.timezone, OLD.attributes, OLD.erased)
       IS NOT DISTINCT FROM (NEW.email, NEW.locale, NEW.timezone, NEW.attributes, NEW.erased) THEN
        -- Nothing changed: keep the old version and its time.
        NEW.valid_from := OLD.valid_from;
        RETURN NEW;
    END IF;
    NEW.valid_from := now();
    INSERT INTO recipient_history (recipient_id, email, locale, timezone, attributes, erased, valid_from, valid_to)
    VALUES (OLD.id, OLD.email, OLD.locale, OLD.timezone, OLD.attributes, OLD.erased, OLD.valid_from, NEW.valid_from);
    RETURN NEW;
END $$;

CREATE TRIGGER recipients_archive BEFORE UPDATE ON recipients
    FOR EACH ROW EXECUTE FUNCTION notifyd_archive_recipient();

-- Push devices. A device row is never updated except to close it (valid_to); the
-- open row per (recipient, token) is the current device.
CREATE TABLE devices (
    recipient_id  text NOT NULL,
    token         text NOT NULL,
    platform      text NOT NULL,
    valid_from    timestamptz NOT NULL DEFAULT now(),
    valid_to      timestamptz,
    closed_reason text -- deleted | unregistered | erased
);
CREATE UNIQUE INDEX devices_current ON devices (recipient_id, token) WHERE valid_to IS NULL;
CREATE INDEX devices_by_token ON devices (token) WHERE valid_to IS NULL;
CREATE INDEX devices_history ON devices (recipient_id, valid_from);

-- Preferences: {"marketing": {"email": false}}; absent means opted in.
CREATE TABLE preferences (
    recipient_id text PRIMARY KEY,
    categories   jsonb NOT NULL DEFAULT '{}',
    source       text NOT NULL DEFAULT 'api',
    valid_from   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE preference_history (
    recipient_id text NOT NULL,
    categories   jsonb NOT NULL,
    source       text NOT NULL,
    valid_from   timestamptz NOT NULL,
    valid_to     timestamptz NOT NULL
);
CREATE INDEX preference_history_by_recipient ON preference_history (recipient_id, valid_from);

CREATE FUNCTION notifyd_archive_preferences() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.categories IS NOT DISTINCT FROM NEW.categories THEN
        NEW.valid_from := OLD.valid_from;
        RETURN NEW;
    END IF;
    NEW.valid_from := now();
    INSERT INTO preference_history (recipient_id, categories, source, valid_from, valid_to)
    VALUES (OLD.recipient_id, OLD.categories, OLD.source, OLD.valid_from, NEW.valid_from);
    RETURN NEW;
END $$;

CREATE TRIGGER preferences_archive BEFORE UPDATE ON preferences
    FOR EACH ROW EXECUTE FUNCTION notifyd_archive_preferences();

CREATE TABLE segments (
    key         text PRIMARY KEY,
    description text NOT NULL DEFAULT '',
    filter      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           text PRIMARY KEY, -- public part of the key, e.g. "k_3f9a..."
    name         text NOT NULL,
    secret_hash  bytea NOT NULL,   -- sha256 of the whole key; keys are 256-bit random
    scopes       text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
