#!/usr/bin/env bash
# 55_write_pg_down.sh -- Postgres unreachable before or during a batch: 503, nothing half-applied
#
# Runs its own Postgres cluster (tests/lib/pg.sh) so it can stop and restart it. Before a batch:
# 503 with Retry-After and the error shape. During a batch (a trigger sleeps on the third op
# while the cluster is stopped with -m immediate): 503, and after the restart none of the batch
# is in Postgres; the client's retry then applies every op exactly once.
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pgenv=$("$T_ROOT/tests/lib/pg.sh" start w55) || { fail "own postgres starts" "pg.sh failed"; exit 1; }
eval "$pgenv"
own_pg=$PGTMP
trap '"$T_ROOT/tests/lib/pg.sh" stop "$own_pg"; t_cleanup' EXIT
pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$own_pg/data" -m immediate -w -t 30 stop >/dev/null 2>&1; }
pg_start() {
  as_pg "$PGBIN/pg_ctl" -D "$own_pg/data" -l "$own_pg/server.log" -w -t 30 \
    -o "-c port=$PGPORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$own_pg \
        -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 -c fsync=off \
        -c max_connections=200" start >/dev/null 2>&1
}

db=${FERRY_PG_URI%/*}/postgres
# the saturation check below holds the admitted batches behind a lock until the rest were
# turned away, which on a busy machine can take longer than the default 10 s deadline of a
# queued batch or the 30 s statement timeout: both are long here, so only the limit decides
W_POSTGRES_CONFIG="  timeout: 300"
W_EXTRA_CONFIG=$'write_back:\n  statement_timeout: 300'
write_setup write55 "
CREATE TABLE items (id text PRIMARY KEY, label text);
CREATE TABLE slow (id int PRIMARY KEY, on_id text);
INSERT INTO slow VALUES (1, 'i3');
CREATE FUNCTION maybe_sleep() RETURNS trigger LANGUAGE plpgsql AS
  \$\$BEGIN IF EXISTS (SELECT 1 FROM slow WHERE on_id = NEW.id) THEN PERFORM pg_sleep(3); END IF;
        IF NEW.id LIKE 'sat%' THEN PERFORM pg_sleep(0.3); END IF; RETURN NEW; END\$\$;
CREATE TRIGGER items_slow BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION maybe_sleep();
CREATE PUBLICATION ferry FOR ALL TABLES;
" "
bucket_definitions:
  all:
    data:
      - SELECT id, label FROM items
write_rules:
  items:
    operations: [insert, update]
    columns: [id, label]
" "$db"
t=$(write_token dora)
batch='{"client_id":"d1","batch":[
 {"op_id":1,"op":"PUT","type":"items","id":"i1","data":{"label":"one"}},
 {"op_id":2,"op":"PUT","type":"items","id":"i2","data":{"label":"two"}},
 {"op_id":3,"op":"PUT","type":"items","id":"i3","data":{"label":"three"}},
 {"op_id":4,"op":"PUT","type":"items","id":"i4","data":{"label":"four"}}]}'

# before a batch
pg_stop
hdr=$(curl -s -D - -o "$T_TMP/body" -X POST -H "Authorization: Bearer $t" --data-binary "$batch" "$W_URL/api/write")
expect_match "Postgres down: 503" '^HTTP/1.1 503' "$hdr"
expect_match "with Retry-After" $'[Rr]etry-[Aa]fter: [0-9]+' "$hdr"
expect_match "and the error shape" '^\{"error":\{"code":"unavailable","description":"' "$(cat "$T_TMP/body")"
pg_start || { fail "postgres restarts" "pg_ctl start failed"; exit 1; }
expect_eq "nothing applied" "0" "$(sql "SELECT count(*) FROM items")"

# during a batch: the third op sleeps in a trigger while Postgres is stopped
write_post "$t" "$batch" >"$T_TMP/during" &
post=$!
for ((i = 0; i < 600; i++)); do
  [ "$(sql "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'" 2>/dev/null)" = 1 ] && break
  sleep 0.05
done
pg_stop
wait "$post"
expect_match "Postgres stopped mid-batch: 503" '^503 \{"error":\{"code":"unavailable"' "$(cat "$T_TMP/during")"
pg_start || { fail "postgres restarts" "pg_ctl start failed"; exit 1; }
expect_eq "nothing of the batch is in Postgres" "0" "$(sql "SELECT count(*) FROM items")"
expect_eq "the write log did not move" "0" "$(sql "SELECT coalesce(max(last_op_id), 0) FROM ferry_write_log")"

# the client retries (a few times while ferry reconnects): applied once
sql "DELETE FROM slow" >/dev/null
r=''
for ((i = 0; i < 50; i++)); do
  r=$(write_post "$t" "$batch")
  [[ "$r" == 200* ]] && break
  sleep 0.2
done
expect_eq "retry applies every op" \
  '200 {"results":[{"op_id":1,"status":"applied"},{"op_id":2,"status":"applied"},{"op_id":3,"status":"applied"},{"op_id":4,"status":"applied"}]}' "$r"
r=$(write_post "$t" "$batch")
expect_match "a second retry is all duplicates" '^200 .*"op_id":4,"status":"duplicate"' "$r"
expect_eq "each row once" "i1|one;i2|two;i3|three;i4|four" "$(sql "SELECT string_agg(id || '|' || label, ';' ORDER BY id) FROM items")"
# the client goes away while its batch runs: ferry keeps going, the batch commits, and the
# client's retry is answered "duplicate"
sql "INSERT INTO slow VALUES (2, 'i9')" >/dev/null
b9='{"client_id":"d1","batch":[{"op_id":9,"op":"PUT","type":"items","id":"i9","data":{"label":"nine"}}]}'
curl -s -o /dev/null --max-time 1 -X POST -H "Authorization: Bearer $t" --data-binary "$b9" "$W_URL/api/write" || true
for ((i = 0; i < 600; i++)); do grep -q 'client="d1" status=200 ops=1 applied=1' "$FERRY_LOG" && break; sleep 0.1; done
expect_eq "ferry still alive" "200" "$(curl -s -o /dev/null -w '%{http_code}' "$W_URL/probes/liveness")"
expect_eq "its batch committed" "nine" "$(sql "SELECT label FROM items WHERE id = 'i9'")"
r=$(write_post "$t" "$b9")
expect_match "the retry is a duplicate" '"op_id":9,"status":"duplicate"' "$r"
# the pool saturated: with postgres.pool_size 4, at most 64 batches wait or run; more are
# answered 503 at once, and those are not applied (one batch per user: a user's own limit,
# write_back.max_batches_per_user, is 429 and tested in 91_security_write)
n=90
for ((i = 1; i <= n; i++)); do
  [ $i -gt 1 ] && echo "next"
  echo "url = \"$W_URL/api/write\""
  echo "header = \"Authorization: Bearer $(write_token "sat$i")\""
  echo "data = \"{\\\"client_id\\\":\\\"sat$i\\\",\\\"batch\\\":[{\\\"op_id\\\":1,\\\"op\\\":\\\"PUT\\\",\\\"type\\\":\\\"items\\\",\\\"id\\\":\\\"sat$i\\\",\\\"data\\\":{\\\"label\\\":\\\"s\\\"}}]}\""
  echo "output = \"/dev/null\""
  echo "write-out = \"%{http_code} sat$i\\n\""
done >"$T_TMP/sat.curl"
# the admitted batches must still be waiting when the rest arrive, whatever the machine's speed:
# a session of the test holds items locked until every batch beyond the 64 was answered
mkfifo "$T_TMP/lockq"
psql -q "$W_DB" <"$T_TMP/lockq" >/dev/null 2>&1 &
lockpid=$!
exec 7>"$T_TMP/lockq"
echo "BEGIN; LOCK TABLE items IN EXCLUSIVE MODE; SELECT 1;" >&7
for ((i = 0; i < 200; i++)); do
  [ "$(sql "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'items' AND l.mode = 'ExclusiveLock' AND l.granted")" = 1 ] && break
  sleep 0.05
done
curl -s --no-progress-meter --parallel --parallel-immediate --parallel-max $n --config "$T_TMP/sat.curl" >"$T_TMP/sat.txt" &
satpid=$!
busy503() { curl -s "$W_URL/metrics" | awk '$1 == "ferry_write_batches_total{status=\"503\"}" {print $2}'; }
before=$(busy503)
for ((i = 0; i < 2400; i++)); do
  [ "$(( $(busy503) - ${before:-0} ))" -ge $((n - 64)) ] && break
  sleep 0.05
done
echo "COMMIT;" >&7
exec 7>&-
wait "$lockpid"
wait "$satpid"
ok=$(grep -c '^200 ' "$T_TMP/sat.txt" || true)
busy=$(grep -c '^503 ' "$T_TMP/sat.txt" || true)
expect_eq "every saturating request answered 200 or 503" "$n" "$((ok + busy))"
[ "$busy" -eq $((n - 64)) ] && [ "$ok" -eq 64 ] && pass "beyond 64 queued batches: 503 ($ok applied, $busy turned away)" || fail "saturation answers 503" "$ok 200s, $busy 503s"
applied_ids=$(sql "SELECT string_agg(id, ' ' ORDER BY id) FROM items WHERE id LIKE 'sat%'")
expect_eq "exactly the 200 batches are in Postgres" "$(grep '^200 ' "$T_TMP/sat.txt" | awk '{print $2}' | sort | tr '\n' ' ' | sed 's/ $//')" "$applied_ids"
metrics=$(curl -s "$W_URL/metrics")
expect_match "503s counted" 'ferry_write_batches_total\{status="503"\} [2-9]' "$metrics"
wait_ready "$W_PORT" 60 && pass "ferry is ready again after the restart" || fail "ready again" "$(curl -s "$W_URL/probes/readiness")"
write_finish
