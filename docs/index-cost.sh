#!/bin/sh
# index-cost.sh: what each index of deliveries costs the expansion's inserts.
#
# Needs a database a bench left behind (`notifyd bench --recipients 1000000
# --keep ...` prints its URL), for its 1,000,000 recipients. For each index set,
# it creates dx, a copy of deliveries (fill factor 40, the counters' trigger)
# with only those indexes, then runs what expansion does: 8 sessions at once,
# each inserting 12 chunks of 10,000 recipients x 2 channels from its own range
# of recipient ids, one transaction per chunk. It prints rows per second.
#
#   sh docs/index-cost.sh 'postgres://postgres@127.0.0.1:PORT/notifyd_bench_...' [runs]
set -eu
url=$1
runs=${2:-3}

chunk() { # chunk LO: one chunk's INSERT, as notifier/expand.go writes it (less suppression and batch cutting)
	cat <<SQL
BEGIN;
INSERT INTO dx (broadcast_id, recipient_id, channel, status, reason, address)
SELECT 1, a.id, ch.channel, 'pending', NULL, CASE WHEN ch.channel = 'email' THEN a.email END
FROM (SELECT id, email FROM recipients WHERE NOT erased AND id > '$1' ORDER BY id LIMIT 10000) a
CROSS JOIN unnest('{email,push}'::text[]) AS ch(channel);
COMMIT;
SQL
}

measure() { # measure LABEL INDEX-DDL
	psql -q "$url" <<SQL
SET client_min_messages = warning;
DROP TABLE IF EXISTS dx;
CREATE TABLE dx (LIKE deliveries INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH (fillfactor = 40);
ALTER TABLE dx ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (CACHE 10000);
CREATE TRIGGER dx_counts AFTER INSERT ON dx REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_track();
$2
CHECKPOINT;
SQL
	start=$(date +%s.%N)
	for s in 0 1 2 3 4 5 6 7; do
		(
			echo "SET jit = off;"
			for c in 0 1 2 3 4 5 6 7 8 9 10 11; do chunk "$(printf 'r%07d' $((s * 125000 + c * 10000)))"; done
		) | psql -q -v ON_ERROR_STOP=1 "$url" >/dev/null &
	done
	wait
	end=$(date +%s.%N)
	awk -v label="$1" -v s="$start" -v e="$end" 'BEGIN { printf "%s: %.0f rows/s\n", label, 1920000 / (e - s) }'
	psql -q "$url" -c "DROP TABLE dx"
}

pk="ALTER TABLE dx ADD PRIMARY KEY (id);"
unique="CREATE UNIQUE INDEX ON dx (broadcast_id, recipient_id, channel) WHERE broadcast_id IS NOT NULL;"
per_channel="CREATE UNIQUE INDEX ON dx (broadcast_id, recipient_id) WHERE broadcast_id IS NOT NULL AND channel = 'email';
CREATE UNIQUE INDEX ON dx (broadcast_id, recipient_id) WHERE broadcast_id IS NOT NULL AND channel = 'push';"
by_broadcast="CREATE INDEX ON dx (broadcast_id, id) WHERE broadcast_id IS NOT NULL;"
by_recipient="CREATE INDEX ON dx (recipient_id);"
for run in $(seq "$runs"); do
	measure "run $run, before migration 009 (4 indexes)" "$pk $unique $by_broadcast $by_recipient"
	measure "run $run, without deliveries_by_recipient" "$pk $unique $by_broadcast"
	measure "run $run, after migration 009 (primary key and unique)" "$pk $unique"
	measure "run $run, after migration 011 (primary key and a unique index per channel)" "$pk $per_channel"
done
