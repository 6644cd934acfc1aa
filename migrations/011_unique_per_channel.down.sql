CREATE UNIQUE INDEX deliveries_broadcast_recipient ON deliveries (broadcast_id, recipient_id, channel) WHERE broadcast_id IS NOT NULL;
DROP INDEX deliveries_email_broadcast_recipient;
DROP INDEX deliveries_push_broadcast_recipient;
DROP INDEX deliveries_inbox_broadcast_recipient;
