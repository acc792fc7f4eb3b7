#!/usr/bin/env bash
# bench_replication.sh -- replication throughput into bucket storage (make bench)
#
# On its own Postgres cluster: two slots exist (ferry's and one for pg_recvlogical), then
# 1,000,000 row changes are committed (1,000 transactions of 1,000 rows: 500,000 inserts over
# two tables, then 500,000 updates) into tables covered by a 5-definition rule set, while
# neither consumer runs. Then pg_recvlogical drains its slot to the final LSN alone (the limit of
# decoding and sending on this machine), and then ferry catches up alone (decode, rules, ops,
# storage commits) until its stored LSN reaches the same position. Prints "BENCH name value unit
# note" lines: both rates, their ratio, and ferry's peak RSS (VmHWM). Then ferry serves again and
# the rules file changes while it runs: the time until the new rule version (built beside the
# old one from the same 500,000 rows) serves, whether readiness stayed 200, and the peak RSS.
# CHANGES: $1 (default 1000000, a multiple of 2000).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
changes=${1:-1000000}
bin=${FERRY_BIN:-$root/build/ferry}
[ -x "$bin" ] || make -C "$root" --no-print-directory build/ferry >/dev/null
tmp=$(mktemp -d /tmp/ferry-bench-repl.XXXXXX)
pgenv=$("$root/tests/lib/pg.sh" start benchrepl)
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
CREATE PUBLICATION ferry FOR ALL TABLES;
SQL
cat >"$tmp/sync-rules.yaml" <<'YAML'
bucket_definitions:
  global_lists:
    data:
      - SELECT id, name FROM lists
  by_owner:
    parameters: SELECT request.user_id() AS owner_id
    data:
      - SELECT id, name, n FROM lists WHERE owner_id = bucket.owner_id
  by_list:
    parameters: SELECT request.parameters() ->> 'list_id' AS list_id
    data:
      - SELECT id, description, done FROM todos WHERE list_id = bucket.list_id
  open_todos:
    data:
      - SELECT id, description FROM todos WHERE done = false
  done_todos:
    data:
      - SELECT id FROM todos WHERE done = true
YAML
port=$(( 10000 + RANDOM % 22000 ))
cat >"$tmp/ferry.yaml" <<YAML
log_level: info
http:
  listen: "127.0.0.1:$port"
  threads: 1
postgres:
  uri: "$db"
replication:
  slot_prefix: bench
storage:
  path: storage.db
auth:
  audience: [ferry]
  keys:
    - { kid: b, alg: HS256, secret: "bench-secret-bench-secret-bench-secret" }
YAML
metric() { { curl -s "http://127.0.0.1:$port/metrics" || true; } | awk -v m="$1" '$1 == m { print $2 }'; }
start_ferry() { # PROFILE=DIR records the catch-up with perf into DIR/perf.data
  if [ "${1:-}" = profile ] && [ -n "${PROFILE:-}" ]; then
    perf record ${PERF_OPTS:--g} -o "$PROFILE/perf.data" -- "$bin" serve --config "$tmp/ferry.yaml" >>"$tmp/ferry.log" 2>&1 &
  else
    "$bin" serve --config "$tmp/ferry.yaml" >>"$tmp/ferry.log" 2>&1 &
  fi
  fpid=$!
}
# first start: slot and (empty) snapshot, then stop; the changes come while nobody consumes
start_ferry
for ((i = 0; i < 200; i++)); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/probes/readiness")" = 200 ] && break
  sleep 0.1
done
kill "$fpid"; wait "$fpid" || true; fpid=""
pg_recvlogical -d "$db" --slot bench_recv --create-slot -P pgoutput >/dev/null

half=$((changes / 2))
txns=$((half / 1000))
{
  echo "\\set ON_ERROR_STOP 1"
  for ((t = 0; t < txns; t++)); do
    a=$((t * 1000 + 1)); b=$((a + 999))
    if ((t % 2 == 0)); then
      echo "INSERT INTO lists SELECT i, 'u' || (i % 100), 'list ' || i, i FROM generate_series($a, $b) i;"
    else
      echo "INSERT INTO todos SELECT i, i % 5000, 'todo ' || i, false FROM generate_series($a, $b) i;"
    fi
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
t0=$(date +%s.%N)
psql -q "$db" -f "$tmp/load.sql"
t1=$(date +%s.%N)
target=$(psql -tAq "$db" -c "SELECT pg_current_wal_lsn()")
target_num=$(psql -tAq "$db" -c "SELECT pg_current_wal_lsn() - '0/0'")
echo "generated $changes changes in $(echo "$t1 - $t0" | bc) s; target LSN $target"

# the limit: pg_recvlogical decodes and receives the same changes
t0=$(date +%s.%N)
pg_recvlogical -d "$db" --slot bench_recv --start -E "$target" -f /dev/null -F 0 -s 1 \
  -o proto_version=1 -o publication_names=ferry
t1=$(date +%s.%N)
recv_s=$(echo "$t1 - $t0" | bc -l)

# ferry catches up
t0=$(date +%s.%N)
start_ferry profile
for ((i = 0; i < 12000; i++)); do
  l=$(metric ferry_replication_stored_lsn)
  [ -n "$l" ] && [ "$l" -ge "$target_num" ] && break
  sleep 0.02
done
t1=$(date +%s.%N)
ferry_s=$(echo "$t1 - $t0" | bc -l)
fproc=$fpid
[ -n "${PROFILE:-}" ] && fproc=$(pgrep -P "$fpid" -x ferry || echo "$fpid")
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$fproc/status")
# ferry's CPU time (user + system, all threads): steadier than the rate on a shared machine
ticks=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$fproc/stat")
cpu_s=$(echo "scale=3; $ticks / $(getconf CLK_TCK)" | bc)
# CPU seconds per named thread (the replicator, the apply thread, the syncer, …)
threads=$(for t in /proc/$fproc/task/*; do awk -v tck="$(getconf CLK_TCK)" '{ n = $2; sub(/.*\) /, ""); printf "%s=%.1fs ", n, ($12 + $13) / tck }' "$t/stat"; done | tr -d '()')
# bytes ferry wrote to storage (WAL, checkpoints into the main file)
wbytes=$(awk '/^write_bytes/ { print $2 }' "/proc/$fproc/io" 2>/dev/null || echo 0)
got=$(metric ferry_replication_changes_total)
commits=$(metric ferry_storage_commits_total)
commit_s=$(metric ferry_storage_commit_seconds_total)
kill -INT "$fpid"; wait "$fpid" || true; fpid=""
[ "${got:-0}" -ge "$changes" ] || { echo "ferry saw only ${got:-0} changes"; tail -5 "$tmp/ferry.log"; exit 1; }
ferry_rate=$(echo "$changes / $ferry_s" | bc)
recv_rate=$(echo "$changes / $recv_s" | bc)
ratio=$(echo "scale=1; 100 * $recv_s / $ferry_s" | bc)
echo "BENCH replication_changes_per_s $ferry_rate changes/s ferry, $changes changes (1000 per txn, 5 bucket definitions), goal >= 100000"
echo "BENCH replication_pg_recvlogical_per_s $recv_rate changes/s pg_recvlogical draining the same changes (the limit)"
echo "BENCH replication_ratio_to_pg_recvlogical $ratio % goal >= 50"
echo "BENCH replication_cpu_us_per_change $(echo "scale=2; 1000000 * $cpu_s / $changes" | bc) us ferry CPU (user+sys) per change, ${cpu_s} s in all"
echo "BENCH replication_storage_commits ${commits:-0} commits ferry's storage commits for the catch-up, ${commit_s:-0} s in them (writing the WAL)"
echo "BENCH replication_apply_thread_cpu $(echo "$threads" | tr ' ' '\n' | sed -n 's/^ferry-apply=\(.*\)s$/\1/p') s CPU of the storage-writing thread; every thread: $threads"
echo "BENCH replication_bytes_written_per_change $(( ${wbytes:-0} / changes )) B ferry's writes to disk per change (storage WAL and its checkpoints)"
echo "BENCH replication_peak_rss $((hwm / 1024)) MB ferry VmHWM, goal < 100"

# a rules change while ferry serves: version 2 is built beside version 1, then takes over
start_ferry
for ((i = 0; i < 200; i++)); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/probes/readiness")" = 200 ] && break
  sleep 0.1
done
{ cat "$tmp/sync-rules.yaml"; printf '  all_todos:\n    data:\n      - SELECT id, list_id, done FROM todos\n'; } >"$tmp/rules.new"
t0=$(date +%s.%N)
mv "$tmp/rules.new" "$tmp/sync-rules.yaml"
not_ready=0
for ((i = 0; i < 6000; i++)); do
  curl -s "http://127.0.0.1:$port/metrics" | grep -q 'ferry_replication_slot_info{slot="bench_2"' && break
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/probes/readiness")" = 200 ] || not_ready=$((not_ready + 1))
  sleep 0.05
done
t1=$(date +%s.%N)
hwm2=$(awk '/VmHWM/ { print $2 }' "/proc/$fpid/status")
rows2=$(metric ferry_storage_rows)
kill -INT "$fpid"; wait "$fpid" || true; fpid=""
grep -q 'switched to the new rule version' "$tmp/ferry.log" || { echo "the new rule version did not take over"; tail -5 "$tmp/ferry.log"; exit 1; }
echo "BENCH replication_rules_switch_s $(echo "scale=1; ($t1 - $t0) / 1" | bc) s from a rules file change to the new version serving (${rows2:-?} rows snapshotted beside the serving version, 6 definitions; includes up to 4 s of noticing the change); readiness answered non-200 $not_ready times"
echo "BENCH replication_rules_switch_peak_rss $((hwm2 / 1024)) MB ferry VmHWM while two rule versions were written"
