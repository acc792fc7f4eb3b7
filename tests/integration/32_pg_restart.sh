#!/usr/bin/env bash
# 32_pg_restart.sh -- Postgres restarted during streaming: ferry reconnects and catches up
#
# Runs its own Postgres cluster (tests/lib/pg.sh), since restarting the run's shared cluster would
# disturb other tests. A writer commits transactions before, during and after a fast restart of
# that cluster; ferry must log the lost connection, reconnect with backoff, resume from its
# stored LSN and end equal to the oracle with exactly one op per inserted row. The slot's status
# (name, wal_status, retained WAL) is reported in /metrics.
source "$(dirname "$0")/../lib/testlib.sh"

pgenv=$("$T_ROOT/tests/lib/pg.sh" start restart32) || { fail "own postgres starts" "pg.sh failed"; exit 1; }
own_pgtmp=$(echo "$pgenv" | sed -n 's/^PGTMP=//p')
own_uri=$(echo "$pgenv" | sed -n 's/^FERRY_PG_URI=//p')
own_port=$(echo "$pgenv" | sed -n 's/^PGPORT=//p')
trap 't_cleanup; "$T_ROOT/tests/lib/pg.sh" stop "$own_pgtmp"' EXIT
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_restart() {
  as_pg "$PGBIN/pg_ctl" -D "$own_pgtmp/data" -m fast -w -t 30 \
    -o "-c port=$own_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$own_pgtmp -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 -c fsync=off -c max_connections=200" \
    restart >/dev/null 2>&1
}

psql -q "$own_uri" -c "CREATE DATABASE app" || exit 1
db=${own_uri%/*}/app
psql -q "$db" <<'SQL'
CREATE TABLE events (id int PRIMARY KEY, note text);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO events SELECT i, 'seed ' || i FROM generate_series(1, 1000) i;
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  events:
    data:
      - SELECT id, note FROM events
YAML
port=$(free_port)
SLOT_PREFIX=restart32 replication_config "$T_TMP/ferry.yaml" "$port" "$db"
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 && pass "ready on its own cluster" || fail "ready" "$(curl -s "http://127.0.0.1:$port/probes/readiness")"

# a writer that survives the restart: one psql per transaction, retrying while Postgres is down
writer() {
  local i
  for ((i = 1001; i <= 1600; i++)); do
    until psql -q "$db" -c "INSERT INTO events VALUES ($i, 'event $i') ON CONFLICT DO NOTHING" >/dev/null 2>&1; do sleep 0.1; done
  done
}
writer &
wpid=$!
T_PIDS+=("$wpid")
sleep 1.5
pg_restart && pass "postgres restarted during streaming" || fail "postgres restart" "pg_ctl failed"
sleep 1
pg_restart && pass "postgres restarted a second time" || fail "postgres restart 2" "pg_ctl failed"
wait "$wpid"
expect_eq "the writer inserted every row" 1600 "$(psql -tAq "$db" -c 'SELECT count(*) FROM events')"
converged "$T_TMP/ferry.yaml" 60 && pass "ferry reconnected and caught up (storage equals the oracle)" || fail "caught up" "$(head -5 "$T_TMP/converge.diff")"
expect_match "the lost connection was logged and retried" 'replication stopped; retrying' "$(cat "$FERRY_LOG")"
streams=$(grep -c 'msg="streaming changes"' "$FERRY_LOG")
[ "$streams" -ge 2 ] && pass "streaming resumed after the restarts ($streams starts)" || fail "streaming resumed" "$streams"
count=$("$FERRY_BIN" debug dump --config "$T_TMP/ferry.yaml" --checksums | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
expect_eq "exactly one op per row: nothing applied twice across the restarts" 1600 "$count"
checksums_ok "$T_TMP/ferry.yaml" && pass "checksums equal the sum of ops" || fail "checksums" mismatch
wait_ready "$port" 60 && pass "readiness stays 200" || fail "readiness" "$(curl -s "http://127.0.0.1:$port/probes/readiness")"
body=$(wait_match "http://127.0.0.1:$port/metrics" 'ferry_replication_slot_info\{slot="restart32_1",wal_status="reserved"\} 1' 60)
[ $? -eq 0 ] && pass "/metrics reports the slot and its wal_status" || fail "slot status in metrics" "$(echo "$body" | grep slot)"
expect_match "/metrics reports the WAL the slot retains" 'ferry_replication_slot_retained_bytes [0-9]+' "$body"
psql -q "$db" -c "INSERT INTO events VALUES (5000, 'after')"
converged "$T_TMP/ferry.yaml" 60 && pass "changes after the restarts still stream" || fail "streams after" "$(head -3 "$T_TMP/converge.diff")"
stop_pid "$FERRY_PID" 10
expect_eq "ferry stops cleanly" 0 "$STOP_RC"
