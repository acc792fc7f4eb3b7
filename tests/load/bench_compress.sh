#!/usr/bin/env bash
# bench_compress.sh -- compressed streams (issue #18) with build/ferry-load (make bench)
#
# On its own Postgres cluster and one ferry (http.threads 2, http.compression defaults), with the
# rows of bench_streams.sh (id, 'row N md5'), prints "BENCH name value unit note":
#  (a) bytes per op on the wire, initial sync of one ROWS-op bucket (default 1,000,000), for
#      identity, zstd and gzip, and the ratios identity / zstd and identity / gzip;
#  (b) that initial sync with zstd: ops/s, the identity rate of the same run and their ratio,
#      ferry's peak RSS;
#  (c) fan-out with zstd: FANOUT streams (default 1,000), RATE single-row commits/s (default
#      100) for SECONDS (default 10): commit-to-client latency p50/p99, beside the same fan-out
#      without compression just before;
#  (d) IDLE idle zstd streams (default 10,000) on a restarted ferry: ferry's RSS per stream.
# Env overrides: BENCH_STREAM_ROWS, BENCH_IDLE_STREAMS, BENCH_FANOUT_STREAMS, BENCH_FANOUT_RATE,
# BENCH_FANOUT_SECONDS, BENCH_LOAD_PROCS. JSON goes to build/bench/compress_*.
set -euo pipefail
source "$(dirname "$0")/../lib/testlib.sh"
rows=${BENCH_STREAM_ROWS:-1000000}
idle_n=${BENCH_IDLE_STREAMS:-10000}
fan_n=${BENCH_FANOUT_STREAMS:-1000}
fan_rate=${BENCH_FANOUT_RATE:-100}
fan_secs=${BENCH_FANOUT_SECONDS:-10}
procs=${BENCH_LOAD_PROCS:-2}
load=${LOAD_BIN:-$(dirname "$FERRY_BIN")/ferry-load}
out=$T_ROOT/build/bench
mkdir -p "$out"
[ -x "$load" ] && [ -x "$FERRY_BIN" ] || { echo "build first: make all"; exit 1; }

pgenv=$("$T_ROOT/tests/lib/pg.sh" start benchcompress)
eval "$pgenv"
trap 't_cleanup; "$T_ROOT/tests/lib/pg.sh" stop "$PGTMP"' EXIT
export FERRY_PG_URI
db=$(new_db bench)
psql -q "$db" <<SQL
CREATE TABLE items (id int PRIMARY KEY, owner text, body text);
CREATE TABLE ferry_load_ticks (id text PRIMARY KEY, owner text, ts bigint);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO items SELECT i, 'bulk0', 'row ' || i || ' ' || md5(i::text) FROM generate_series(1, $rows) i;
SQL
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
  max_connections: $((idle_n + fan_n + 100))
YAML
start_ferry "$T_TMP/ferry.yaml"
wait_ready "$port" 600 || { echo "ferry did not finish the snapshot"; tail "$FERRY_LOG"; exit 1; }
stop_pid "$FERRY_PID" 10
start_ferry "$T_TMP/ferry.yaml"
wait_ready "$port" 60 || { echo "ferry did not come back"; tail "$FERRY_LOG"; exit 1; }
url=http://127.0.0.1:$port
common=(--url "$url" --secret test-secret-test-secret-test-secret --kid test --aud ferry)
jget() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
status=0
run() {
  local label=$1 rc=0; shift
  "$load" "$@" || rc=$?
  if [ $rc -ne 0 ]; then echo "WARNING: $label: ferry-load exited $rc (see above)"; status=1; fi
  if ! kill -0 "$FERRY_PID" 2>/dev/null; then
    echo "ERROR: ferry died during $label; its log ends:"; tail -5 "$FERRY_LOG"; exit 1
  fi
}

# (a, b) initial syncs: a warm-up, then identity, zstd, gzip in turn
run warm-up initial "${common[@]}" --user-prefix bulk --timeout 300 --quiet >/dev/null
for e in identity zstd gzip; do
  enc=(); [ "$e" = identity ] || enc=(--encoding "$e")
  run "initial $e" initial "${common[@]}" "${enc[@]}" --user-prefix bulk --timeout 300 \
    --ferry-pid "$FERRY_PID" --json "$out/compress_initial_$e.json" --quiet >/dev/null
done
bpo() { jget "$out/compress_initial_$1.json" 'round(j["received"]["bytes"] / j["received"]["ops"], 1)'; }
ops() { jget "$out/compress_initial_$1.json" 'round(j["initial"]["ops_per_s"])'; }
decoded() { jget "$out/compress_initial_$1.json" 'round(j["received"]["decoded_bytes"] / j["received"]["ops"], 1)'; }
b_id=$(bpo identity); b_z=$(bpo zstd); b_g=$(bpo gzip)
o_id=$(ops identity); o_z=$(ops zstd)
rss_z=$(jget "$out/compress_initial_zstd.json" 'round(j["ferry_rss_kb"]["peak_sampled"] / 1024, 1)')
cks=$(for e in identity zstd gzip; do jget "$out/compress_initial_$e.json" 'j["checksums"]["failures"]'; done | paste -sd+ | bc)
same=$( [ "$(decoded zstd)" = "$(decoded identity)" ] && [ "$(decoded gzip)" = "$(decoded identity)" ] && echo yes || echo no)

# (c) fan-out with zstd, after the same without compression (the machine's floor in this run);
# other users each time, or the second run's streams would receive the first run's rows
run fanout-identity fanout "${common[@]}" --user-prefix fanid --clients "$fan_n" --procs "$procs" --pg "$db" \
  --rate "$fan_rate" --seconds "$fan_secs" --timeout 300 --ferry-pid "$FERRY_PID" \
  --json "$out/compress_fanout_identity.json" --quiet >/dev/null
ilat() { jget "$out/compress_fanout_identity.json" "round(j[\"latency_ms\"][\"$1\"], 2)"; }
# a restarted ferry: it holds the streams just closed until their next keepalive (20 s)
stop_pid "$FERRY_PID" 10
start_ferry "$T_TMP/ferry.yaml"
wait_ready "$port" 60 || { echo "ferry did not come back"; tail "$FERRY_LOG"; exit 1; }
run fanout fanout "${common[@]}" --encoding zstd --user-prefix fanzstd --clients "$fan_n" --procs "$procs" --pg "$db" \
  --rate "$fan_rate" --seconds "$fan_secs" --timeout 300 --ferry-pid "$FERRY_PID" \
  --json "$out/compress_fanout.json" --quiet >/dev/null
lat() { jget "$out/compress_fanout.json" "round(j[\"latency_ms\"][\"$1\"], 2)"; }
deliv=$(jget "$out/compress_fanout.json" 'str(j["fanout"]["deliveries"]) + "/" + str(j["fanout"]["expected_deliveries"])')

# (d) idle zstd streams on a restarted ferry
stop_pid "$FERRY_PID" 10
start_ferry "$T_TMP/ferry.yaml"
wait_ready "$port" 60 || { echo "ferry did not come back"; tail "$FERRY_LOG"; exit 1; }
run idle idle "${common[@]}" --encoding zstd --clients "$idle_n" --procs "$procs" --hold 2 \
  --timeout 300 --ferry-pid "$FERRY_PID" --json "$out/compress_idle.json" --quiet >/dev/null
per=$(jget "$out/compress_idle.json" 'round(j["ferry_rss_kb"]["per_idle_stream"], 1)')
up=$(jget "$out/compress_idle.json" 'j["streams"]["established"]')
stop_pid "$FERRY_PID" 10

echo "BENCH stream_bytes_per_op_identity $b_id B/op $rows-op initial sync on the wire ($cks checksum failures in the three runs)"
echo "BENCH stream_bytes_per_op_zstd $b_z B/op decoded bytes per op equal identity's: $same"
echo "BENCH stream_bytes_per_op_gzip $b_g B/op"
echo "BENCH stream_zstd_size_ratio $(python3 -c "print(round($b_id / $b_z, 2))") x identity / zstd bytes; goal >= 4"
echo "BENCH stream_gzip_size_ratio $(python3 -c "print(round($b_id / $b_g, 2))") x identity / gzip bytes"
echo "BENCH stream_initial_zstd_ops_per_second $o_z ops/s $rows-op bucket to 1 raw client, zstd; goal >= 1000000"
echo "BENCH stream_initial_identity_same_run_ops_per_second $o_id ops/s the same sync without compression, same run"
echo "BENCH stream_initial_zstd_ratio_to_identity $(python3 -c "print(round($o_z / $o_id, 3))") x zstd / identity rate; goal >= 0.5"
echo "BENCH stream_initial_zstd_ferry_rss_peak $rss_z MiB sampled every 10 ms during the zstd sync; goal < 64"
echo "BENCH stream_fanout_zstd_latency_p50 $(lat p50) ms $fan_n zstd streams, $fan_rate commits/s for ${fan_secs}s, $deliv delivered; goal <= 5"
echo "BENCH stream_fanout_zstd_latency_p99 $(lat p99) ms goal <= 20"
echo "BENCH stream_fanout_identity_same_run_latency_p50 $(ilat p50) ms the same fan-out without compression, just before"
echo "BENCH stream_fanout_identity_same_run_latency_p99 $(ilat p99) ms"
echo "BENCH stream_idle_zstd_rss_per_stream $per KB $up idle zstd streams over $procs client processes; goal < 40"
exit $status
