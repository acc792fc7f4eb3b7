#!/usr/bin/env bash
# pg_failover.sh -- Postgres restarted (cleanly and by a crash), then failed over to a standby
#
# Ferry reaches Postgres through a TCP relay (tests/lib/delay_relay.py with no delay) standing in
# for the virtual IP or proxy that moves to the new primary in a real failover. A writer commits
# through the same address the whole time, retrying while Postgres is away.
#
# Restarts: Postgres is restarted with -m fast and with -m immediate (a crash: the slot's
# position may go back to the last checkpoint, so Postgres sends transactions again that ferry
# already stored). Nothing may be lost or applied twice: storage equals the oracle and the
# clients too.
#
# Failover: a streaming standby (pg_basebackup) is promoted after the primary is stopped with
# -m immediate, and the relay is pointed at it. The standby has no replication slots, so ferry's
# slot did not survive: ferry must say exactly that (readiness 503 and the diagnostics name the
# slot and what ferry does) and build the same rules into a new rule version from a new snapshot
# of the new primary while the old version serves, then switch to it. Clients move to the new
# buckets and end equal to the oracle of the new primary. The rebuild is held before its
# snapshot (FERRY_TEST_BUILD_HOLD) until the test has seen what ferry says meanwhile, and ferry
# is killed there once (the restart must resume the rebuild). Figures:
# time from the failover until ferry says so, from the rebuild's start to ready, rows the old
# primary had that the standby never got (async replication).
source "$(dirname "$0")/../lib/testlib.sh"
source "$T_ROOT/tests/chaos/chaos_lib.sh"

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if long; then restarts=6; else restarts=2; fi
pgenv=$("$T_ROOT/tests/lib/pg.sh" start failover) || { fail "own postgres starts" "pg.sh failed"; exit 1; }
prim=$(echo "$pgenv" | sed -n 's/^PGTMP=//p')
pport=$(echo "$pgenv" | sed -n 's/^PGPORT=//p')
stby=$(mktemp -d /tmp/ferry-pg-standby.XXXXXX)
chmod 755 "$stby"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$stby"
trap 't_cleanup; "$T_ROOT/tests/lib/pg.sh" stop "$prim"; "$T_ROOT/tests/lib/pg.sh" stop "$stby"' EXIT
popts=$(cat "$prim/pg_ctl.opts")
psql -q -h "$prim" -p "$pport" -U postgres -d postgres -c "CREATE DATABASE app" || exit 1
psql -q -v ON_ERROR_STOP=1 -h "$prim" -p "$pport" -U postgres -d app <<'SQL' || exit 1
CREATE TABLE items (id int PRIMARY KEY, owner text, v text);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO items SELECT i, 'u' || (i % 3), 'seed ' || i FROM generate_series(1, 3000) i;
SQL

# the address ferry and the writer use: a relay to whichever server is the primary
vip=$(free_port)
relay() { # relay PORT: (re)start the relay towards 127.0.0.1:PORT
  [ -n "${relay_pid:-}" ] && { kill "$relay_pid" 2>/dev/null; wait "$relay_pid" 2>/dev/null; }
  python3 "$T_ROOT/tests/lib/delay_relay.py" "127.0.0.1:$vip" "127.0.0.1:$1" 0 >"$T_TMP/relay.log" 2>&1 &
  relay_pid=$!
  T_PIDS+=("$relay_pid")
  for ((i = 0; i < 100; i++)); do grep -q listening "$T_TMP/relay.log" && return 0; sleep 0.05; done
  return 1
}
relay "$pport"
CHAOS_DB=postgresql://postgres@127.0.0.1:$vip/app
CHAOS_PORT=$(free_port)
CHAOS_CFG=$T_TMP/ferry.yaml
CHAOS_RULES=$T_TMP/sync-rules.yaml
cat >"$CHAOS_RULES" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner, v FROM items WHERE owner = bucket.owner
YAML
SLOT_PREFIX=failover replication_config "$CHAOS_CFG" "$CHAOS_PORT" "$CHAOS_DB"
sed -i 's/^replication:/replication:\n  timeout: 10/' "$CHAOS_CFG"
printf 'admin:\n  token: chaos-admin-token\n' >>"$CHAOS_CFG"
base=http://127.0.0.1:$CHAOS_PORT
# the rebuild after the failover waits at its snapshot while this file exists, so the test sees
# what ferry says meanwhile whatever the machine's speed
FERRY_TEST_BUILD_HOLD=$T_TMP/build-hold start_ferry "$CHAOS_CFG" || exit 1
wait_ready "$CHAOS_PORT" 60 || { fail "ready" "$(curl -s "$base/probes/readiness")"; exit 1; }
raw_start r1 u1
sdk_start s2 u2 "items:owner,v"

writer() { # one transaction per psql, retried while Postgres is away
  local i=10000
  while [ ! -e "$T_TMP/stop" ]; do
    i=$((i + 1))
    until psql -q "$CHAOS_DB" -c "INSERT INTO items VALUES ($i, 'u$((i % 3))', 'w $i') ON CONFLICT (id) DO UPDATE SET v = 'again $i';
      UPDATE items SET v = 'updated at $i' WHERE id = $((i % 3000 + 1))" >/dev/null 2>&1; do
      [ -e "$T_TMP/stop" ] && return; sleep 0.1
    done
    sleep 0.03
  done
}
writer &
T_PIDS+=("$!")
wpid=$!

# ---- restarts ----
for ((k = 1; k <= restarts; k++)); do
  sleep 1
  mode=fast; [ $((k % 2)) -eq 0 ] && mode=immediate
  as_pg "$PGBIN/pg_ctl" -D "$prim/data" -m "$mode" -w -t 60 -o "$popts" restart >/dev/null 2>&1 &&
    pass "postgres restarted ($mode, $k of $restarts)" || fail "postgres restarted ($mode)" "pg_ctl failed"
done
sleep 1
touch "$T_TMP/stop"; wait "$wpid"; rm -f "$T_TMP/stop"
figure postgres_restarts "$restarts" count
oracle_ok "$CHAOS_CFG" "after $restarts restarts of postgres" 60
clients_ok "after $restarts restarts of postgres" 60
expect_match "the lost connection was logged and retried" 'replication stopped; retrying' "$(cat "$FERRY_LOG")"

# ---- failover to a promoted standby ----
sport=$(free_port)
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$pport" -U postgres -D "$stby/data" -R -X stream >"$T_TMP/basebackup.log" 2>&1 ||
  { fail "the standby is made (pg_basebackup)" "$(tail -3 "$T_TMP/basebackup.log")"; exit 1; }
sopts=$(echo "$popts" | sed "s/port=$pport/port=$sport/; s|unix_socket_directories=[^ ]*|unix_socket_directories=$stby|")
as_pg "$PGBIN/pg_ctl" -D "$stby/data" -l "$stby/server.log" -w -t 60 -o "$sopts" start >/dev/null 2>&1 ||
  { fail "the standby starts" "$(tail -3 "$stby/server.log")"; exit 1; }
echo "$sopts" >"$stby/pg_ctl.opts"
writer &
T_PIDS+=("$!")
wpid=$!
sleep 2
touch "$T_TMP/build-hold"
old_count=$(psql -tAq -h "$prim" -p "$pport" -U postgres -d app -c "SELECT count(*) FROM items")
t0=$(now_ms)
as_pg "$PGBIN/pg_ctl" -D "$prim/data" -m immediate -w -t 60 stop >/dev/null 2>&1
as_pg "$PGBIN/pg_ctl" -D "$stby/data" -w -t 60 promote >/dev/null 2>&1 && pass "the standby is promoted" || fail "the standby is promoted" "pg_ctl promote failed"
relay "$sport"
new_count=$(psql -tAq -h "$stby" -p "$sport" -U postgres -d app -c "SELECT count(*) FROM items")
figure rows_the_standby_missed "$(( old_count > new_count ? old_count - new_count : 0 ))" rows
body=$(wait_match "$base/probes/readiness" 'replication slot.*does not exist any more' 60)
figure failover_noticed_ms $(($(now_ms) - t0)) ms
expect_match "readiness turns 503 after the failover" '^\{"ready":false' "$body"
expect_match "readiness says the slot is gone and a new version is built from a new snapshot" \
  'replication slot \\"failover_1\\" does not exist any more.*version 2 is being built from a new snapshot' "$body"
diag=$(curl -s -H "Authorization: Bearer chaos-admin-token" "$base/api/admin/diagnostics")
expect_match "the diagnostics say the same" '"source":\{"state":"slot lost"' "$diag"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$base/sync/stream" -H "Authorization: Token $(mint u1)" -d '{}' --max-time 2)
expect_eq "the old version still serves streams meanwhile" 200 "$code"
# killed during the rebuild: the restart resumes it (and says the same meanwhile)
kill -KILL "$FERRY_PID"; wait "$FERRY_PID" 2>/dev/null
FERRY_TEST_BUILD_HOLD=$T_TMP/build-hold start_ferry "$CHAOS_CFG" || exit 1
body=$(wait_match "$base/probes/readiness" 'replication slot.*does not exist any more.*version 2 is being built' 60)
expect_match "after a kill -9 during the rebuild, the restart says the same" '^\{"ready":false' "$body"
expect_match "and resumes the rebuild" 'resuming the build of a new rule version.*version=2' "$(cat "$FERRY_LOG")"
rm -f "$T_TMP/build-hold"
t0=$(now_ms)
wait_ready "$CHAOS_PORT" 120 && pass "ready again on the new version" || fail "ready again on the new version" "$(curl -s "$base/probes/readiness")"
figure rebuild_to_ready_ms $(($(now_ms) - t0)) ms # from the snapshot's start (the hold)
sleep 2
touch "$T_TMP/stop"; wait "$wpid"
expect_match "the log says what happened and what ferry does" \
  'does not exist any more.*version 2 is being built from a new snapshot' "$(cat "$FERRY_LOG")"
expect_match "and that it switched" 'msg="switched to the new rule version" version=2' "$(cat "$FERRY_LOG")"
figure failovers 1 count
oracle_ok "$CHAOS_CFG" "after the failover" 60
clients_ok "after the failover" 90
expect_eq "the raw client holds only the new version's buckets" "2" \
  "$(jq -r '.buckets[]' "$T_TMP/raw-r1.json" | cut -d'#' -f1 | sort -u | tr '\n' ' ' | tr -d ' ')"
stop_pid "$FERRY_PID" 10
expect_eq "ferry stops cleanly" 0 "$STOP_RC"
