-- Two indexes fewer for every delivery a broadcast writes (issue 3).
--
-- Expansion writes every index of deliveries for each row, and with its ranges
-- in parallel the B-trees are most of its cost (and most of its waits, on the
-- relation extension lock of each index). Eight sessions inserting 12 chunks of
-- 10,000 recipients x 2 channels each, as expansion does (docs/index-cost.sh,
-- median of 3): 183,000 rows/s with the four indexes, 239,000/s without
-- deliveries_by_recipient, 292,000/s without it and deliveries_by_broadcast.
--
-- - deliveries_by_recipient served erasure and frequency caps. They now reach a
--   broadcast's deliveries through deliveries_broadcast_recipient (broadcast,
--   recipient, channel), one probe per broadcast that can matter, and a
--   notification's through deliveries_notification_recipient, which expansion
--   never writes.
-- - deliveries_by_broadcast served claims (a batch is an id range: the primary
--   key serves it, see notifier/deliver.go), cancel and resume (all of a
--   broadcast's deliveries: deliveries_broadcast_recipient serves them).
DROP INDEX deliveries_by_recipient;
DROP INDEX deliveries_by_broadcast;
CREATE INDEX deliveries_notification_recipient ON deliveries (recipient_id, channel) WHERE notification_id IS NOT NULL;
