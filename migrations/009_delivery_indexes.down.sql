DROP INDEX deliveries_notification_recipient;
CREATE INDEX deliveries_by_broadcast ON deliveries (broadcast_id, id) WHERE broadcast_id IS NOT NULL;
CREATE INDEX deliveries_by_recipient ON deliveries (recipient_id);
