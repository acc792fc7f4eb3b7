#!/usr/bin/env bash
# bench_load.sh -- ferry-load's write and soak scenarios (make bench)
#
# On its own Postgres cluster and one ferry (http.threads 2), with write rules on the ticks table,
# prints "BENCH name value unit note":
#  (a) write: WRITE_STREAMS streams (default 100) up; WRITERS processes (default 4) post
#      100-op batches to /api/write for WRITE_SECONDS (default 10): applied ops/s and batch p50,
#      write-to-stream latency (row stamped before the POST, received on its user's stream); then
#      WRITE_ROUNDS (default 50) write-to-own-checkpoint rounds: POST 1 op, GET
#      /write-checkpoint2.json, until that client's stream carries the counter (p50, p99);
#  (b) soak: SOAK_STREAMS streams (default 300) for SOAK_SECONDS (default 60), SOAK_RATE
#      commits/s (default 50) and SOAK_WRITES 1-op writes/s (default 20): ferry's RSS at the first
#      and last second and its growth, errors and checksum failures (goal: none), latency p99;
#  (c) sdk: SDK_CLIENTS libferry clients (default 200, 50 users), each its own SQLite file,
#      syncing a global SDK_ROWS-row table (default 2,000) at once: time to first sync p50/p99,
#      rows/s over all clients, the harness's memory per client, and 1 local write each until
#      uploaded and synced.
# Env overrides: BENCH_WRITE_STREAMS, BENCH_WRITERS, BENCH_WRITE_SECONDS, BENCH_WRITE_ROUNDS,
# BENCH_SOAK_STREAMS, BENCH_SOAK_SECONDS, BENCH_SOAK_RATE, BENCH_SOAK_WRITES, BENCH_LOAD_PROCS,
# BENCH_SDK_CLIENTS, BENCH_SDK_ROWS.
# JSON and plots go to build/bench/load_write.* and build/bench/load_soak.*.
set -euo pipefail
source "$(dirname "$0")/../lib/testlib.sh"
w_n=${BENCH_WRITE_STREAMS:-100}
writers=${BENCH_WRITERS:-4}
w_secs=${BENCH_WRITE_SECONDS:-10}
rounds=${BENCH_WRITE_ROUNDS:-50}
s_n=${BENCH_SOAK_STREAMS:-300}
s_secs=${BENCH_SOAK_SECONDS:-60}
s_rate=${BENCH_SOAK_RATE:-50}
s_writes=${BENCH_SOAK_WRITES:-20}
procs=${BENCH_LOAD_PROCS:-2}
sdk_n=${BENCH_SDK_CLIENTS:-200}
sdk_rows=${BENCH_SDK_ROWS:-2000}
load=${LOAD_BIN:-$(dirname "$FERRY_BIN")/ferry-load}
out=$T_ROOT/build/bench
mkdir -p "$out"
[ -x "$load" ] && [ -x "$FERRY_BIN" ] || { echo "build first: make all"; exit 1; }

pgenv=$("$T_ROOT/tests/lib/pg.sh" start benchload)
eval "$pgenv"
trap 't_cleanup; "$T_ROOT/tests/lib/pg.sh" stop "$PGTMP"' EXIT
export FERRY_PG_URI
db=$(new_db bench)
psql -q -v ON_ERROR_STOP=1 "$db" -f "$T_ROOT/deploy/postgres/setup.sql"
psql -q -v ON_ERROR_STOP=1 "$db" <<'SQL'
CREATE TABLE ferry_load_ticks (id text PRIMARY KEY, owner text, ts bigint);
CREATE TABLE notes (id text PRIMARY KEY, grp text, body text);
CREATE TABLE sdk_writes (id text PRIMARY KEY, owner text, ts bigint);
SQL
psql -q "$db" -c "INSERT INTO notes SELECT 'n' || i, 'sdk', 'note ' || i || ' ' || md5(i::text) FROM generate_series(1, $sdk_rows) i"
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner, ts FROM ferry_load_ticks WHERE owner = bucket.owner
      - SELECT id, owner, ts FROM sdk_writes WHERE owner = bucket.owner
  sdk_notes:
    parameters: SELECT request.parameters() ->> 'grp' AS grp
    data:
      - SELECT id, body FROM notes WHERE grp = bucket.grp
write_rules:
  sdk_writes:
    operations: [insert]
    columns: [id, owner, ts]
    check: "new.owner = request.user_id()"
  ferry_load_ticks:
    operations: [insert, update]
    columns: [id, owner, ts]
    check: "new.owner = request.user_id()"
YAML
port=$(free_port)
replication_config "$T_TMP/ferry.yaml" "$port" "$db"
sed -i 's/^log_level: info/log_level: warn/' "$T_TMP/ferry.yaml"
cat >>"$T_TMP/ferry.yaml" <<YAML
limits:
  max_connections: $((w_n + s_n + sdk_n * 2 + writers + 100))
YAML
start_ferry "$T_TMP/ferry.yaml"
wait_ready "$port" 120 || { echo "ferry not ready"; tail "$FERRY_LOG"; exit 1; }
url=http://127.0.0.1:$port
common=(--url "$url" --secret test-secret-test-secret-test-secret --kid test --aud ferry)
jget() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

status=0
run() { # run LABEL ARGS...: like bench_streams.sh, an inconsistent run fails the script at the end
  local label=$1 rc=0; shift
  "$load" "$@" || rc=$?
  if [ $rc -ne 0 ]; then echo "WARNING: $label: ferry-load exited $rc (see above)"; status=1; fi
  if ! kill -0 "$FERRY_PID" 2>/dev/null; then
    echo "ERROR: ferry died during $label; its log ends:"; tail -5 "$FERRY_LOG"
    exit 1
  fi
}
# (a) write
run write write "${common[@]}" --user-prefix w --clients "$w_n" --procs "$procs" \
  --writers "$writers" --batch 100 --seconds "$w_secs" --rounds "$rounds" --timeout 300 \
  --ferry-pid "$FERRY_PID" --json "$out/load_write.json" --plot "$out/load_write"
wj=$out/load_write.json
# (b) soak
run soak soak "${common[@]}" --user-prefix s --clients "$s_n" --procs "$procs" --pg "$db" \
  --rate "$s_rate" --write-rate "$s_writes" --seconds "$s_secs" --timeout $((s_secs + 120)) \
  --ferry-pid "$FERRY_PID" --json "$out/load_soak.json" --plot "$out/load_soak"
sj=$out/load_soak.json
# (c) sdk
run sdk sdk --url "$url" --secret test-secret-test-secret-test-secret --kid test --aud ferry \
  --user-prefix k --clients "$sdk_n" --users 50 --params '{"grp":"sdk"}' --schema 'notes:body;sdk_writes:owner,ts:int' \
  --expect-rows "$sdk_rows" --writes 1 --write-table sdk_writes --timeout 300 --json "$out/load_sdk.json"
kj=$out/load_sdk.json
stop_pid "$FERRY_PID" 10

echo "BENCH load_write_ops_per_second $(jget "$wj" 'round(j["write"]["ops_per_s"])') ops/s ferry-load: $writers writers x 100-op batches for ${w_secs}s with $w_n streams up, $(jget "$wj" 'j["write"]["applied"]')/$(jget "$wj" 'j["write"]["ops"]') applied, batch p50 $(jget "$wj" 'round(j["write_batch_ms"]["p50"], 2)') ms"
echo "BENCH load_write_to_stream_p50 $(jget "$wj" 'round(j["latency_ms"]["p50"], 2)') ms row stamped before its POST until received on its user's stream, p99 $(jget "$wj" 'round(j["latency_ms"]["p99"], 2)') ms, $(jget "$wj" 'j["fanout"]["deliveries"]')/$(jget "$wj" 'j["fanout"]["expected_deliveries"]') delivered"
echo "BENCH load_write_to_own_checkpoint_p50 $(jget "$wj" 'round(j["write_to_own_checkpoint_ms"]["p50"], 2)') ms POST 1 op + GET /write-checkpoint2.json until the client's stream carries the counter, $(jget "$wj" 'j["write"]["rounds_ok"]')/$rounds rounds, p99 $(jget "$wj" 'round(j["write_to_own_checkpoint_ms"]["p99"], 2)') ms"
echo "BENCH load_soak_ferry_rss_growth $(jget "$sj" 'round((j["soak"]["rss_last_kb"] - j["soak"]["rss_first_kb"]) / 1024, 1)') MiB from the first to the last second of ${s_secs}s: $s_n streams, $s_rate commits/s, $s_writes writes/s (first $(jget "$sj" 'round(j["soak"]["rss_first_kb"] / 1024, 1)'), max $(jget "$sj" 'round(j["soak"]["rss_max_kb"] / 1024, 1)') MiB)"
echo "BENCH load_soak_errors $(jget "$sj" 'j["soak"]["errors"] + j["checksums"]["failures"]') errors streams failed or closed, commit/write errors, checksum failures ($(jget "$sj" 'j["checksums"]["failures"]')), over ${s_secs}s; $(jget "$sj" 'j["soak"]["deliveries"]')/$(jget "$sj" 'j["soak"]["expected_deliveries"]') delivered goal=<1"
echo "BENCH load_soak_latency_p99 $(jget "$sj" 'round(j["latency_ms"]["p99"], 2)') ms commit or write until received, over the soak (p50 $(jget "$sj" 'round(j["latency_ms"]["p50"], 2)') ms)"
echo "BENCH load_sdk_first_sync_p99 $(jget "$kj" 'round(j["time_to_first_sync_ms"]["p99"], 1)') ms $sdk_n libferry clients at once, $sdk_rows rows each, p50 $(jget "$kj" 'round(j["time_to_first_sync_ms"]["p50"], 1)') ms, $(jget "$kj" 'j["synced"]') synced, $(jget "$kj" 'j["checksum_failures"]') checksum failures"
echo "BENCH load_sdk_rows_per_second $(jget "$kj" 'round(j["rows"]["per_s"])') rows/s into $sdk_n SQLite files at once, until the slowest client synced"
echo "BENCH load_sdk_memory_per_client $(jget "$kj" 'round(j["harness_rss_kb"]["peak_after_sync"] / j["clients"])') KB harness peak RSS / clients (libferry, its threads and SQLite caches)"
echo "BENCH load_sdk_write_to_synced_p50 $(jget "$kj" 'round(j["write_to_synced_ms"]["p50"], 1)') ms 1 local write per client until uploaded and its checkpoint applied, $(jget "$kj" 'j["writes"]["clients_caught_up"]') caught up; ferry_wait_synced returned early $(jget "$kj" 'j["writes"]["wait_synced_early_returns"]') times"
exit $status
