#!/usr/bin/env bash
# 33_rules_change.sh -- a changed sync-rules file builds a new rule version beside the old one
#
# 1. At start: ferry serves version 1; it is stopped, the rules file changes, ferry starts again.
#    Version 1 keeps serving (readiness 200, its stored rules) while version 2 is built beside it
#    (new slot, snapshot, buckets "2#…"); then version 2 takes over: storage equals the oracle
#    of the new rules, the checkpoint goes on increasing, the old slot, buckets and rows go.
# 2. While running: a live sync stream is open when the rules file changes again, and rows are
#    written during the build. The stream moves to the "3#" buckets through an ordinary
#    checkpoint_diff (no reconnect), its checkpoint ids never decrease, and every row written
#    during the build is in the new version.
# 3. A rules file that does not compile is logged and ignored; the serving version goes on.
# 4. kill -9 during a build (held up by a table missing from the publication), restart: the build
#    resumes where it was. The file edited back to the serving rules abandons it (its slot and
#    rows go); the new rules again start version 5, which completes once the publication is
#    fixed. The new version's write rules apply to write-back from the switch on, not before.
# storage: both
source "$(dirname "$0")/../lib/testlib.sh"

db=$(new_db rules33)
psql -q "$db" <<'SQL'
CREATE TABLE items (id int PRIMARY KEY, grp int, v text);
CREATE TABLE extra (id int PRIMARY KEY, note text);
CREATE TABLE wnotes (id text PRIMARY KEY, note text);
CREATE PUBLICATION ferry FOR TABLE items;
INSERT INTO items SELECT i, i % 4, 'v' || i FROM generate_series(1, 5000) i;
INSERT INTO extra VALUES (1, 'one'), (2, 'two');
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  all_items:
    data:
      - SELECT id, v FROM items
YAML
port=$(free_port)
base="http://127.0.0.1:$port"
SLOT_PREFIX=rules33 replication_config "$T_TMP/ferry.yaml" "$port" "$db"
cat >>"$T_TMP/ferry.yaml" <<'YAML'
admin:
  token: "admin-token-for-the-rules-test"
YAML
diag() { curl -s -H "Authorization: Bearer admin-token-for-the-rules-test" "$base/api/admin/diagnostics"; }
slots() { psql -tAq "$db" -c "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'rules33%'"; }
# wait_version V SECONDS: until the diagnostics say rule version V serves
wait_version() {
  local i; for ((i = 0; i < $2 * 10; i++)); do
    [ "$(diag | jq -r .data.rules_version)" = "$1" ] && return 0; sleep 0.1
  done; return 1; }
storage_count() { storage_query "$1"; }
# put_rules < TEXT: replace the rules file at once, as deploy tools do
put_rules() { cat >"$T_TMP/rules.new" && mv "$T_TMP/rules.new" "$T_TMP/sync-rules.yaml"; }

start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 || fail "ready" "$(curl -s "$base/probes/readiness")"
psql -q "$db" -c "UPDATE items SET v = 'x' WHERE id <= 10"
converged "$T_TMP/ferry.yaml" 60 && pass "version 1 equals the oracle" || fail "version 1" "$(head -3 "$T_TMP/converge.diff")"
v1_last=$(diag | jq -r .data.last_op)
stop_pid "$FERRY_PID" 10

# ---- 1. changed while stopped ----
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  by_grp:
    parameters: SELECT request.user_id() AS grp
    data:
      - SELECT id, v, grp FROM items WHERE grp = bucket.grp
  grp2:
    data:
      - SELECT id, v FROM items WHERE grp = 2
YAML
start_ferry "$T_TMP/ferry.yaml" || exit 1
expect_eq "version 1 serves at once while version 2 is built" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$base/probes/readiness")"
expect_match "the log says the stored version serves while the new one is built" 'the stored version serves while the new one is built.*serving=1' "$(cat "$FERRY_LOG")"
wait_version 2 30 && pass "version 2 takes over" || fail "version 2 takes over" "$(diag)"
expect_match "the log names the switch" 'switched to the new rule version.*version=2 old_version=1' "$(cat "$FERRY_LOG")"
converged "$T_TMP/ferry.yaml" 60 && pass "storage equals the oracle of the new rules" || fail "version 2 equals the oracle" "$(head -3 "$T_TMP/converge.diff")"
expect_eq "every served bucket carries the new version" "" "$(grep -v '"bucket":"2#' "$T_TMP/dump.txt" | head -2)"
v2_first=$("$FERRY_BIN" debug dump --config "$T_TMP/ferry.yaml" --ops | jq -r '.op.op_id | tonumber' | sort -n | head -1)
[ -n "$v2_first" ] && [ "$v2_first" -gt "$v1_last" ] && pass "op ids keep increasing ($v1_last -> $v2_first)" || fail "op ids increase" "$v1_last -> $v2_first"
cp2=$(diag | jq -r .data.last_op)
[ "$cp2" -gt "$v1_last" ] && pass "the checkpoint after the switch is above version 1's ($cp2 > $v1_last)" || fail "checkpoint increases" "$cp2 <= $v1_last"
for ((i = 0; i < 900; i++)); do [ "$(slots)" = rules33_2 ] && break; sleep 0.1; done
expect_eq "the old slot is dropped, the new one kept" "rules33_2" "$(slots)"
for ((i = 0; i < 600; i++)); do [ "$(storage_count "SELECT count(*) FROM rows WHERE tbl LIKE '1#%'")" = 0 ] && break; sleep 0.1; done
expect_eq "the old version's rows are dropped" 0 "$(storage_count "SELECT count(*) FROM rows WHERE tbl LIKE '1#%'")"
expect_eq "the old version's ops are dropped" 0 "$(storage_count "SELECT count(*) FROM op_chunks o JOIN buckets b ON b.id = o.bucket_id WHERE b.name LIKE '1#%'")"
expect_eq "the old version's state is dropped" 0 "$(storage_count "SELECT count(*) FROM state WHERE k LIKE '1#%'")"
psql -q "$db" -c "UPDATE items SET grp = 9 WHERE id = 1; INSERT INTO items VALUES (9001, 2, 'new')"
converged "$T_TMP/ferry.yaml" 60 && pass "the new version streams changes" || fail "streams" "$(head -3 "$T_TMP/converge.diff")"
checksums_ok "$T_TMP/ferry.yaml" && pass "checksums equal the sum of ops" || fail "checksums" mismatch

# ---- 2. changed while running, with a live stream and writes during the build ----
tok=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub 2)
timeout 60 curl -sN -X POST "$base/sync/stream" -H "Authorization: Token $tok" -d '{}' >"$T_TMP/live.ndjson" &
curl_pid=$!
T_PIDS+=("$curl_pid")
for ((i = 0; i < 600; i++)); do grep -q checkpoint_complete "$T_TMP/live.ndjson" && break; sleep 0.1; done
expect_match "the stream syncs version 2's buckets" '"bucket":"2#grp2\[\]","checksum":-?[0-9]+,"count":1251' "$(head -1 "$T_TMP/live.ndjson")"
put_rules <<'YAML'
bucket_definitions:
  by_grp:
    parameters: SELECT request.user_id() AS grp
    data:
      - SELECT id, v, grp FROM items WHERE grp = bucket.grp
  grp2:
    data:
      - SELECT id, v || '!' AS v FROM items WHERE grp = 2
YAML
( for n in $(seq 1 40); do psql -q "$db" -c "INSERT INTO items VALUES ($((20000 + n)), 2, 'during')"; sleep 0.05; done ) &
writer=$!
wait_version 3 30 && pass "version 3 takes over while ferry runs" || fail "version 3 takes over" "$(diag)"
expect_eq "readiness stayed 200" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$base/probes/readiness")"
wait "$writer"
converged "$T_TMP/ferry.yaml" 60 && pass "every row written during the build is in the new version" || fail "version 3 equals the oracle" "$(head -3 "$T_TMP/converge.diff")"
for ((i = 0; i < 600; i++)); do grep -q '"removed_buckets":\[.*2#grp2' "$T_TMP/live.ndjson" && break; sleep 0.1; done
diffline=$(grep '"checkpoint_diff"' "$T_TMP/live.ndjson" | grep '"removed_buckets":\[.*2#grp2' | head -1)
expect_match "the live stream moves to the new buckets with a checkpoint_diff" '"updated_buckets":\[.*"bucket":"3#grp2\[\]".*"removed_buckets":\[.*"2#grp2\[\]"' "$diffline"
ids=$(grep -o '"last_op_id":"[0-9]*"' "$T_TMP/live.ndjson" | grep -o '[0-9]*')
expect_eq "the stream's checkpoint ids never decrease" "$(echo "$ids" | sort -n)" "$ids"
for ((i = 0; i < 600; i++)); do sed -n '/removed_buckets/,$p' "$T_TMP/live.ndjson" | grep -q checkpoint_complete && break; sleep 0.1; done
got=$(sed -n '/removed_buckets/,$p' "$T_TMP/live.ndjson" | grep -c 'during!')
[ "$got" -ge 1 ] && pass "the stream gets the new version's rows" || fail "new rows on the stream" "none after the diff"
kill "$curl_pid" 2>/dev/null; wait "$curl_pid" 2>/dev/null

# ---- 3. a rules file that does not compile ----
cp "$T_TMP/sync-rules.yaml" "$T_TMP/good-rules.yaml"
printf 'bucket_definitions:\n  broken:\n    data:\n      - SELECT id FROM items WHERE\n' | put_rules
for ((i = 0; i < 600; i++)); do grep -q 'the changed sync rules do not load' "$FERRY_LOG" && break; sleep 0.1; done
expect_match "a broken rules file is logged with where it is wrong" 'level=error mod=rules msg=".*sync-rules.yaml:4' "$(grep 'mod=rules' "$FERRY_LOG")"
expect_match "and ignored: the serving version goes on" 'the changed sync rules do not load; the serving version goes on.*version=3' "$(cat "$FERRY_LOG")"
expect_eq "no build started for it" null "$(diag | jq -c .data.building)"
psql -q "$db" -c "UPDATE items SET v = 'after-broken' WHERE id = 2"
converged "$T_TMP/ferry.yaml" 60 && pass "version 3 still streams" || fail "still streams" "$(head -3 "$T_TMP/converge.diff")"

# ---- 4. kill -9 during a build, resume; back to the serving rules; the build again ----
cp "$T_TMP/good-rules.yaml" "$T_TMP/v3-rules.yaml"
tee "$T_TMP/v4-rules.yaml" <<'YAML' | put_rules
bucket_definitions:
  by_grp:
    parameters: SELECT request.user_id() AS grp
    data:
      - SELECT id, v, grp FROM items WHERE grp = bucket.grp
  grp2:
    data:
      - SELECT id, v FROM items WHERE grp = 2
  notes:
    data:
      - SELECT id, note FROM extra
write_rules:
  wnotes:
    operations: [insert, update]
    columns: [id, note]
YAML
for ((i = 0; i < 600; i++)); do [ "$(diag | jq -r '.data.building.rules_version // empty')" = 4 ] && break; sleep 0.1; done
for ((i = 0; i < 600; i++)); do grep -q 'public.extra.*publication' "$FERRY_LOG" && break; sleep 0.1; done
expect_match "a build that needs a source change says what to run" 'ALTER PUBLICATION ferry ADD TABLE' "$(grep 'public.extra' "$FERRY_LOG" | head -1)"
expect_match "the build shows in /metrics" 'ferry_rules_version_building\{version="4",phase="(checking source|retrying)"\} 1' "$(curl -s "$base/metrics")"
expect_eq "the serving version stays ready meanwhile" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$base/probes/readiness")"
kill -KILL "$FERRY_PID"; wait "$FERRY_PID" 2>/dev/null
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 && pass "after kill -9 the serving version is ready again" || fail "ready after kill" "$(curl -s "$base/probes/readiness")"
expect_match "the build resumes" 'resuming the build of a new rule version.*version=4' "$(cat "$FERRY_LOG")"
wtok=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub w)
wpost() { curl -s -X POST -H "Authorization: Bearer $wtok" -H 'Content-Type: application/json' -d "{\"client_id\":\"c1\",\"batch\":[{\"op_id\":$1,\"op\":\"PUT\",\"type\":\"wnotes\",\"id\":\"n$1\",\"data\":{\"note\":\"hi\"}}]}" "$base/api/write"; }
expect_match "before the switch the serving version's write rules apply" '"status":"rejected","code":"table_not_writable"' "$(wpost 1)"
put_rules <"$T_TMP/v3-rules.yaml"
for ((i = 0; i < 600; i++)); do [ "$(diag | jq -c .data.building)" = null ] && break; sleep 0.1; done
expect_eq "the file back at the serving rules abandons the build" null "$(diag | jq -c .data.building)"
for ((i = 0; i < 900; i++)); do [ "$(slots)" = rules33_3 ] && break; sleep 0.1; done
expect_eq "and the abandoned version's slot is dropped" rules33_3 "$(slots)"
expect_eq "and its rows" 0 "$(storage_count "SELECT count(*) FROM rows WHERE tbl LIKE '4#%'")"
put_rules <"$T_TMP/v4-rules.yaml"
for ((i = 0; i < 600; i++)); do [ "$(diag | jq -r '.data.building.rules_version // empty')" = 5 ] && break; sleep 0.1; done
expect_eq "the rules again: a new build with the next version number" 5 "$(diag | jq -r '.data.building.rules_version // empty')"
psql -q "$db" -c "ALTER PUBLICATION ferry ADD TABLE extra"
wait_version 5 30 && pass "version 5 takes over once the publication has the table" || fail "version 5" "$(diag)"
expect_match "after the switch the new write rules apply" '"op_id":2,"status":"applied"' "$(wpost 2)"
expect_eq "and the write is in Postgres" "n2 hi" "$(psql -tAq -F ' ' "$db" -c "SELECT id, note FROM wnotes")"
converged "$T_TMP/ferry.yaml" 60 && pass "version 5 equals the oracle" || fail "version 5 equals the oracle" "$(head -3 "$T_TMP/converge.diff")"
for ((i = 0; i < 900; i++)); do [ "$(slots)" = rules33_5 ] && break; sleep 0.1; done
expect_eq "only the serving version's slot is left" "rules33_5" "$(slots)"
checksums_ok "$T_TMP/ferry.yaml" && pass "checksums equal the sum of ops" || fail "checksums" mismatch
expect_eq "no errors in the log but the broken file's" "" "$(grep 'level=error' "$FERRY_LOG" | grep -v 'mod=rules\|do not load\|publication\|replication stopped' | head -3)"
