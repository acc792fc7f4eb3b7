#!/usr/bin/env bash
# 35_source_identity.sh -- storage built from one database is never served for another
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
