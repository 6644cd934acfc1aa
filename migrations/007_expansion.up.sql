-- Faster broadcast expansion (issue 3).

-- The foreign keys from deliveries cost an RI check per inserted row (about a
-- quarter of the expansion insert) and again on every status update. Broadcasts
-- and notifications are never deleted, and a delivery is only written by the
-- transaction that holds its broadcast or creates its notification.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_broadcast_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_notification_id_fkey;

-- A broadcast's audience is expanded as disjoint ranges of recipient ids, in
-- parallel. Each range has its own cursor, advanced in the same transaction as
-- the deliveries of each chunk, so any expander resumes a range where the last
-- committed chunk left it.
CREATE TABLE expand_ranges (
    broadcast_id bigint NOT NULL,
    lo           text NOT NULL,  -- exclusive lower bound ('' is the start)
    hi           text,           -- inclusive upper bound (NULL is the end)
    cursor       text NOT NULL,  -- last recipient id expanded in this range
    recipients   bigint NOT NULL DEFAULT 0,
    done         boolean NOT NULL DEFAULT false,
    PRIMARY KEY (broadcast_id, lo)
);

-- Each connection takes delivery ids in blocks, so the deliveries one expansion
-- chunk inserts get consecutive ids even while chunks of other ranges insert at
-- the same time, and its delivery jobs (id ranges) stay whole. Ids are then
-- unique but not in insertion order across connections.
ALTER SEQUENCE deliveries_id_seq CACHE 10000;
