-- One unique index per channel instead of one for all (issue 3).
--
-- Expansion inserts a broadcast's deliveries from up to 8 sessions at once, and
-- every new page of an index is added under that index's relation extension
-- lock. PostgreSQL hands the lock to the next waiter on release; with both
-- cores busy that waiter is often not running yet, and everyone queues behind
-- it (docs/benchmarks.md, "What bounds it now"). The unique index had the
-- longest queue. With one per channel, a broadcast on email and push queues
-- on two locks instead of one: in alternating pairs of 1M all-out benches the
-- expansion was faster in nine of ten (docs/benchmarks.md, migration 011).
--
-- Together they keep (broadcast, recipient, channel) unique. The planner uses
-- a partial index only where the query names its channel: queries over all of
-- a broadcast's deliveries say (channel = 'email' OR channel = 'push' OR
-- channel = 'inbox'), see notifier/channel.go.
CREATE UNIQUE INDEX deliveries_email_broadcast_recipient ON deliveries (broadcast_id, recipient_id)
    WHERE broadcast_id IS NOT NULL AND channel = 'email';
CREATE UNIQUE INDEX deliveries_push_broadcast_recipient ON deliveries (broadcast_id, recipient_id)
    WHERE broadcast_id IS NOT NULL AND channel = 'push';
CREATE UNIQUE INDEX deliveries_inbox_broadcast_recipient ON deliveries (broadcast_id, recipient_id)
    WHERE broadcast_id IS NOT NULL AND channel = 'inbox';
DROP INDEX deliveries_broadcast_recipient;
