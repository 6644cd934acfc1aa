-- Sessions of the admin web page (notifier/adminui). The cookie holds 256 random
-- bits; only their SHA-256 is stored, so a copy of this table signs nobody in. A
-- session lasts while its key is active and holds the admin scope: revoking the
-- key ends its sessions at the next request.
CREATE TABLE admin_sessions (
    id_hash    bytea PRIMARY KEY,
    key_id     text NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX admin_sessions_by_key ON admin_sessions (key_id);
CREATE INDEX admin_sessions_by_expiry ON admin_sessions (expires_at);
