#!/usr/bin/env bash
# bench_streams_repl.sh -- replication with Sync Streams against equivalent bucket definitions
# (make bench)
#
# One Postgres cluster, four ferry configurations over the same database: A1 and A2 replicate with
# 5 bucket definitions (two of them with table-lookup parameter queries), B1 and B2 with the 5
# equivalent Sync Streams (edition 3; one with a JOIN on a membership table, one with an
# IN (SELECT ...) subquery), each with its own slot and storage. Every slot exists before the
# changes are committed (CHANGES row changes, default 400,000: inserts into lists, todos and
# members, then updates), while nobody consumes. Then each configuration catches up alone, in the
# order A1 B1 B2 A2 (so drift on the shared machine weighs on both sides alike), until its stored
# LSN reaches the final position. Prints "BENCH name value unit note": each run's rate and CPU
# time per change, and the streams' rate as a percentage of the bucket definitions' (total
# changes over total time of both runs of each side; and the same from CPU time, which the noise
# of a shared machine disturbs less). Goal (issue 17): >= 80 %.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
changes=${1:-${BENCH_STREAMS_REPL_CHANGES:-400000}}
bin=${FERRY_BIN:-$root/build/ferry}
[ -x "$bin" ] || make -C "$root" --no-print-directory build/ferry >/dev/null
tmp=$(mktemp -d /tmp/ferry-bench-srepl.XXXXXX)
pgenv=$("$root/tests/lib/pg.sh" start benchsrepl)
eval "$pgenv"
fpid=""
cleanup() {
  [ -n "$fpid" ] && kill "$fpid" 2>/dev/null && wait "$fpid" 2>/dev/null
  "$root/tests/lib/pg.sh" stop "$PGTMP"
  [ -n "${KEEP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
psql -q "$FERRY_PG_URI" -c "CREATE DATABASE bench"
db=${FERRY_PG_URI%/*}/bench
psql -q "$db" <<'SQL'
CREATE TABLE lists (id int PRIMARY KEY, owner_id text, name text, n int);
CREATE TABLE todos (id int PRIMARY KEY, list_id int, description text, done boolean);
CREATE TABLE members (id int PRIMARY KEY, list_id int, user_id text);
CREATE PUBLICATION ferry FOR ALL TABLES;
SQL
cat >"$tmp/defs.yaml" <<'YAML'
config:
  edition: 2
bucket_definitions:
  global_lists:
    data:
      - SELECT id, name FROM lists
  by_owner:
    parameters: SELECT request.user_id() AS owner_id
    data:
      - SELECT id, name, n FROM lists WHERE owner_id = bucket.owner_id
  shared_todos:
    parameters: SELECT list_id FROM members WHERE user_id = request.user_id()
    data:
      - SELECT id, description, done FROM todos WHERE list_id = bucket.list_id
  open_todos:
    data:
      - SELECT id, description FROM todos WHERE done = false
  own_todos:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT id, description FROM todos WHERE list_id = bucket.list_id
YAML
cat >"$tmp/streams.yaml" <<'YAML'
config:
  edition: 3
streams:
  global_lists:
    auto_subscribe: true
    query: SELECT id, name FROM lists
  by_owner:
    auto_subscribe: true
    query: SELECT id, name, n FROM lists WHERE owner_id = auth.user_id()
  shared_todos:
    auto_subscribe: true
    query: |
      SELECT todos.id, todos.description, todos.done FROM todos
        JOIN members ON members.list_id = todos.list_id WHERE members.user_id = auth.user_id()
  open_todos:
    auto_subscribe: true
    query: SELECT id, description FROM todos WHERE done = false
  own_todos:
    auto_subscribe: true
    query: |
      SELECT id, description FROM todos
      WHERE list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())
YAML
runs="A1 B1 B2 A2"
for r in $runs; do
  mkdir -p "$tmp/$r"
  rules=$tmp/defs.yaml; [ "${r:0:1}" = B ] && rules=$tmp/streams.yaml
  cp "$rules" "$tmp/$r/sync-rules.yaml"
  port=$(( 10000 + RANDOM % 22000 ))
  echo "$port" >"$tmp/$r/port"
  lr=$(echo "$r" | tr 'A-Z' 'a-z')
  cat >"$tmp/$r/ferry.yaml" <<YAML
log_level: info
http:
  listen: "127.0.0.1:$port"
  threads: 1
postgres:
  uri: "$db"
replication:
  slot_prefix: bench$lr
storage:
  path: storage.db
auth:
  audience: [ferry]
  keys:
    - { kid: b, alg: HS256, secret: "bench-secret-bench-secret-bench-secret" }
YAML
done
metric() { { curl -s "http://127.0.0.1:$1/metrics" || true; } | awk -v m="$2" '$1 == m { print $2 }'; }
start() { # start RUN
  (cd "$tmp/$1" && exec "$bin" serve --config "$tmp/$1/ferry.yaml" >>"$tmp/$1/ferry.log" 2>&1) &
  fpid=$!
}
ready() {
  for ((i = 0; i < 300; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/probes/readiness")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}
# every slot and (empty) snapshot first; the changes come while nobody consumes
for r in $runs; do
  start "$r"
  ready "$(cat "$tmp/$r/port")" || { echo "ferry $r did not become ready"; tail -5 "$tmp/$r/ferry.log"; exit 1; }
  kill "$fpid"; wait "$fpid" || true; fpid=""
done

quarter=$((changes / 4))
txns=$((quarter / 1000))
{
  echo "\\set ON_ERROR_STOP 1"
  for ((t = 0; t < txns; t++)); do
    a=$((t * 1000 + 1)); b=$((a + 999))
    echo "INSERT INTO lists SELECT i, 'u' || (i % 100), 'list ' || i, i FROM generate_series($a, $b) i;"
    echo "INSERT INTO todos SELECT i, i % 5000, 'todo ' || i, false FROM generate_series($a, $b) i;"
    echo "INSERT INTO members SELECT i, i % 5000, 'u' || (i % 97) FROM generate_series($a, $b) i;"
  done
  for ((t = 0; t < txns; t++)); do
    a=$((t * 1000 + 1)); b=$((a + 999))
    if ((t % 2 == 0)); then
      echo "UPDATE lists SET n = n + 1, name = name || '+' WHERE id BETWEEN $a AND $b;"
    else
      echo "UPDATE todos SET done = NOT done WHERE id BETWEEN $a AND $b;"
    fi
  done
} >"$tmp/load.sql"
psql -q "$db" -f "$tmp/load.sql"
target_num=$(psql -tAq "$db" -c "SELECT pg_current_wal_lsn() - '0/0'")
total=$((txns * 4000))
echo "generated $total changes (lists, todos, members inserts, then updates; 1000 per txn)"

declare -A secs cpu
for r in $runs; do
  port=$(cat "$tmp/$r/port")
  t0=$(date +%s.%N)
  start "$r"
  for ((i = 0; i < 12000; i++)); do
    l=$(metric "$port" ferry_replication_stored_lsn)
    [ -n "$l" ] && [ "$l" -ge "$target_num" ] && break
    sleep 0.02
  done
  t1=$(date +%s.%N)
  ticks=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$fpid/stat")
  got=$(metric "$port" ferry_replication_changes_total)
  kill -INT "$fpid"; wait "$fpid" || true; fpid=""
  [ "${got:-0}" -ge "$total" ] || { echo "ferry $r saw only ${got:-0} changes"; tail -5 "$tmp/$r/ferry.log"; exit 1; }
  secs[$r]=$(echo "$t1 - $t0" | bc -l)
  cpu[$r]=$(echo "scale=3; $ticks / $(getconf CLK_TCK)" | bc)
  kind="bucket definitions"; [ "${r:0:1}" = B ] && kind="sync streams"
  echo "BENCH streams_repl_run_$r $(echo "$total / ${secs[$r]}" | bc) changes/s $kind, run $r: $(printf '%.2f' "${secs[$r]}") s wall, ${cpu[$r]} s CPU"
done
defs_s=$(echo "${secs[A1]} + ${secs[A2]}" | bc -l)
streams_s=$(echo "${secs[B1]} + ${secs[B2]}" | bc -l)
defs_cpu=$(echo "${cpu[A1]} + ${cpu[A2]}" | bc -l)
streams_cpu=$(echo "${cpu[B1]} + ${cpu[B2]}" | bc -l)
echo "BENCH streams_repl_defs_changes_per_s $(echo "2 * $total / $defs_s" | bc) changes/s 5 bucket definitions (runs A1, A2)"
echo "BENCH streams_repl_streams_changes_per_s $(echo "2 * $total / $streams_s" | bc) changes/s 5 sync streams, one JOIN, one subquery (runs B1, B2)"
echo "BENCH streams_repl_ratio $(echo "scale=1; 100 * $defs_s / $streams_s" | bc) % streams' rate as a share of the bucket definitions' (wall time), goal >= 80"
echo "BENCH streams_repl_cpu_ratio $(echo "scale=1; 100 * $defs_cpu / $streams_cpu" | bc) % the same from ferry's CPU time (${defs_cpu} s vs ${streams_cpu} s)"
