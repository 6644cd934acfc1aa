DROP TABLE suppressed_addresses;
ALTER TABLE deliveries DROP COLUMN event_at, DROP COLUMN event;
DROP TABLE delivery_events;
