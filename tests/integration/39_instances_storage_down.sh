#!/usr/bin/env bash
# 39_instances_storage_down.sh -- the storage database stopped while three instances serve
#
# One Postgres of this test's own (source and storage), three instances, a stream open on each.
# The cluster is stopped: every instance's readiness turns 503 naming the storage, the open
# streams stay open and keep getting keepalives, write-back answers 503 with Retry-After (and
# applies nothing), write checkpoints too. The cluster starts again: readiness 200 everywhere,
# the same streams carry new changes, the refused write is not in Postgres and its retry is.
source "$(dirname "$0")/../lib/testlib.sh"
source "$T_ROOT/tests/lib/instances.sh"
FERRY_TEST_STORAGE=postgres

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pgenv=$("$T_ROOT/tests/lib/pg.sh" start s39) || { fail "own postgres starts" "pg.sh failed"; exit 1; }
own_pg=$(echo "$pgenv" | sed -n 's/^PGTMP=//p')
own_uri=$(echo "$pgenv" | sed -n 's/^FERRY_PG_URI=//p')
trap 't_cleanup; "$T_ROOT/tests/lib/pg.sh" stop "$own_pg"' EXIT
pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$own_pg/data" -m fast -w -t 30 stop >/dev/null 2>&1; }
pg_start() { as_pg "$PGBIN/pg_ctl" -D "$own_pg/data" -l "$own_pg/server.log" -w -t 30 -o "$(cat "$own_pg/pg_ctl.opts")" start >/dev/null 2>&1; }
db=$own_uri
psql -q "$db" -f "$T_ROOT/tests/conformance/schema.sql" >/dev/null
psql -q "$db" -c "DROP PUBLICATION ferry; CREATE PUBLICATION ferry FOR TABLE announcements, lists, todos, members, org_docs"
cp "$T_ROOT/tests/conformance/sync-rules.yaml" "$T_TMP/sync-rules.yaml"
SLOT_PREFIX=down39 inst_setup "$db" 3
for k in 1 2 3; do inst_start "$k" || exit 1; done
for k in 1 2 3; do wait_ready "${INST_PORT[k]}" 60 || fail "instance $k ready" "$(tail -3 "${INST_LOG[k]}")"; done
tok=$("$FERRY_BIN" token --config "$T_TMP/i1/ferry.yaml" --sub alice)
declare -a SPID
for k in 1 2 3; do
  curl -sN -X POST "$(inst_base "$k")/sync/stream" -H "Authorization: Token $tok" -H 'Content-Type: application/json' \
    -d "{\"client_id\":\"c$k\",\"raw_data\":true,\"buckets\":[]}" >"$T_TMP/stream$k.out" &
  SPID[k]=$!
  T_PIDS+=($!)
done
for k in 1 2 3; do
  for ((i = 0; i < 100; i++)); do grep -q checkpoint_complete "$T_TMP/stream$k.out" && break; sleep 0.1; done
done
expect_eq "a stream on every instance synced" 3 "$(grep -l checkpoint_complete "$T_TMP"/stream?.out | wc -l)"
write() { # write K ID: a todo for alice through instance K; prints the status line and headers
  curl -s -D - -o "$T_TMP/write.body" -X POST "$(inst_base "$1")/api/write" -H "Authorization: Bearer $tok" \
    -H 'Content-Type: application/json' \
    -d "{\"client_id\":\"w\",\"batch\":[{\"op_id\":1,\"op\":\"PUT\",\"type\":\"todos\",\"id\":\"$2\",\"data\":{\"list_id\":\"l-alice-1\",\"description\":\"$2\",\"completed\":false}}]}"
}

pg_stop || { fail "the cluster stops" "pg_ctl stop failed"; exit 1; }
t0=$(date +%s)
for k in 1 2 3; do
  body=$(wait_match "$(inst_base "$k")/probes/readiness" 'storage database is not reachable' 20)
  code=$(curl -s -o /dev/null -w '%{http_code}' "$(inst_base "$k")/probes/readiness")
  [ "$code" = 503 ] && [[ "$body" =~ storage\ database\ is\ not\ reachable ]] && pass "instance $k: readiness 503 naming the storage" || fail "instance $k: readiness 503 with the reason" "$code $body"
done
hdr=$(write 2 down1)
expect_match "write-back while storage is down: 503" '^HTTP/1.1 503' "$hdr"
expect_match "with Retry-After" $'[Rr]etry-[Aa]fter: [0-9]+' "$hdr"
hdr=$(curl -s -D - -o /dev/null "$(inst_base 3)/write-checkpoint2.json?client_id=c3" -H "Authorization: Token $tok")
expect_match "a write checkpoint while storage is down: 503 with Retry-After" $'^HTTP/1.1 503.*[Rr]etry-[Aa]fter: [0-9]+' "$(echo "$hdr" | tr -d '\r' | tr '\n' ' ')"
# keepalives: every 20 s
sizes=$(for k in 1 2 3; do stat -c %s "$T_TMP/stream$k.out"; done)
while [ $(( $(date +%s) - t0 )) -lt 23 ]; do sleep 0.5; done
alive=0; grew=0; i=0
for k in 1 2 3; do
  kill -0 "${SPID[k]}" 2>/dev/null && alive=$((alive + 1))
  i=$((i + 1)); before=$(echo "$sizes" | sed -n "${i}p")
  [ "$(stat -c %s "$T_TMP/stream$k.out")" -gt "$before" ] && tail -c 200 "$T_TMP/stream$k.out" | grep -q token_expires_in && grew=$((grew + 1))
done
expect_eq "the three streams stay open while storage is down" 3 "$alive"
expect_eq "and each got a keepalive meanwhile" 3 "$grew"

pg_start || { fail "the cluster starts again" "pg_ctl start failed"; exit 1; }
for k in 1 2 3; do wait_ready "${INST_PORT[k]}" 60 && pass "instance $k ready again" || fail "instance $k ready again" "$(curl -s "$(inst_base "$k")/probes/readiness")"; done
psql -q "$db" -c "UPDATE todos SET description = 'after the outage' WHERE id = 't-l-alice-1-1'"
for k in 1 2 3; do
  for ((i = 0; i < 150; i++)); do grep -q 'after the outage' "$T_TMP/stream$k.out" && break; sleep 0.1; done
  grep -q 'after the outage' "$T_TMP/stream$k.out" && pass "the stream on instance $k carries the change made after the outage" || fail "stream $k resumed" "$(tail -c 300 "$T_TMP/stream$k.out")"
done
expect_eq "the write refused during the outage was not applied" 0 "$(psql -tAqX "$db" -c "SELECT count(*) FROM todos WHERE id = 'down1'")"
hdr=$(write 2 down1)
expect_match "its retry is accepted" '^HTTP/1.1 200' "$hdr"
expect_eq "and applied once" 1 "$(psql -tAqX "$db" -c "SELECT count(*) FROM todos WHERE id = 'down1'")"
converged "$T_TMP/i1/ferry.yaml" 30 && pass "storage equals the oracle" || fail "oracle" "$(head -5 "$T_TMP/converge.diff")"
