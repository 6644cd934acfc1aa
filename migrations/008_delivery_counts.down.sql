ALTER TABLE deliveries SET (fillfactor = 80);
DROP INDEX deliveries_by_broadcast;
CREATE INDEX deliveries_open ON deliveries (broadcast_id, id) WHERE status IN ('pending','sending');
DROP TRIGGER delivery_counts_truncate ON deliveries;
DROP TRIGGER delivery_counts_delete ON deliveries;
DROP TRIGGER delivery_counts_update ON deliveries;
DROP TRIGGER delivery_counts_insert ON deliveries;
DROP FUNCTION delivery_counts_track();
DROP TABLE delivery_counts;
