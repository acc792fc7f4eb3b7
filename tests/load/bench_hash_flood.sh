#!/usr/bin/env bash
# bench_hash_flood.sh -- what crafted bucket names cost against random ones (issue 19; make bench)
#
# On its own Postgres cluster and one ferry: 30,000 five-byte bucket names whose unkeyed FNV-1a
# hashes share their low 16 bits (tests/lib/sectools.py colliding), and 30,000 random names of the
# same alphabet, each sent as the "buckets" of a /sync/stream request; the time from the start of
# sending (the same 1 MB either way) to the first byte of the answer, best of five each,
# alternating. With slots chosen by
# the keyed hash both cost the same (goal: ratio < 3; unkeyed FNV-1a made it ~2 s against ms).
# Prints "BENCH name value unit note". The spread itself is asserted, without a clock, by the
# unit test test_base_map_keyed_hash_spreads_fnv_collisions.
set -euo pipefail
source "$(dirname "$0")/../lib/testlib.sh"
sectools() { python3 "$T_ROOT/tests/lib/sectools.py" "$@"; }
[ -x "$FERRY_BIN" ] || { echo "build first: make all"; exit 1; }
pgenv=$("$T_ROOT/tests/lib/pg.sh" start benchflood)
eval "$pgenv"
trap 't_cleanup; "$T_ROOT/tests/lib/pg.sh" stop "$PGTMP"' EXIT
export FERRY_PG_URI
db=$(new_db bench)
psql -q "$db" <<'SQL'
CREATE TABLE lists (id text PRIMARY KEY, owner text NOT NULL, name text);
INSERT INTO lists VALUES ('l1', 'alice', 'one');
CREATE PUBLICATION ferry FOR ALL TABLES;
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, name FROM lists WHERE owner = bucket.owner
YAML
port=$(free_port)
SLOT_PREFIX=benchflood replication_config "$T_TMP/ferry.yaml" "$port" "$db"
sed -i "s|^  threads: 2|&\n  max_request_body: 4194304|" "$T_TMP/ferry.yaml"
printf 'limits:\n  max_buckets_per_connection: 40000\n' >>"$T_TMP/ferry.yaml"
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 || { echo "ferry not ready"; tail -5 "$FERRY_LOG"; exit 1; }
sectools colliding 30000 >"$T_TMP/coll.txt"
sectools random 30000 >"$T_TMP/rand.txt"
body() { python3 -c 'import json,sys; print(json.dumps({"client_id": "flood", "buckets": [{"name": l.strip(), "after": "1"} for l in open(sys.argv[1])]}))' "$1"; }
body "$T_TMP/coll.txt" >"$T_TMP/coll.json"
body "$T_TMP/rand.txt" >"$T_TMP/rand.json"
tok=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub flooder --ttl 3600)
for i in 1 2 3 4 5; do
  sectools ttfb "$port" "$tok" "$T_TMP/coll.json" >>"$T_TMP/coll.t"
  sectools ttfb "$port" "$tok" "$T_TMP/rand.json" >>"$T_TMP/rand.t"
done
tc=$(sort -g "$T_TMP/coll.t" | head -1)
tr=$(sort -g "$T_TMP/rand.t" | head -1)
awk -v a="$tc" -v b="$tr" 'BEGIN {
  printf "BENCH hash_flood_colliding_ms %.3f ms 30,000 crafted names, best of 5\n", a * 1000
  printf "BENCH hash_flood_random_ms %.3f ms 30,000 random names, best of 5\n", b * 1000
  printf "BENCH hash_flood_ratio %.2f x colliding / random, same run\n", (b > 0 ? a / b : 0) }'
