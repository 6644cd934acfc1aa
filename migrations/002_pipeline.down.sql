DROP TABLE inbox_items;
DROP TABLE dedupe_claims;
DROP TABLE deliveries;
DROP TABLE notifications;
DROP TABLE broadcasts;
DROP TABLE idempotency_keys;
