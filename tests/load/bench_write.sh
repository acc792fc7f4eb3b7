#!/usr/bin/env bash
# bench_write.sh -- write-back throughput and latency (make bench)
#
# On its own Postgres cluster (tests/lib/pg.sh: fsync=off, synchronous_commit=off) and a ferry
# with write rules that have a check and a check_old (owner = user):
#   - throughput: 8 concurrent clients (wrk -t8 -c8, one connection and client_id per thread,
#     tests/load/bench_write.lua) posting batches of 100 ops for BENCH_SECONDS (default 10):
#     PUTs of new rows, then PATCHes of existing rows, then PATCHes of a table whose two columns
#     merge with lww (old and metadata timestamps sent); applied ops/s from ferry's /metrics
#     (ferry_write_ops_total{status="applied"}), checked to be every op sent (issue goal:
#     >= 20,000 ops/s); then ferry again with the sync history off (write_back.history.keep: 0)
#     for the inserts and PATCHes: what recording every op costs (issue #22: at most 15 %);
#   - single-op round trip (POST to 200, one client, one op per batch, BENCH_SINGLE requests one
#     after the other on a keep-alive connection with curl): p50 and p99;
#   - write to own checkpoint: POST one op, GET /write-checkpoint2.json, then poll `ferry debug
#     dump` until the row is in bucket storage (what a stream sends with that checkpoint); p50 of
#     BENCH_CHECKPOINTS (default 20) rounds.
# The limit in the same run: the same inserts as one psql transaction per 100 rows with
# pgbench-style prepared INSERTs (no rules, no HTTP) give the Postgres-only rate on this machine.
# POOL: postgres.pool_size (default 8). Experiments: BENCH_PUBLICATION=tables publishes the
# bench tables by name instead of setup.sql's FOR ALL TABLES (ferry's own tables, the history
# among them, then do not travel the replication stream); BENCH_HISTORY_SQL is run on the
# database before ferry starts (e.g. another storage setting for ferry_write_history). The
# history runs come first, the runs without it second: on a busy machine compare several runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
source "$root/tests/lib/testlib.sh"
secs=${BENCH_SECONDS:-10}
pool=${POOL:-8}
command -v wrk >/dev/null || { echo "wrk is missing (make deps)"; exit 1; }
pgenv=$("$root/tests/lib/pg.sh" start benchwrite)
eval "$pgenv"
trap '"$root/tests/lib/pg.sh" stop "$PGTMP"; t_cleanup' EXIT
psql -q "$FERRY_PG_URI" -c "CREATE DATABASE bench"
db=${FERRY_PG_URI%/*}/bench
psql -q -v ON_ERROR_STOP=1 "$db" -f "$root/deploy/postgres/setup.sql"
psql -q -v ON_ERROR_STOP=1 "$db" <<'SQL'
CREATE TABLE bench (id text PRIMARY KEY, label text, owner text NOT NULL, n int,
                    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE plain (id text PRIMARY KEY, label text, owner text NOT NULL, n int);
INSERT INTO bench (id, label, owner, n) SELECT 'p' || t || '-' || k, 'seed', 'bench', 0
  FROM generate_series(1, 8) t, generate_series(0, 999) k;
CREATE TABLE bench_lww (id text PRIMARY KEY, label text, owner text NOT NULL, n int);
INSERT INTO bench_lww (id, label, owner, n) SELECT 'q' || t || '-' || k, 'seed', 'bench', 0
  FROM generate_series(1, 8) t, generate_series(0, 999) k;
SQL
# BENCH_PUBLICATION=tables: publish the app's tables by name instead of setup.sql's FOR ALL
# TABLES (then ferry's own tables, the sync history among them, are not replicated)
[ -n "${BENCH_HISTORY_SQL:-}" ] && psql -q -v ON_ERROR_STOP=1 "$db" -c "$BENCH_HISTORY_SQL"
if [ "${BENCH_PUBLICATION:-all}" = tables ]; then
  psql -q -v ON_ERROR_STOP=1 "$db" -c "DROP PUBLICATION ferry" \
    -c "CREATE PUBLICATION ferry FOR TABLE bench, bench_lww, plain, ferry_violations"
fi
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
  bench_lww:
    operations: [insert, update, delete]
    columns: [id, label, owner, n]
    check: "new.owner = request.user_id()"
    check_old: "old.owner = request.user_id()"
    merge: {label: lww, n: lww}
    lww_timestamp: {metadata: ts}
YAML
port=$(free_port)
replication_config "$T_TMP/ferry.yaml" "$port" "$db"
sed -i 's/^log_level: info/log_level: warn/' "$T_TMP/ferry.yaml"
sed -i "s|^  uri: .*|&\n  pool_size: $pool|" "$T_TMP/ferry.yaml"
# the 8 clients are one user here: lift the per-user limit (fairness is bench_write_fair.sh's)
printf 'write_back:\n  max_batches_per_user: 64\n' >>"$T_TMP/ferry.yaml"
start_ferry "$T_TMP/ferry.yaml"
wait_ready "$port" 60 || { echo "ferry not ready: $(curl -s "http://127.0.0.1:$port/probes/readiness")"; exit 1; }
url=http://127.0.0.1:$port
export BW_TOKEN
BW_TOKEN=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub bench --ttl 3600)
applied() { curl -s "$url/metrics" | awk '/^ferry_write_ops_total\{status="applied"\}/ {print $2}'; }
notapplied() { curl -s "$url/metrics" | awk '/^ferry_write_ops_total\{status="(rejected|stale|duplicate)"\}/ {s += $2} END {print s + 0}'; }

alive() { kill -0 "$FERRY_PID" 2>/dev/null || { echo "ferry died; its log ends:" >&2; grep -B2 -A40 "ERROR: AddressSanitizer" "$FERRY_LOG" | head -80 >&2 || tail -20 "$FERRY_LOG" >&2; exit 1; }; }
declare -A rates
throughput() { # throughput MODE NAME
  local a0 a1 t0 t1 rate
  a0=$(applied); t0=$(date +%s.%N)
  BW_MODE=$1 BW_OPS=100 BW_RUN=$1$RANDOM wrk -t8 -c8 -d"${secs}s" --latency -s "$root/tests/load/bench_write.lua" "$url" >"$T_TMP/wrk.$1" 2>"$T_TMP/wrk.$1.err"
  alive
  t1=$(date +%s.%N); a1=$(applied)
  rate=$(awk -v a="$((a1 - a0))" -v t0="$t0" -v t1="$t1" 'BEGIN {printf "%.0f", a / (t1 - t0)}')
  local p50; p50=$(awk '$1=="50%" {print $2}' "$T_TMP/wrk.$1")
  rates[$2]=$rate
  echo "BENCH $2 $rate ops/s 8 clients x 100-op batches, pool_size $pool, $((a1 - a0)) ops in ${secs}s, batch p50 ${p50:-?}, goal >= 20000"
}
# write to own checkpoint
rounds=${BENCH_CHECKPOINTS:-20}
cp_token=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub cp --ttl 3600)
: >"$T_TMP/cp.txt"
for ((i = 1; i <= rounds; i++)); do
  t0=$(date +%s%N)
  curl -s -o /dev/null -X POST -H "Authorization: Bearer $cp_token" -H 'Content-Type: application/json' \
    --data-binary "{\"client_id\":\"cp\",\"batch\":[{\"op_id\":$i,\"op\":\"PUT\",\"type\":\"bench\",\"id\":\"cp-$i\",\"data\":{\"label\":\"cp\",\"owner\":\"cp\"}}]}" "$url/api/write"
  t1=$(date +%s%N)
  curl -s -o /dev/null -H "Authorization: Bearer $cp_token" "$url/write-checkpoint2.json?client_id=cp"
  t2=$(date +%s%N)
  seen=0
  for ((k = 0; k < 3000; k++)); do # at most about a minute
    if "$FERRY_BIN" debug dump --config "$T_TMP/ferry.yaml" --bucket '1#mine["cp"]' 2>>"$T_TMP/dump.err" |
         grep -q "\"id\":\"cp-$i\""; then seen=1; break; fi
  done
  [ $seen = 1 ] || { echo "row cp-$i never reached storage: $(tail -2 "$T_TMP/dump.err")" >&2; break; }
  t3=$(date +%s%N)
  echo "$(( (t1 - t0) / 1000 )) $(( (t2 - t1) / 1000 )) $(( (t3 - t0) / 1000 ))" >>"$T_TMP/cp.txt"
done
d0=$(date +%s%N)
for ((k = 0; k < 10; k++)); do "$FERRY_BIN" debug dump --config "$T_TMP/ferry.yaml" --bucket '1#mine["cp"]' >/dev/null 2>&1; done
dump_ms=$(( ($(date +%s%N) - d0) / 10000000 ))
p50() { sort -n | awk '{ v[NR] = $1 } END { printf "%.1f", v[int((NR + 1) / 2)] / 1000 }'; }
echo "BENCH write_checkpoint_request_p50 $(awk '{print $2}' "$T_TMP/cp.txt" | p50) ms GET /write-checkpoint2.json after the write, $rounds rounds"
echo "BENCH write_to_own_checkpoint_p50 $(awk '{print $3}' "$T_TMP/cp.txt" | p50) ms POST of 1 op until the row is in bucket storage (debug dump polled, one dump takes ${dump_ms} ms), $rounds rounds"

throughput insert write_insert_ops_per_second
throughput patch write_patch_ops_per_second
throughput patch_lww write_patch_lww_ops_per_second
bad=$(notapplied)
[ "$bad" = 0 ] || echo "warning: $bad ops were not applied (see $T_TMP)" >&2
head -3 "$T_TMP/wrk.insert.err" >&2 || true

# single-op round trip: 1,000 POSTs one after the other on one keep-alive connection (curl
# --next), each answered before the next is sent
n1=${BENCH_SINGLE:-1000}
for ((i = 1; i <= n1; i++)); do
  [ $i -gt 1 ] && echo "next"
  echo "url = \"$url/api/write\""
  echo "header = \"Authorization: Bearer $BW_TOKEN\""
  echo "header = \"Content-Type: application/json\""
  echo "data = \"{\\\"client_id\\\":\\\"one\\\",\\\"batch\\\":[{\\\"op_id\\\":$i,\\\"op\\\":\\\"PUT\\\",\\\"type\\\":\\\"bench\\\",\\\"id\\\":\\\"one-$i\\\",\\\"data\\\":{\\\"label\\\":\\\"x\\\",\\\"owner\\\":\\\"bench\\\"}}]}\""
  echo "output = \"/dev/null\""
  echo "write-out = \"%{http_code} %{time_total}\\n\""
done >"$T_TMP/one.curl"
curl -s --config "$T_TMP/one.curl" >"$T_TMP/one.txt"
alive
ok1=$(grep -c '^200 ' "$T_TMP/one.txt" || true)
pct() { awk '{print $2 * 1e6}' "$T_TMP/one.txt" | sort -n | awk -v p="$1" '{ v[NR] = $1 } END { i = int(NR * p / 100 + 0.5); if (i < 1) i = 1; printf "%.0f", v[i] }'; }
echo "BENCH write_single_op_round_trip_p50 $(pct 50) us POST of 1 op to 200 on a keep-alive connection, $ok1/$n1 answered 200, p99 $(pct 99) us"

# the limit in the same run: Postgres alone, the same rows inserted 100 per transaction
cat >"$T_TMP/pg.sql" <<'SQL'
\set k random(1, 1000000000)
BEGIN;
INSERT INTO plain SELECT 'x' || :k || '-' || g, 'item', 'bench', g FROM generate_series(1, 100) g ON CONFLICT DO NOTHING;
COMMIT;
SQL
if command -v pgbench >/dev/null || [ -x /usr/lib/postgresql/15/bin/pgbench ]; then
  pgb=$(command -v pgbench || echo /usr/lib/postgresql/15/bin/pgbench)
  tps=$("$pgb" -n -c 8 -j 8 -T "$secs" -M prepared -f "$T_TMP/pg.sql" "$db" 2>/dev/null | awk '/^tps/ {print $3; exit}')
  echo "BENCH write_postgres_only_rows_per_second $(awk -v t="$tps" 'BEGIN {printf "%.0f", t * 100}') rows/s limit: pgbench, 8 clients, one INSERT ... SELECT of 100 rows per transaction (no rules, no HTTP)"
fi
stop_pid "$FERRY_PID" 5

# the cost of the sync history: the same inserts and PATCHes with write_back.history.keep: 0
# (same Postgres, same rows; fresh client ids)
printf '  history:\n    keep: 0\n' >>"$T_TMP/ferry.yaml"
start_ferry "$T_TMP/ferry.yaml"
wait_ready "$port" 60 || { echo "ferry not ready: $(curl -s "$url/probes/readiness")"; exit 1; }
throughput insert write_insert_no_history_ops_per_second
throughput patch write_patch_no_history_ops_per_second
throughput patch_lww write_patch_lww_no_history_ops_per_second
stop_pid "$FERRY_PID" 5
cost() { awk -v on="${rates[$1]}" -v off="${rates[$2]}" 'BEGIN {printf "%.1f", (off > 0 ? (1 - on / off) * 100 : 0)}'; }
echo "BENCH write_history_cost_insert_percent $(cost write_insert_ops_per_second write_insert_no_history_ops_per_second) % throughput lost to recording every op (inserts: ${rates[write_insert_ops_per_second]} with, ${rates[write_insert_no_history_ops_per_second]} without), goal <= 15"
echo "BENCH write_history_cost_patch_percent $(cost write_patch_ops_per_second write_patch_no_history_ops_per_second) % throughput lost to recording every op (PATCHes: ${rates[write_patch_ops_per_second]} with, ${rates[write_patch_no_history_ops_per_second]} without), goal <= 15"
