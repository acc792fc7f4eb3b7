#!/usr/bin/env bash
# 35_source_identity.sh -- storage built from one database is never served for another, and a
# storage older than its replication slot (restored from a backup) is rebuilt, never streamed over
# the gap (without that guard the rows written in between are silently missing)
source "$(dirname "$0")/../lib/testlib.sh"

setup() {
  psql -q "$1" <<'SQL'
CREATE TABLE lists (id text PRIMARY KEY, name text);
CREATE PUBLICATION ferry FOR ALL TABLES;
SQL
}
a=$(new_db ident35a); setup "$a"
psql -q "$a" -c "INSERT INTO lists VALUES ('from-a', 'A')"
b=$(new_db ident35b); setup "$b"
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  global:
    data:
      - SELECT id, name FROM lists
YAML
port=$(free_port)
replication_config "$T_TMP/ferry.yaml" "$port" "$a"
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 && pass "ready on database A" || fail "ready on A" "not ready"
stop_pid "$FERRY_PID"

# the same storage file, now pointed at database B
sed -i "s|$a|$b|" "$T_TMP/ferry.yaml"
start_ferry "$T_TMP/ferry.yaml" || exit 1
body=$(wait_match "http://127.0.0.1:$port/probes/readiness" 'built from another database' 60) &&
  pass "readiness says the storage belongs to another database" || fail "readiness names the mismatch" "$body"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$port/sync/stream" \
  -H "Authorization: Token $("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub u1)" -d '{}')
expect_eq "streams are refused (503) rather than served from the wrong storage" "503" "$code"
expect_match "the log says how to fix it" 'delete the storage file' "$(cat "$FERRY_LOG")"

# ---- storage older than its slot (restored from a backup): never streamed over the gap ----
# Postgres starts a logical slot after the position it was acknowledged to, whatever position
# is asked for; a storage restored from an older copy would silently miss the changes between.
c=$(new_db ident35c); setup "$c"
psql -q "$c" -c "INSERT INTO lists SELECT 'early' || i, 'e' FROM generate_series(1, 20) i"
stop_pid "$FERRY_PID"
port=$(free_port)
mkdir -p "$T_TMP/c"
cp "$T_TMP/sync-rules.yaml" "$T_TMP/c/"
SLOT_PREFIX=id35c replication_config "$T_TMP/c/ferry.yaml" "$port" "$c"
start_ferry "$T_TMP/c/ferry.yaml" || exit 1
wait_ready "$port" 60 || fail "ready on database C" "not ready"
converged "$T_TMP/c/ferry.yaml" 60 && pass "C: storage equals the oracle" || fail "C converges" "$(head -3 "$T_TMP/converge.diff")"
stop_pid "$FERRY_PID"
cp "$T_TMP/c/storage.db" "$T_TMP/c/storage.db.old"
start_ferry "$T_TMP/c/ferry.yaml" || exit 1
wait_ready "$port" 60 || fail "ready again" "not ready"
psql -q "$c" -c "INSERT INTO lists SELECT 'late' || i, 'l' FROM generate_series(1, 30) i"
converged "$T_TMP/c/ferry.yaml" 60 && pass "the later rows are stored (and acknowledged)" || fail "late rows stored" "$(head -3 "$T_TMP/converge.diff")"
stop_pid "$FERRY_PID"
rm -f "$T_TMP/c/storage.db-wal" "$T_TMP/c/storage.db-shm"
cp "$T_TMP/c/storage.db.old" "$T_TMP/c/storage.db"
start_ferry "$T_TMP/c/ferry.yaml" || exit 1
expect_match "the log names the gap between the slot and storage" \
  'msg="replication slot \\"id35c_[0-9]+\\" was acknowledged up to [0-9A-F]+/[0-9A-F]+ but storage holds changes only up to' \
  "$(for i in $(seq 1 100); do grep -q 'was acknowledged up to' "$FERRY_LOG" && break; sleep 0.1; done; cat "$FERRY_LOG")"
converged "$T_TMP/c/ferry.yaml" 90 && pass "rebuilt from a new snapshot: storage equals the oracle, the late rows included" ||
  fail "rebuilt after the gap" "$(head -3 "$T_TMP/converge.diff")"
stop_pid "$FERRY_PID"
expect_eq "ferry exits 0 on SIGTERM" "0" "$STOP_RC"
