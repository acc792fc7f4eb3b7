#!/usr/bin/env bash
# bench_pgstorage.sh -- bucket storage in Postgres, several instances (issue #20; make bench)
#
# Prints "BENCH name value unit note" lines:
#  (a) replication of CHANGES (default 1,000,000) row changes, 5 bucket definitions (the load of
#      bench_replication.sh), into storage kind postgres on a second local cluster: changes/s,
#      and pg_recvlogical draining the same changes (the limit) and the ratio; then the same into
#      storage in the source cluster (another database: its storage writes are WAL the walsender
#      decodes too); the storage's size per million ops against the SQLite file for the same data
#      (a third catch-up, kind sqlite);
#  (b) initial sync of one ROWS-op bucket (default 1,000,000) read from Postgres storage by one
#      raw client (ferry-load initial): ops/s;
#  (c) FANOUT streams (default 1,000) spread over three instances behind HAProxy, RATE single-row
#      commits/s (default 100) for SECONDS (default 10): commit-to-client latency p50/p99;
#  (d) failover: KILLS times (default 20) the leader is killed with SIGKILL while a stream is open
#      on a standby, a row is written at once, and the time until that stream is sent the
#      checkpoint holding it is measured: median and max.
# PARTS="a b c d" selects parts. Traffic stays on loopback.
set -euo pipefail
source "$(dirname "$0")/../lib/testlib.sh"
source "$T_ROOT/tests/lib/instances.sh"
parts=${PARTS:-a b c d}
changes=${CHANGES:-1000000}
rows=${ROWS:-1000000}
fan_n=${FANOUT:-1000}
fan_rate=${RATE:-100}
fan_secs=${SECONDS_FANOUT:-10}
kills=${KILLS:-20}
load=${LOAD_BIN:-$(dirname "$FERRY_BIN")/ferry-load}
out=$T_ROOT/build/bench
mkdir -p "$out"
[ -x "$load" ] && [ -x "$FERRY_BIN" ] || { echo "build first: make all"; exit 1; }
jget() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

pgenv=$("$T_ROOT/tests/lib/pg.sh" start benchpgs)
eval "$pgenv"
src_tmp=$PGTMP
export FERRY_PG_URI
st_tmp=
cleanup() { t_cleanup; "$T_ROOT/tests/lib/pg.sh" stop "$src_tmp"; [ -n "$st_tmp" ] && "$T_ROOT/tests/lib/pg.sh" stop "$st_tmp"; return 0; }
trap cleanup EXIT

RULES5='bucket_definitions:
  global_lists:
    data:
      - SELECT id, name FROM lists
  by_owner:
    parameters: SELECT request.user_id() AS owner_id
    data:
      - SELECT id, name, n FROM lists WHERE owner_id = bucket.owner_id
  by_list:
    parameters: SELECT request.parameters() ->> '"'"'list_id'"'"' AS list_id
    data:
      - SELECT id, description, done FROM todos WHERE list_id = bucket.list_id
  open_todos:
    data:
      - SELECT id, description FROM todos WHERE done = false
  done_todos:
    data:
      - SELECT id FROM todos WHERE done = true'

# config FILE PORT SOURCE STORAGE_YAML
config() {
  cat >"$1" <<YAML
log_level: warn
http:
  listen: "127.0.0.1:$2"
  threads: 1
postgres:
  uri: "$3"
replication:
  slot_prefix: ${SLOT:-bench}
$4
auth:
  audience: [ferry]
  keys:
    - { kid: test, alg: HS256, secret: "test-secret-test-secret-test-secret" }
YAML
}
metric() { { curl -s "http://127.0.0.1:$1/metrics" || true; } | awk -v m="$2" '$1 == m { print $2 }'; }

# catch_up NAME STORAGE_YAML: a fresh slot, CHANGES changes committed while nobody consumes, then
# ferry catches up alone; prints the seconds it took (and leaves ferry stopped)
catch_up() {
  local name=$1 st=$2 db port t0 t1 target
  db=$(new_db "repl_$name")
  psql -q "$db" -c "CREATE TABLE lists (id int PRIMARY KEY, owner_id text, name text, n int);
    CREATE TABLE todos (id int PRIMARY KEY, list_id int, description text, done boolean);
    CREATE PUBLICATION ferry FOR TABLE lists, todos"
  mkdir -p "$T_TMP/$name"
  echo "$RULES5" >"$T_TMP/$name/sync-rules.yaml"
  port=$(free_port)
  SLOT=b_$name config "$T_TMP/$name/ferry.yaml" "$port" "$db" "$st"
  start_ferry "$T_TMP/$name/ferry.yaml" >&2
  wait_ready "$port" 60 || { echo "ferry ($name) not ready" >&2; tail -5 "$FERRY_LOG" >&2; exit 1; }
  stop_pid "$FERRY_PID" 10
  [ "$name" = pg ] && pg_recvlogical -d "$db" --slot bench_recv --create-slot -P pgoutput >/dev/null
  local half=$((changes / 2)) txns t a b
  txns=$((half / 1000))
  {
    echo "\\set ON_ERROR_STOP 1"
    for ((t = 0; t < txns; t++)); do
      a=$((t * 1000 + 1)); b=$((a + 999))
      if ((t % 2 == 0)); then echo "INSERT INTO lists SELECT i, 'u' || (i % 100), 'list ' || i, i FROM generate_series($a, $b) i;"
      else echo "INSERT INTO todos SELECT i, i % 5000, 'todo ' || i, false FROM generate_series($a, $b) i;"; fi
    done
    for ((t = 0; t < txns; t++)); do
      a=$((t * 1000 + 1)); b=$((a + 999))
      if ((t % 2 == 0)); then echo "UPDATE lists SET n = n + 1, name = name || '+' WHERE id BETWEEN $a AND $b;"
      else echo "UPDATE todos SET done = NOT done WHERE id BETWEEN $a AND $b;"; fi
    done
  } >"$T_TMP/load.sql"
  psql -q "$db" -f "$T_TMP/load.sql"
  target=$(psql -tAq "$db" -c "SELECT pg_current_wal_lsn() - '0/0'")
  if [ "$name" = pg ]; then
    t0=$(date +%s.%N)
    pg_recvlogical -d "$db" --slot bench_recv --start -E "$(psql -tAq "$db" -c "SELECT pg_current_wal_lsn()")" -f /dev/null -F 0 -s 1 \
      -o proto_version=1 -o publication_names=ferry
    t1=$(date +%s.%N)
    echo "$(echo "$t1 - $t0" | bc -l)" >"$T_TMP/recv_s"
    psql -q "$db" -c "SELECT pg_drop_replication_slot('bench_recv')" >/dev/null
  fi
  t0=$(date +%s.%N)
  start_ferry "$T_TMP/$name/ferry.yaml" >&2
  for ((i = 0; i < 30000; i++)); do
    l=$(metric "$port" ferry_replication_stored_lsn)
    [ -n "$l" ] && [ "$l" -ge "$target" ] && break
    sleep 0.02
  done
  t1=$(date +%s.%N)
  # where the CPU went: ferry's threads, and every Postgres process (both clusters)
  for t in /proc/$FERRY_PID/task/*; do awk -v tck="$(getconf CLK_TCK)" '{ n = $2; sub(/.*\) /, ""); printf "%s=%.1fs ", n, ($12 + $13) / tck }' "$t/stat"; done >"$T_TMP/$name/threads"
  ps -u postgres -o time=,args= | awk '{ split($1, t, ":"); s = t[1] * 3600 + t[2] * 60 + t[3]; if (s > 0) print s "s", $2, $3, $4, $5 }' | sort -rn | head -6 >"$T_TMP/$name/pgcpu"
  stop_pid "$FERRY_PID" 10
  echo "$t1 - $t0" | bc -l
}

if [[ " $parts " == *" a "* ]]; then
  pgenv2=$(PG_OPTS="${STORAGE_PG_OPTS:-}" "$T_ROOT/tests/lib/pg.sh" start benchpgs-storage)
  st_tmp=$(echo "$pgenv2" | sed -n 's/^PGTMP=//p')
  st_uri=$(echo "$pgenv2" | sed -n 's/^FERRY_PG_URI=//p')
  psql -q "$st_uri" -c "CREATE DATABASE storage"
  st_uri=${st_uri%/*}/storage
  secs=$(catch_up pg "storage:
  kind: postgres
  uri: \"$st_uri\"")
  rate=$(echo "$changes / $secs" | bc)
  recv=$(echo "$changes / $(cat "$T_TMP/recv_s")" | bc)
  ops=$(psql -tAq "$st_uri" -c "SELECT sum(n) FROM ferry.op_chunks")
  echo "  ferry threads: $(cat "$T_TMP/pg/threads")"
  echo "  postgres processes (cumulative CPU):"; sed 's/^/    /' "$T_TMP/pg/pgcpu"
  pg_bytes=$(psql -tAq "$st_uri" -c "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'ferry' AND c.relkind IN ('r', 'S')")
  if [ -n "${STORAGE_PG_OPTS:-}" ]; then # e.g. -c shared_preload_libraries=pg_stat_statements
    psql -q "$st_uri" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" 2>/dev/null &&
      psql -q "$st_uri" -c "SELECT round(total_exec_time) AS ms, calls, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS q FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8" || true
  fi
  echo "BENCH pgstorage_replication_changes_per_s $rate changes/s $changes changes (1000 per txn, 5 bucket definitions) into Postgres storage on a second local cluster; goal >= 50000"
  echo "BENCH pgstorage_replication_pg_recvlogical_per_s $recv changes/s pg_recvlogical draining the same changes (the limit)"
  echo "BENCH pgstorage_replication_ratio_to_pg_recvlogical $(echo "scale=1; 100 * $rate / $recv" | bc) % ferry into Postgres storage / pg_recvlogical"
  psql -q "$FERRY_PG_URI" -c "CREATE DATABASE repl_same_st"
  secs2=$(catch_up same "storage:
  kind: postgres
  uri: \"${FERRY_PG_URI%/*}/repl_same_st\"")
  echo "BENCH pgstorage_replication_same_cluster_changes_per_s $(echo "$changes / $secs2" | bc) changes/s the same, storage in the source cluster (its WAL decoded by the walsender too)"
  secs3=$(catch_up lite "storage:
  path: storage.db")
  lite_bytes=$(( $(stat -c %s "$T_TMP/lite/storage.db") + $(stat -c %s "$T_TMP/lite/storage.db-wal" 2>/dev/null || echo 0) ))
  lite_ops=$(sqlite3 "$T_TMP/lite/storage.db" "SELECT sum(n) FROM op_chunks")
  echo "BENCH pgstorage_bytes_per_million_ops $(( pg_bytes * 1000000 / ops / 1048576 )) MB Postgres storage ($ops ops, $((pg_bytes / 1048576)) MB with indexes and TOAST) per million ops; SQLite file for the same data: $(( lite_bytes * 1000000 / lite_ops / 1048576 )) MB per million ops (catch-up $(echo "$changes / $secs3" | bc) changes/s)"
  echo "BENCH pgstorage_sqlite_bytes_per_million_ops $(( lite_bytes * 1000000 / lite_ops / 1048576 )) MB the SQLite file for the same data"
fi

if [[ " $parts " == *" b "* ]] || [[ " $parts " == *" c "* ]]; then
  db=$(new_db streams)
  psql -q "$db" -c "CREATE TABLE items (id int PRIMARY KEY, owner text, body text);
    CREATE TABLE ferry_load_ticks (id text PRIMARY KEY, owner text, ts bigint);
    CREATE PUBLICATION ferry FOR TABLE items, ferry_load_ticks;
    INSERT INTO items SELECT i, 'bulk0', 'row ' || i || ' ' || md5(i::text) FROM generate_series(1, $rows) i;"
  cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, body FROM items WHERE owner = bucket.owner
      - SELECT id, owner, ts FROM ferry_load_ticks WHERE owner = bucket.owner
YAML
  SLOT_PREFIX=bstreams inst_setup "$db" 3 "limits:
  max_connections: $((fan_n + 100))"
  sed -i 's/^  kid: conf.*//; s/{ kid: conf, alg: HS256, secret: "conformance-secret-conformance-secret-0123" }/{ kid: test, alg: HS256, secret: "test-secret-test-secret-test-secret" }/; s/^log_level: info/log_level: warn/' "$T_TMP"/i?/ferry.yaml
  inst_start 1
  wait_ready "${INST_PORT[1]}" 900 || { echo "the snapshot did not finish"; tail -5 "${INST_LOG[1]}"; exit 1; }
  for k in 2 3; do inst_start "$k"; wait_ready "${INST_PORT[k]}" 60; done
  common=(--secret test-secret-test-secret-test-secret --kid test --aud ferry)
  if [[ " $parts " == *" b "* ]]; then
    "$load" initial --url "$(inst_base 2)" "${common[@]}" --user-prefix bulk --timeout 300 --quiet >/dev/null || true
    "$load" initial --url "$(inst_base 2)" "${common[@]}" --user-prefix bulk --timeout 300 \
      --ferry-pid "${INST_PID[2]}" --json "$out/pgstorage_initial.json" || true
    fops=$(jget "$out/pgstorage_initial.json" 'round(j["initial"]["ops_per_s"])')
    got=$(jget "$out/pgstorage_initial.json" 'j["received"]["ops"]')
    cks=$(jget "$out/pgstorage_initial.json" 'j["checksums"]["failures"]')
    echo "BENCH pgstorage_stream_initial_ops_per_second $fops ops/s a $rows-op bucket read from Postgres storage by a standby, to 1 raw client ($got ops, $cks checksum failures); goal >= 1000000"
  fi
  if [[ " $parts " == *" c "* ]]; then
    haproxy_start
    "$load" fanout --url "http://127.0.0.1:$HAPROXY_PORT" "${common[@]}" --clients "$fan_n" --procs 2 --pg "$db" \
      --rate "$fan_rate" --seconds "$fan_secs" --timeout 300 --json "$out/pgstorage_fanout.json" || true
    lat() { jget "$out/pgstorage_fanout.json" "round(j[\"latency_ms\"][\"$1\"], 2)"; }
    deliv=$(jget "$out/pgstorage_fanout.json" 'str(j["fanout"]["deliveries"]) + "/" + str(j["fanout"]["expected_deliveries"])')
    spread=$(for k in 1 2 3; do metric "${INST_PORT[k]}" ferry_streams_open; done | tr '\n' '/' | sed 's#/$##')
    echo "BENCH pgstorage_fanout_latency_p50 $(lat p50) ms $fan_n streams over 3 instances behind HAProxy (open per instance $spread), $fan_rate commits/s, $deliv deliveries; goal <= 10"
    echo "BENCH pgstorage_fanout_latency_p99 $(lat p99) ms the same; goal <= 50"
  fi
  for k in 1 2 3; do stop_pid "${INST_PID[k]}" 10; done
fi

if [[ " $parts " == *" d "* ]]; then
  db=$(new_db failover)
  psql -q "$db" -c "CREATE TABLE items (id text PRIMARY KEY, owner text, body text); CREATE PUBLICATION ferry FOR TABLE items"
  cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, body FROM items WHERE owner = bucket.owner
YAML
  SLOT_PREFIX=bfail inst_setup "$db" 3
  for k in 1 2 3; do inst_start "$k"; done
  for k in 1 2 3; do wait_ready "${INST_PORT[k]}" 60; done
  tok=$("$FERRY_BIN" token --config "$T_TMP/i1/ferry.yaml" --sub u1)
  times=()
  for ((n = 1; n <= kills; n++)); do
    k=$(inst_leader)
    s=$(( k % 3 + 1 )) # a standby carries the stream
    curl -sN -X POST "$(inst_base "$s")/sync/stream" -H "Authorization: Token $tok" -H 'Content-Type: application/json' \
      -d '{"client_id":"f","raw_data":true,"buckets":[]}' >"$T_TMP/f.out" &
    cpid=$!
    for ((i = 0; i < 100; i++)); do grep -q checkpoint_complete "$T_TMP/f.out" && break; sleep 0.05; done
    sleep 0.5
    t0=$(date +%s%N)
    inst_kill "$k"
    psql -qX "$db" -c "INSERT INTO items VALUES ('k$n', 'u1', 'after kill $n')" >/dev/null
    for ((i = 0; i < 3000; i++)); do grep -q "\"object_id\":\"k$n\"" "$T_TMP/f.out" && break; sleep 0.01; done
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    grep -q "\"object_id\":\"k$n\"" "$T_TMP/f.out" || ms=30000
    times+=("$ms")
    kill "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null || true
    inst_start "$k"
    wait_ready "${INST_PORT[k]}" 60
  done
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  med=$(echo "$sorted" | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
  max=$(echo "$sorted" | tail -1)
  echo "BENCH pgstorage_failover_median_ms $med ms leader SIGKILL to a stream on a standby being sent the next checkpoint, over $kills kills (all: ${times[*]})"
  echo "BENCH pgstorage_failover_max_ms $max ms the same, the slowest; goal <= 5000"
  for k in 1 2 3; do stop_pid "${INST_PID[k]}" 10; done
fi
