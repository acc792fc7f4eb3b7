#!/usr/bin/env bash
# 31_crash.sh -- kill -9 of ferry during the snapshot and during streaming loses nothing
#
# Snapshot: 60,000 rows read in chunks of 500; ferry is killed with SIGKILL at three points of
# the snapshot (after 5,000, 20,000 and 40,000 rows, held there by FERRY_TEST_SNAPSHOT_HOLD) and
# restarted each time. The snapshot must resume (the log says so) and storage must end equal to
# the oracle.
#
# Streaming: a writer commits 1,500 transactions, each inserting one `events` row and bumping
# one `counter` row, while ferry is killed three more times, each once storage holds 200, 600
# and 1,000 of the events (the kills follow progress the test reads, whatever the speed). Exactly once means: the events
# bucket holds exactly one op per inserted row, the counter bucket exactly one op per
# transaction (plus its snapshot PUT), op ids are strictly increasing within every bucket and
# unique overall, every bucket checksum equals the sum of its ops, and storage equals the oracle.
# storage: both
source "$(dirname "$0")/../lib/testlib.sh"

db=$(new_db crash31)
psql -q "$db" <<'SQL'
CREATE TABLE items (id int PRIMARY KEY, grp int, v text);
CREATE TABLE events (id int PRIMARY KEY, note text);
CREATE TABLE counter (id int PRIMARY KEY, n int);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO items SELECT i, i % 13, 'value ' || i FROM generate_series(1, 60000) i;
INSERT INTO counter VALUES (1, 0);
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  all_items:
    data:
      - SELECT id, v FROM items
  by_grp:
    parameters: SELECT request.user_id() AS grp
    data:
      - SELECT id, grp, v FROM items WHERE grp = bucket.grp
  events:
    data:
      - SELECT id, note FROM events
      - SELECT id, n FROM counter
YAML
port=$(free_port)
SNAPSHOT_CHUNK_ROWS=500 SLOT_PREFIX=crash31 replication_config "$T_TMP/ferry.yaml" "$port" "$db"
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
logs=()

# ---- kill -9 during the snapshot, at three points ----
# FERRY_TEST_SNAPSHOT_HOLD=N makes ferry stop after its snapshot has stored N rows (a durable
# chunk) and log "test hold"; the kill comes then, whatever the machine's speed
killed=0
total=0
for at in 5000 15000 20000; do # rows read by each run: killed after 5k, 20k, 40k in all
  FERRY_TEST_SNAPSHOT_HOLD=$at start_ferry "$T_TMP/ferry.yaml" || exit 1
  logs+=("$FERRY_LOG")
  for ((i = 0; i < 1200; i++)); do
    grep -q 'msg="test hold: snapshot paused"' "$FERRY_LOG" && break
    sleep 0.05
  done
  n=$(metric ferry_snapshot_rows_total); n=${n:-0}
  kill -KILL "$FERRY_PID"; wait "$FERRY_PID" 2>/dev/null
  total=$((total + n))
  [ "$n" -ge "$at" ] && [ "$total" -lt 60000 ] && killed=$((killed + 1))
done
expect_eq "ferry was killed mid-snapshot three times" 3 "$killed"
start_ferry "$T_TMP/ferry.yaml" || exit 1
logs+=("$FERRY_LOG")
wait_ready "$port" 60 && pass "ready after the restarts" || fail "ready after the restarts" "$(curl -s "http://127.0.0.1:$port/probes/readiness")"
resumed=$(cat "${logs[@]}" | grep -c 'msg="snapshotting a table".*resume=yes')
[ "$resumed" -ge 3 ] && pass "each restart resumed the snapshot ($resumed)" || fail "snapshot resumed" "$resumed resumes"
snap_rows=$(metric ferry_snapshot_rows_total)
[ "${snap_rows:-0}" -gt 0 ] && [ "$snap_rows" -lt 60000 ] && pass "the last run read only the rest ($snap_rows rows)" || fail "the last run read only the rest" "$snap_rows"
converged "$T_TMP/ferry.yaml" 60 && pass "storage equals the oracle after kills during the snapshot" || fail "oracle after snapshot kills" "$(head -5 "$T_TMP/converge.diff")"
checksums_ok "$T_TMP/ferry.yaml" && pass "checksums equal the sum of ops after snapshot kills" || fail "checksums after snapshot kills" mismatch

# ---- kill -9 during streaming, while a writer commits ----
writes=1500
for ((i = 1; i <= writes; i++)); do
  echo "BEGIN; INSERT INTO events VALUES ($i, 'event $i'); UPDATE counter SET n = n + 1 WHERE id = 1; COMMIT;"
  ((i % 50 == 0)) && echo "SELECT pg_sleep(0.05);"
done >"$T_TMP/writer.sql"
psql -q "$db" -f "$T_TMP/writer.sql" >"$T_TMP/writer.log" 2>&1 &
writer=$!
T_PIDS+=("$writer")
# FERRY_TEST_REPLAY=1 streams from the slot's confirmed position and confirms nothing new, so
# after each kill Postgres resends transactions storage already holds: only ferry's skip of
# transactions below the stored LSN keeps them from being applied twice
# Each kill comes once this run of ferry streams and storage holds more of the writer's events
# than before it started (progress the test reads from storage), not after a fixed pause that
# a loaded machine may not fill.
stored_events() { local n; n=$(storage_query "SELECT count(*) FROM rows WHERE tbl LIKE '%#public.events'" 2>/dev/null); echo "${n:-0}"; }
for target in 200 600 1000; do
  for ((i = 0; i < 1200; i++)); do
    grep -q 'msg="streaming changes"' "$FERRY_LOG" && [ "$(stored_events)" -ge "$target" ] && break
    sleep 0.05
  done
  kill -KILL "$FERRY_PID"; wait "$FERRY_PID" 2>/dev/null
  FERRY_TEST_REPLAY=1 start_ferry "$T_TMP/ferry.yaml" || exit 1
  logs+=("$FERRY_LOG")
done
wait "$writer"
expect_eq "the writer committed every transaction" "0 $writes" "$? $(psql -tAq "$db" -c 'SELECT n FROM counter')"
streamed=$(cat "${logs[@]}" | grep -c 'msg="streaming changes"')
[ "$streamed" -ge 4 ] && pass "ferry resumed streaming after each kill ($streamed)" || fail "streaming resumed" "$streamed"
converged "$T_TMP/ferry.yaml" 60 && pass "storage equals the oracle after kills during streaming" || fail "oracle after streaming kills" "$(head -5 "$T_TMP/converge.diff")"
checksums_ok "$T_TMP/ferry.yaml" && pass "checksums equal the sum of ops after streaming kills" || fail "checksums after streaming kills" mismatch
count=$("$FERRY_BIN" debug dump --config "$T_TMP/ferry.yaml" --checksums | sed -n 's/.*"bucket":"[0-9]*#events\[\]".*"count":\([0-9]*\).*/\1/p')
expect_eq "no transaction applied twice: one op per event and per counter update" $((writes + writes + 1)) "$count"
"$FERRY_BIN" debug dump --config "$T_TMP/ferry.yaml" --ops >"$T_TMP/ops.jsonl"
dups=$(jq -r '.op.op_id' "$T_TMP/ops.jsonl" | sort | uniq -d | wc -l)
expect_eq "op ids are unique" 0 "$dups"
order=$(jq -r 'select(.op.object_type == "events") | "\(.op.object_id) \(.op.op_id)"' "$T_TMP/ops.jsonl" | sort -n -k1,1 | awk 'NR > 1 && $2 + 0 <= prev { bad++ } { prev = $2 + 0 } END { print bad + 0 }')
expect_eq "events got op ids in commit order" 0 "$order"
lines=$(jq -r '"\(.bucket) \(.op.op_id)"' "$T_TMP/ops.jsonl" | awk '$1 == b && $2 + 0 <= prev { bad++ } { b = $1; prev = $2 + 0 } END { print bad + 0 }')
expect_eq "op ids increase within every bucket" 0 "$lines"
max_op=$(jq -r '.op.op_id | tonumber' "$T_TMP/ops.jsonl" | sort -n | tail -1)
# the serving rule version's checkpoint ("<version>#last_op"); next_op is shared by all versions
cp="(SELECT CAST(v AS bigint) FROM state WHERE k = (SELECT v FROM state WHERE k = 'serving') || '#last_op')"
last=$(storage_query "SELECT CASE WHEN $max_op <= $cp AND $cp < (SELECT CAST(v AS bigint) FROM state WHERE k = 'next_op') THEN 1 ELSE 0 END")
expect_eq "the checkpoint covers every op and the next op id is above it" 1 "$last"
expect_eq "no errors in the logs" "" "$(cat "${logs[@]}" | grep 'level=error' | grep -v 'replication stopped' | head -3)"
