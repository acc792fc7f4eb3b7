#!/usr/bin/env bash
# 34_compaction.sh -- MOVE/CLEAR compaction keeps checksums and the replayed client state
#
# Rows are inserted, updated several times, moved between buckets and deleted, so buckets hold
# superseded PUTs and REMOVEs. `ferry compact` (through the admin API) must turn them into MOVE
# and CLEAR ops: every bucket checksum stays the same, stored totals still equal the sum of the
# ops, the state replayed from the compacted ops (`ferry debug dump`) equals the state replayed
# before compaction and the oracle, and a bucket whose rows were all deleted shrinks to one
# CLEAR. The admin API needs the token; diagnostics report the slot.
# storage: both
source "$(dirname "$0")/../lib/testlib.sh"

db=$(new_db compact34)
psql -q "$db" <<'SQL'
CREATE TABLE items (id int PRIMARY KEY, grp int, v text);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO items SELECT i, i % 10, 'v' || i FROM generate_series(1, 3000) i;
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  all_items:
    data:
      - SELECT id, v FROM items
  by_grp:
    parameters: SELECT request.user_id() AS grp
    data:
      - SELECT id, v FROM items WHERE grp = bucket.grp
YAML
port=$(free_port)
SLOT_PREFIX=compact34 replication_config "$T_TMP/ferry.yaml" "$port" "$db"
cat >>"$T_TMP/ferry.yaml" <<'YAML'
admin:
  token: "admin-token-for-the-compaction-test"
YAML
sed -i 's/^replication:$/replication:\n  compact_interval: 0/' "$T_TMP/ferry.yaml"
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 || fail "ready" "$(curl -s "http://127.0.0.1:$port/probes/readiness")"
psql -q "$db" <<'SQL'
UPDATE items SET v = v || '+' WHERE id <= 2000;
UPDATE items SET v = v || '+' WHERE id <= 1000;
UPDATE items SET grp = (grp + 1) % 10 WHERE id % 7 = 0;
DELETE FROM items WHERE id % 11 = 0;
DELETE FROM items WHERE grp = 5;
INSERT INTO items SELECT i, i % 10, 'late' || i FROM generate_series(5001, 5100) i WHERE i % 10 <> 5;
SQL
converged "$T_TMP/ferry.yaml" 60 && pass "storage equals the oracle before compaction" || fail "oracle before" "$(head -3 "$T_TMP/converge.diff")"
cp "$T_TMP/dump.txt" "$T_TMP/rows.before"
sums() { "$FERRY_BIN" debug dump --config "$T_TMP/ferry.yaml" --checksums | sed -E 's/,"count".*//'; }
sums >"$T_TMP/sums.before"
all_ops() { "$FERRY_BIN" debug dump --config "$T_TMP/ferry.yaml" --ops; }
ops_before=$(all_ops | wc -l)

out=$("$FERRY_BIN" compact --config "$T_TMP/ferry.yaml" 2>&1)
expect_eq "ferry compact succeeds" 0 "$?"
expect_match "it reports MOVEs and CLEARs" '"moved":[1-9][0-9]*,"cleared":[1-9][0-9]*' "$out"
ops_after=$(all_ops | wc -l)
[ "$ops_after" -lt "$ops_before" ] && pass "fewer ops stored ($ops_before -> $ops_after)" || fail "fewer ops" "$ops_before -> $ops_after"
sums >"$T_TMP/sums.after"
cmp -s "$T_TMP/sums.before" "$T_TMP/sums.after" && pass "every bucket checksum is unchanged" || fail "checksums unchanged" "$(diff "$T_TMP/sums.before" "$T_TMP/sums.after" | head -4)"
checksums_ok "$T_TMP/ferry.yaml" && pass "stored totals equal the sum of the compacted ops" || fail "totals after compaction" mismatch
"$FERRY_BIN" debug dump --config "$T_TMP/ferry.yaml" >"$T_TMP/rows.after"
cmp -s "$T_TMP/rows.before" "$T_TMP/rows.after" && pass "the state replayed from compacted ops equals the state before" || fail "replayed state" "$(diff "$T_TMP/rows.before" "$T_TMP/rows.after" | head -4)"
converged "$T_TMP/ferry.yaml" 60 && pass "and equals the oracle" || fail "oracle after" "$(head -3 "$T_TMP/converge.diff")"
all_ops >"$T_TMP/ops.jsonl"
move=$(jq -c '.op | select(.op == "MOVE")' "$T_TMP/ops.jsonl" | head -1)
expect_match "MOVE lines carry op id, op and checksum only" '^\{"op_id":"[0-9]+","op":"MOVE","checksum":[0-9]+\}$' "$move"
clear=$(jq -c '.op | select(.op == "CLEAR")' "$T_TMP/ops.jsonl" | head -1)
expect_match "CLEAR lines carry op id, op and checksum only" '^\{"op_id":"[0-9]+","op":"CLEAR","checksum":[0-9]+\}$' "$clear"
empty=$("$FERRY_BIN" debug dump --config "$T_TMP/ferry.yaml" --checksums | grep -E '"bucket":"1#by_grp\[(5|\\"5\\")\]"')
expect_match "a bucket whose rows were all deleted is one CLEAR" '"count":1,' "$empty"
order=$(jq -s 'group_by(.bucket) | map(.[1:] | map(select(.op.op == "CLEAR")) | length) | add // 0' "$T_TMP/ops.jsonl")
expect_eq "a CLEAR is always the first op of its bucket" 0 "$order"

psql -q "$db" -c "UPDATE items SET v = 'after' WHERE id <= 100; DELETE FROM items WHERE id BETWEEN 200 AND 300"
converged "$T_TMP/ferry.yaml" 60 && pass "changes after compaction still converge" || fail "after compaction" "$(head -3 "$T_TMP/converge.diff")"
out=$("$FERRY_BIN" compact --config "$T_TMP/ferry.yaml" 2>&1)
expect_match "a second compaction works on the new ops" '"moved":[1-9]' "$out"
checksums_ok "$T_TMP/ferry.yaml" && pass "totals still equal the ops after the second compaction" || fail "totals after second" mismatch
converged "$T_TMP/ferry.yaml" 60 && pass "still equal to the oracle" || fail "oracle after second" "$(head -3 "$T_TMP/converge.diff")"

# the admin API
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$port/api/admin/compact")
expect_eq "compaction without the token is refused" 401 "$code"
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer wrong-token-for-the-compaction-te' "http://127.0.0.1:$port/api/admin/diagnostics")
expect_eq "a wrong token is refused" 401 "$code"
diag=$(curl -s -H 'Authorization: Bearer admin-token-for-the-compaction-test' "http://127.0.0.1:$port/api/admin/diagnostics")
expect_match "diagnostics name the slot, its wal_status and the lag" '"slot":"compact34_1".*"lag_bytes":[0-9]+,"lag_seconds":[0-9.]+,"wal_status":"(reserved|extended)","safe_wal_size":(null|[0-9]+)' "$diag"
expect_match "diagnostics report storage size, buckets and rows" '"storage_bytes":[1-9][0-9]*,"buckets":1[0-9],"rows":[1-9][0-9]*' "$diag"
sed -i '/^admin:/,$d' "$T_TMP/ferry.yaml"
out=$("$FERRY_BIN" compact --config "$T_TMP/ferry.yaml" 2>&1)
expect_match "ferry compact without admin.token says why" 'no admin.token' "$out"
expect_eq "no errors in the log" "" "$(grep 'level=error' "$FERRY_LOG" | head -3)"
