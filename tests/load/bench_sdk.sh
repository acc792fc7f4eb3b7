#!/usr/bin/env bash
# bench_sdk.sh -- libferry: initial sync of BENCH_SDK_ROWS rows (default 200000; the issue's
# figure is 1000000: BENCH_SDK_ROWS=1000000), client peak RSS, local write latency
#
# Starts its own throwaway Postgres and ferry on loopback, loads the rows, waits until ferry has
# snapshotted them, then runs build/bench_sdk against it. Prints "BENCH name value unit note".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export T_RESULTS=/dev/null
source "$here/../lib/testlib.sh"
BUILD=${FERRY_BUILD:-build}
rows=${BENCH_SDK_ROWS:-200000}
make -s -C "$T_ROOT" "$BUILD/bench_sdk" >/dev/null || exit 1
pgenv=$("$T_ROOT/tests/lib/pg.sh" start bench-sdk) || exit 1
eval "$pgenv"
export FERRY_PG_URI
trap '"$T_ROOT/tests/lib/pg.sh" stop "$PGTMP"; t_cleanup' EXIT
psql -q "$FERRY_PG_URI" <<SQL
CREATE TABLE items (id text PRIMARY KEY, owner text, body text, n int);
INSERT INTO items SELECT 'item' || i, 'u1', 'body of item number ' || i, i FROM generate_series(1, $rows) i;
CREATE PUBLICATION ferry FOR ALL TABLES;
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner, body, n FROM items WHERE owner = bucket.owner
YAML
port=$(free_port)
SNAPSHOT_CHUNK_ROWS=10000 replication_config "$T_TMP/ferry.yaml" "$port" "$FERRY_PG_URI"
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 600 || { echo "ferry not ready"; exit 1; }
tok=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub u1)
# BENCH_SDK_BINS="A B": run these bench_sdk binaries one after the other against the same
# server (to compare two builds under the same conditions); default: this build's
for bin in ${BENCH_SDK_BINS:-$T_ROOT/$BUILD/bench_sdk}; do
  [ -n "${BENCH_SDK_BINS:-}" ] && echo "# $bin"
  rm -f "$T_TMP"/bench.db*
  "$bin" "http://127.0.0.1:$port" "$tok" "$T_TMP/bench.db"
done
