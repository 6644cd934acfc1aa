ALTER SEQUENCE deliveries_id_seq CACHE 1;
DROP TABLE expand_ranges;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_broadcast_id_fkey FOREIGN KEY (broadcast_id) REFERENCES broadcasts (id);
ALTER TABLE deliveries ADD CONSTRAINT deliveries_notification_id_fkey FOREIGN KEY (notification_id) REFERENCES notifications (id);
