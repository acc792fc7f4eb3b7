#!/usr/bin/env bash
# 38_read_replica.sh -- storage.read_uri: readers on a hot standby never run ahead of its replay
#
# Storage (kind postgres) is written on the run's Postgres; a second cluster made with
# pg_basebackup streams from it as a hot standby, and storage.read_uri points readers at that
# standby. A stream is open. Replay on the standby is paused, and rows are written: ferry stores
# them on the primary, but no checkpoint the standby has not replayed reaches the stream (its
# newest checkpoint stays at or below what the standby holds, and the new rows do not arrive).
# Replay resumes: the stream moves on to the primary's checkpoint with the rows. Write
# checkpoints and the leader stay on the primary.
source "$(dirname "$0")/../lib/testlib.sh"
FERRY_TEST_STORAGE=postgres

db=$(new_db rr38)
psql -q "$db" -c "CREATE TABLE lists (id text PRIMARY KEY, name text, owner_id text); CREATE PUBLICATION ferry FOR ALL TABLES; INSERT INTO lists SELECT 'l' || i, 'List ' || i, 'u1' FROM generate_series(1, 20) i"
st_db=${db}_st
psql -q "${db%/*}/postgres" -c "CREATE DATABASE \"${st_db##*/}\"" >/dev/null

# the standby: a base backup of the run's cluster, streaming from it
primary_port=${FERRY_PG_URI##*:}; primary_port=${primary_port%%/*}
rtmp=$(mktemp -d /tmp/ferry-pg-replica.XXXXXX)
chmod 755 "$rtmp"; chown postgres:postgres "$rtmp"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
rr_cleanup() { t_cleanup; "$T_ROOT/tests/lib/pg.sh" stop "$rtmp"; }
trap rr_cleanup EXIT
PGBIN=/usr/lib/postgresql/15/bin
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$rtmp/data" -R -X stream -c fast >"$rtmp/basebackup.log" 2>&1 ||
  { fail "a hot standby of the storage database" "$(cat "$rtmp/basebackup.log")"; exit 1; }
rport=$(free_port)
as_pg "$PGBIN/pg_ctl" -D "$rtmp/data" -l "$rtmp/server.log" -w -t 30 \
  -o "-c port=$rport -c listen_addresses=127.0.0.1 -c unix_socket_directories=$rtmp -c hot_standby=on -c max_connections=200 -c max_wal_senders=20 -c max_replication_slots=20 -c wal_level=logical" start >/dev/null 2>&1 ||
  { fail "the standby starts" "$(tail -5 "$rtmp/server.log")"; exit 1; }
replica="postgresql://postgres@127.0.0.1:$rport/${st_db##*/}"
expect_eq "the standby is in recovery" t "$(psql -tAqX "$replica" -c 'SELECT pg_is_in_recovery()')"

cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner_id
    data:
      - SELECT id, name FROM lists WHERE owner_id = bucket.owner_id
YAML
port=$(free_port)
cat >"$T_TMP/ferry.yaml" <<YAML
log_level: info
http:
  listen: "127.0.0.1:$port"
  threads: 2
postgres:
  uri: "$db"
replication:
  slot_prefix: rr38
storage:
  kind: postgres
  uri: "$st_db"
  read_uri: "$replica"
auth:
  audience: [ferry]
  keys:
    - { kid: test, alg: HS256, secret: "test-secret-test-secret-test-secret" }
YAML
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 || { fail "ready" "$(curl -s "http://127.0.0.1:$port/probes/readiness")"; exit 1; }
pass "ferry serves with readers on the standby"
# the standby's replayed checkpoint, and the newest one the primary holds
standby_cp() { psql -tAqX "$replica" -c "SELECT v FROM ferry.state WHERE k = (SELECT v FROM ferry.state WHERE k = 'serving') || '#last_op'" 2>/dev/null; }
primary_cp() { psql -tAqX "$st_db" -c "SELECT v FROM ferry.state WHERE k = (SELECT v FROM ferry.state WHERE k = 'serving') || '#last_op'"; }
# the stream opens once the standby has replayed the storage's schema and checkpoint: on a
# loaded machine its replay lagged the primary's readiness, the reader could not prepare yet, and
# the stream ended with "could not read bucket checksums"; what this test checks starts after
for ((i = 0; i < 600; i++)); do
  [ -n "$(standby_cp)" ] && [ "$(standby_cp)" = "$(primary_cp)" ] && break
  sleep 0.1
done

tok=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub u1)
curl -sN -X POST "http://127.0.0.1:$port/sync/stream" -H "Authorization: Token $tok" -H 'Content-Type: application/json' \
  -d '{"client_id":"c1","raw_data":true,"buckets":[]}' >"$T_TMP/stream.out" &
T_PIDS+=($!)
for ((i = 0; i < 100; i++)); do grep -q checkpoint_complete "$T_TMP/stream.out" && break; sleep 0.1; done
expect_eq "the stream delivered the first checkpoint" 20 "$(grep -o '"op":"PUT"' "$T_TMP/stream.out" | wc -l)"

# the newest checkpoint the stream was sent
stream_cp() { grep -o '"checkpoint_complete":{"last_op_id":"[0-9]*"' "$T_TMP/stream.out" | grep -o '[0-9]*' | sort -n | tail -1; }

psql -tAqX "$replica" -c "SELECT pg_wal_replay_pause()" >/dev/null
for ((i = 0; i < 100; i++)); do [ "$(psql -tAqX "$replica" -c 'SELECT pg_get_wal_replay_pause_state()')" = paused ] && break; sleep 0.1; done
held=$(standby_cp)
psql -q "$db" -c "INSERT INTO lists SELECT 'n' || i, 'New ' || i, 'u1' FROM generate_series(1, 5) i"
for ((i = 0; i < 100; i++)); do [ "$(primary_cp)" -gt "$held" ] && break; sleep 0.1; done
[ "$(primary_cp)" -gt "$held" ] && pass "ferry stored the new rows on the primary (checkpoint $(primary_cp), the standby holds $held)" || fail "stored on the primary" "$(primary_cp) vs $held"
sleep 2
expect_eq "no checkpoint past the standby's replay reached the stream" 1 "$([ "$(stream_cp)" -le "$held" ] && echo 1 || echo "0 ($(stream_cp) > $held)")"
expect_eq "the new rows did not reach the stream" 0 "$(grep -c '"object_id":"n1"' "$T_TMP/stream.out")"

psql -tAqX "$replica" -c "SELECT pg_wal_replay_resume()" >/dev/null
want=$(primary_cp)
for ((i = 0; i < 100; i++)); do [ "$(stream_cp)" -ge "$want" ] 2>/dev/null && break; sleep 0.1; done
[ "$(stream_cp)" -ge "$want" ] && pass "replay resumed: the stream moved on to checkpoint $want" || fail "moved on after replay" "$(stream_cp) < $want"
expect_eq "with the new rows" 5 "$(grep -o '"object_id":"n[0-9]"' "$T_TMP/stream.out" | sort -u | wc -l)"
metrics=$(curl -s "http://127.0.0.1:$port/metrics")
expect_match "metrics count the read connections" 'ferry_storage_read_connections [1-9]' "$metrics"
expect_eq "no errors in the log" "" "$(grep 'level=error' "$FERRY_LOG" | head -3)"
