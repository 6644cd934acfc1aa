-- Operator actions, with who did them and the counts at that moment.
CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,  -- the API key's name
    action       text NOT NULL,  -- cancel | pause | resume
    broadcast_id bigint REFERENCES broadcasts (id),
    counts       jsonb NOT NULL DEFAULT '{}',
    detail       text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_by_broadcast ON audit_log (broadcast_id, id DESC);
