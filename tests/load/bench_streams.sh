#!/usr/bin/env bash
# bench_streams.sh -- sync-stream figures of issue #6 with build/ferry-load (make bench)
#
# On its own Postgres cluster and one ferry (http.threads 2), prints "BENCH name value unit note":
#  (a) initial sync of one ROWS-op bucket (default 1,000,000) to one raw client: ops/s and ferry's
#      peak RSS; in the same run the limit: the same response bytes (saved by the client) served
#      from a loopback socket by ferry-load --cat and read by the same reader, and the ratio;
#  (b) IDLE idle streams (default 10,000, over 2 client processes and source addresses):
#      ferry's RSS growth per stream;
#  (c) FANOUT streams (default 1,000), RATE single-row commits/s (default 100) for SECONDS
#      (default 10), each row to one user's bucket: commit-to-client latency p50/p99/max;
#  (d) CHURN clients (default 1,000) reconnecting all at once CYCLES times (default 3): the
#      slowest cycle and ferry's RSS growth per reconnect.
# Order: a, c, d, then b on a restarted ferry (ferry holds closed streams until their next
# keepalive, up to 20 s, and their freed memory would hide the cost of new streams).
# Env overrides: BENCH_STREAM_ROWS, BENCH_IDLE_STREAMS, BENCH_FANOUT_STREAMS, BENCH_FANOUT_RATE,
# BENCH_FANOUT_SECONDS, BENCH_CHURN_STREAMS, BENCH_CHURN_CYCLES, BENCH_LOAD_PROCS. JSON and plots go to build/bench/streams_*.
set -euo pipefail
source "$(dirname "$0")/../lib/testlib.sh"
rows=${BENCH_STREAM_ROWS:-1000000}
idle_n=${BENCH_IDLE_STREAMS:-10000}
fan_n=${BENCH_FANOUT_STREAMS:-1000}
fan_rate=${BENCH_FANOUT_RATE:-100}
fan_secs=${BENCH_FANOUT_SECONDS:-10}
churn_n=${BENCH_CHURN_STREAMS:-1000}
churn_k=${BENCH_CHURN_CYCLES:-3}
procs=${BENCH_LOAD_PROCS:-2}
load=${LOAD_BIN:-$(dirname "$FERRY_BIN")/ferry-load}
out=$T_ROOT/build/bench
mkdir -p "$out"
[ -x "$load" ] && [ -x "$FERRY_BIN" ] || { echo "build first: make all"; exit 1; }

pgenv=$("$T_ROOT/tests/lib/pg.sh" start benchstreams)
eval "$pgenv"
trap 't_cleanup; "$T_ROOT/tests/lib/pg.sh" stop "$PGTMP"' EXIT
export FERRY_PG_URI
db=$(new_db bench)
t0=$(date +%s.%N)
psql -q "$db" <<SQL
CREATE TABLE items (id int PRIMARY KEY, owner text, body text);
CREATE TABLE ferry_load_ticks (id text PRIMARY KEY, owner text, ts bigint);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO items SELECT i, 'bulk0', 'row ' || i || ' ' || md5(i::text) FROM generate_series(1, $rows) i;
SQL
# one bucket per user: the bulk user owns every item, the others get only their ticks
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, body FROM items WHERE owner = bucket.owner
      - SELECT id, owner, ts FROM ferry_load_ticks WHERE owner = bucket.owner
YAML
port=$(free_port)
SNAPSHOT_CHUNK_ROWS=10000 replication_config "$T_TMP/ferry.yaml" "$port" "$db"
sed -i 's/^log_level: info/log_level: warn/' "$T_TMP/ferry.yaml"
cat >>"$T_TMP/ferry.yaml" <<YAML
limits:
  max_connections: $((idle_n + fan_n + churn_n * churn_k + 100))
YAML
start_ferry "$T_TMP/ferry.yaml"
wait_ready "$port" 600 || { echo "ferry did not finish the snapshot"; tail "$FERRY_LOG"; exit 1; }
t1=$(date +%s.%N)
echo "setup: $rows rows inserted and snapshotted in $(printf '%.1f' "$(echo "$t1 - $t0" | bc)") s"
# restart, so the figures below do not carry the snapshot's memory
stop_pid "$FERRY_PID" 10
start_ferry "$T_TMP/ferry.yaml"
wait_ready "$port" 60 || { echo "ferry did not come back"; tail "$FERRY_LOG"; exit 1; }
url=http://127.0.0.1:$port
common=(--url "$url" --secret test-secret-test-secret-test-secret --kid test --aud ferry)
jget() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

status=0
# run LABEL ARGS...: ferry-load; an inconsistent run (exit 3) or a ferry that died is reported and
# makes the script fail at the end, after the figures
run() {
  local label=$1 rc=0; shift
  "$load" "$@" || rc=$?
  if [ $rc -ne 0 ]; then echo "WARNING: $label: ferry-load exited $rc (see above)"; status=1; fi
  if ! kill -0 "$FERRY_PID" 2>/dev/null; then
    echo "ERROR: ferry died during $label; its log ends:"; tail -5 "$FERRY_LOG"
    exit 1
  fi
}
# (a) initial sync to one client: a warm-up run, then the measured one (saving its bytes)
run warm-up initial "${common[@]}" --user-prefix bulk --timeout 300 --quiet >/dev/null
run initial initial "${common[@]}" --user-prefix bulk --timeout 300 --ferry-pid "$FERRY_PID" \
  --save "$T_TMP/stream.raw" --json "$out/streams_initial.json" --plot "$out/streams_initial"
run cat initial "${common[@]}" --cat "$T_TMP/stream.raw" --timeout 300 \
  --json "$out/streams_initial_cat.json" >"$T_TMP/cat.txt"
sed 's/^/  cat: /' "$T_TMP/cat.txt"
ops=$(jget "$out/streams_initial.json" 'j["received"]["ops"]')
[ "$ops" = "$rows" ] || echo "WARNING: the client received $ops ops, not $rows"
fops=$(jget "$out/streams_initial.json" 'round(j["initial"]["ops_per_s"])')
cops=$(jget "$out/streams_initial_cat.json" 'round(j["initial"]["ops_per_s"])')
rss=$(jget "$out/streams_initial.json" 'round(j["ferry_rss_kb"]["peak_sampled"] / 1024, 1)')
cks=$(jget "$out/streams_initial.json" 'j["checksums"]["failures"]')
mb=$(jget "$out/streams_initial.json" 'round(j["received"]["bytes"] / 1e6, 1)')

# (c) fan-out latency (before the idle streams: ferry notices closed streams only at their next
# keepalive, so 10,000 just-closed streams would still be held during the commits)
run fanout fanout "${common[@]}" --clients "$fan_n" --procs "$procs" --pg "$db" --rate "$fan_rate" \
  --seconds "$fan_secs" --timeout 300 --ferry-pid "$FERRY_PID" --json "$out/streams_fanout.json" \
  --plot "$out/streams_fanout"
lat() { jget "$out/streams_fanout.json" "round(j[\"latency_ms\"][\"$1\"], 2)"; }
deliv=$(jget "$out/streams_fanout.json" 'str(j["fanout"]["deliveries"]) + "/" + str(j["fanout"]["expected_deliveries"])')
# ferry's own view of the same deliveries (storage commit to send), to tell server from client time
curl -s "$url/metrics" | grep -E '^ferry_(stream_commit_to_send|storage_commit_duration|replication_source_to_storage)' | sed 's/^/  ferry: /'
# the share of storage commits (and of source-to-storage delays) above 20 ms
slow() { curl -s "$url/metrics" | awk -v m="$1" '$1 == m "_bucket{le=\"0.02\"}" { le = $2 } $1 == m "_count" { n = $2 } END { if (n > 0) printf "%.2f", 100 * (n - le) / n; else print "n/a" }'; }
slow_commit=$(slow ferry_storage_commit_duration_seconds)
slow_source=$(slow ferry_replication_source_to_storage_seconds)
srv_p=$(curl -s "$url/metrics" | awk '/^ferry_stream_commit_to_send_seconds_count/ { n = $2 }
  /^ferry_stream_commit_to_send_seconds_sum/ { s = $2 } END { if (n > 0) printf "%.2f", s / n * 1000; else print "n/a" }')
# (d) churn
run churn churn "${common[@]}" --clients "$churn_n" --procs "$procs" --cycles "$churn_k" \
  --ramp 100000 --timeout 300 --ferry-pid "$FERRY_PID" --json "$out/streams_churn.json"
churn_max=$(jget "$out/streams_churn.json" 'round(max(c["seconds"] for c in j["churn"][1:] or j["churn"]), 3)')
churn_kb=$(jget "$out/streams_churn.json" 'round((j["churn"][-1]["ferry_rss_kb"] - j["churn"][0]["ferry_rss_kb"]) / max(1, (len(j["churn"]) - 1) * j["clients"]), 1)')
# (b) idle streams, on a restarted ferry: memory freed by the closed streams above would
# otherwise be reused and hide the cost of new ones
stop_pid "$FERRY_PID" 10
start_ferry "$T_TMP/ferry.yaml"
wait_ready "$port" 60 || { echo "ferry did not come back"; tail "$FERRY_LOG"; exit 1; }
run idle idle "${common[@]}" --clients "$idle_n" --procs "$procs" --hold 2 --timeout 300 \
  --ferry-pid "$FERRY_PID" --json "$out/streams_idle.json"
per=$(jget "$out/streams_idle.json" 'round(j["ferry_rss_kb"]["per_idle_stream"], 1)')
up=$(jget "$out/streams_idle.json" 'j["streams"]["established"]')

stop_pid "$FERRY_PID" 10

echo "BENCH stream_initial_ops_per_second $fops ops/s $rows-op bucket to 1 raw client ($mb MB, $cks checksum failures); goal >= 500000"
echo "BENCH stream_initial_cat_limit_ops_per_second $cops ops/s the same bytes from a loopback socket, same reader"
echo "BENCH stream_initial_ratio_to_cat $(python3 -c "print(round($fops / $cops, 3))") x ferry / cat limit"
echo "BENCH stream_initial_ferry_rss_peak $rss MiB sampled every 10 ms during the sync; goal < 64"
echo "BENCH stream_idle_rss_per_stream $per KB $up idle streams over $procs client processes; goal < 30"
echo "BENCH stream_fanout_latency_p50 $(lat p50) ms $fan_n streams, $fan_rate commits/s for ${fan_secs}s, $deliv delivered; goal <= 5"
echo "BENCH stream_fanout_latency_p99 $(lat p99) ms goal <= 20"
echo "BENCH stream_fanout_latency_max $(lat max) ms"
echo "BENCH stream_fanout_ferry_commit_to_send_mean $srv_p ms ferry's histogram (storage commit to send), all streams since start"
echo "BENCH stream_fanout_storage_commits_over_20ms $slow_commit % of ferry's storage commits (WAL writes) slower than 20 ms"
echo "BENCH stream_fanout_source_to_storage_over_20ms $slow_source % of batches committed to storage more than 20 ms after their Postgres commit"
echo "BENCH stream_churn_reconnect_all_seconds $churn_max s slowest of $((churn_k - 1)) storms of $churn_n clients reconnecting at once"
echo "BENCH stream_churn_rss_per_reconnect $churn_kb KB closed streams are held until their next keepalive (20 s)"
exit $status
