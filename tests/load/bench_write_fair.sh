#!/usr/bin/env bash
# bench_write_fair.sh -- one user's write-back flood against another user's single op (make bench)
#
# On its own Postgres cluster and a ferry with postgres.pool_size POOL (default 4) and a write
# rule with a check and a check_old (owner = user), tests/load/write_fair.py runs twice for
# BENCH_SECONDS (default 15) each:
#   - idle: the victim posts a one-op batch every 200 ms, alone (the limit: its round trip);
#   - flood: FLOODERS (default 32) threads of one user post 1,000-op batches back to back (a 429
#     or 503 is retried at once), while the victim does the same as above.
# Figures: the victim's p50 and max round trip under the flood and its p50 alone, the worst
# /probes/liveness round trip on the client listener during the flood, the flood's applied ops/s
# and its 429s. Issue #19's goal is that the flood delays the victim by at most about one batch;
# the figures are reported, not asserted (tests/integration/91_security_write.sh asserts the
# order). FERRY_BIN may point at another build to compare.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
source "$root/tests/lib/testlib.sh"
secs=${BENCH_SECONDS:-15}
pool=${POOL:-4}
flooders=${FLOODERS:-32}
pgenv=$("$root/tests/lib/pg.sh" start benchfair)
eval "$pgenv"
trap '"$root/tests/lib/pg.sh" stop "$PGTMP"; t_cleanup' EXIT
psql -q "$FERRY_PG_URI" -c "CREATE DATABASE bench"
db=${FERRY_PG_URI%/*}/bench
psql -q -v ON_ERROR_STOP=1 "$db" -f "$root/deploy/postgres/setup.sql"
psql -q -v ON_ERROR_STOP=1 "$db" <<'SQL'
CREATE TABLE bench (id text PRIMARY KEY, label text, owner text NOT NULL, n int);
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, label, n FROM bench WHERE owner = bucket.owner
write_rules:
  bench:
    operations: [insert, update, delete]
    columns: [id, label, owner, n]
    check: "new.owner = request.user_id()"
    check_old: "old.owner = request.user_id()"
YAML
port=$(free_port)
replication_config "$T_TMP/ferry.yaml" "$port" "$db"
sed -i 's/^log_level: info/log_level: warn/' "$T_TMP/ferry.yaml"
sed -i "s|^  uri: .*|&\n  pool_size: $pool|" "$T_TMP/ferry.yaml"
start_ferry "$T_TMP/ferry.yaml"
wait_ready "$port" 60 || { echo "ferry not ready: $(curl -s "http://127.0.0.1:$port/probes/readiness")"; exit 1; }
url=http://127.0.0.1:$port
flood=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub flood --ttl 3600)
victim=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub victim --ttl 3600)
idle=$(python3 "$root/tests/load/write_fair.py" "$url" "$flood" "$victim" "$secs" 0)
echo "idle: $idle"
busy=$(python3 "$root/tests/load/write_fair.py" "$url" "$flood" "$victim" "$secs" "$flooders")
echo "flood: $busy"
j() { python3 -c 'import json,sys; print(eval(sys.argv[2], {"j": json.loads(sys.argv[1])}))' "$1" "$2"; }
idle_p50=$(j "$idle" 'j["victim_ms"]["p50"]')
echo "BENCH write_fair_victim_idle_p50 $idle_p50 ms the victim's one-op batch alone ($(j "$idle" 'j["victim_ms"]["count"]') batches)"
echo "BENCH write_fair_victim_flood_p50 $(j "$busy" 'j["victim_ms"]["p50"]') ms limit=write_fair_victim_idle_p50:$idle_p50 while $flooders threads of one user post 1,000-op batches (pool $pool)"
echo "BENCH write_fair_victim_flood_max $(j "$busy" 'j["victim_ms"]["max"]') ms worst of $(j "$busy" 'j["victim_ms"]["count"]') ($(j "$busy" 'j["victim_ms"]["errors"]') errors)"
echo "BENCH write_fair_liveness_flood_max $(j "$busy" 'j["liveness_ms"]["max"]') ms /probes/liveness on the client listener during the flood (p50 $(j "$busy" 'j["liveness_ms"]["p50"]') ms)"
echo "BENCH write_fair_flood_ops_per_s $(j "$busy" 'j["flood_ops_per_s"]') ops/s the flood's applied ops ($(j "$busy" 'j["flood"]["200"]') batches 200, $(j "$busy" 'j["flood"]["429"]') 429, $(j "$busy" 'j["flood"]["503"]') 503)"
echo "BENCH write_fair_peak_rss $(awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$FERRY_PID/status") MB ferry's peak resident memory"
