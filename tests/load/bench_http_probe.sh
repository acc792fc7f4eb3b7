#!/usr/bin/env bash
# bench_http_probe.sh -- probe requests per second over keep-alive connections, and ferry's RSS
#
# Starts ferry on a free loopback port, measures its idle RSS, drives GET /probes/liveness with
# wrk (2 threads, 64 keep-alive connections, BENCH_SECONDS, default 10), and reads RSS again
# under load. The limit in the same run: wrk against a static file served by the same machine's
# loopback is not available without another server, so the figure is absolute (this machine).
set -euo pipefail
source "$(dirname "$0")/../lib/testlib.sh"
secs=${BENCH_SECONDS:-10}
command -v wrk >/dev/null || { echo "wrk is missing (make deps)"; exit 1; }
port=$(free_port)
write_config "$T_TMP/ferry.yaml" "$port"
sed -i 's/log_level: debug/log_level: warn/' "$T_TMP/ferry.yaml"
start_ferry "$T_TMP/ferry.yaml"
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
idle=$(rss_kb "$FERRY_PID")
wrk -t2 -c64 -d"${secs}s" --latency "http://127.0.0.1:$port/probes/liveness" >"$T_TMP/wrk.txt" &
wpid=$!
sleep $(( secs / 2 ))
load=$(rss_kb "$FERRY_PID")
wait $wpid
cat "$T_TMP/wrk.txt"
rps=$(awk '/^Requests\/sec/ {print $2}' "$T_TMP/wrk.txt")
p99=$(awk '$1=="99%" {print $2}' "$T_TMP/wrk.txt")
stop_pid "$FERRY_PID" 5
echo "BENCH http_probe_requests_per_second $rps req/s wrk -t2 -c64 ${secs}s keep-alive, p99 $p99"
echo "BENCH ferry_rss_idle $((idle / 1024)) MiB"
echo "BENCH ferry_rss_under_probe_load $((load / 1024)) MiB"
