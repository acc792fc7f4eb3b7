#!/usr/bin/env bash
# 70_demo.sh -- make demo's script runs to completion non-interactively, each step of its
# walkthrough has the outcome it claims (checked in Postgres and in the clients' replicas, not
# only in the output), running it again replaces the previous demo, and demo-stop leaves nothing
source "$(dirname "$0")/../lib/testlib.sh"
export DEMO_VAR=$T_TMP/var DEMO_NONINTERACTIVE=1 DEMO_PORT=$(free_port)
export FERRY_BIN

out=$("$T_ROOT/deploy/demo.sh" start 2>&1); rc=$?
expect_eq "the demo runs to completion" "0" "$rc"
[ "$rc" = 0 ] || echo "$out" | tail -30 | sed 's/^/    /'
plain=$(sed 's/\x1b\[[0-9;]*m//g' <<<"$out")
pid1=$(cat "$DEMO_VAR/ferry.pid" 2>/dev/null)
pg1=$(sed -n 's/^PGTMP=//p' "$DEMO_VAR/demo.env")
T_PIDS+=("$pid1")
app=$(sed -n 's/^FERRY_PG_URI=//p' "$DEMO_VAR/demo.env"); app=${app%/*}/app
sql() { psql -qAtX "$app" -c "$1"; }
replica() { sqlite3 "$DEMO_VAR/$1.db" "$2"; }

expect_eq "ferry answers on the demo port" "200" "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$DEMO_PORT/probes/liveness")"
expect_match "postgres of the demo has wal_level=logical" "logical" "$(sql 'show wal_level')"
expect_match "ferry was ready" '"ready":true' "$plain"

# 1. two users sync their own data only
expect_eq "alice's replica has her lists only" "l-acme l-alice" "$(replica alice "SELECT group_concat(id, ' ') FROM (SELECT id FROM lists ORDER BY id)")"
expect_eq "bob's replica has his lists only" "l-acme l-bob" "$(replica bob "SELECT group_concat(id, ' ') FROM (SELECT id FROM lists ORDER BY id)")"
expect_eq "bob has none of alice's private todos" "0" "$(replica bob "SELECT count(*) FROM todos WHERE list_id = 'l-alice'")"
expect_match "the output lists each user's lists" "alice's lists: +l-acme l-alice .*bob's lists: +l-acme l-bob" "$(echo $plain)"

# 2. a psql change arrives live
expect_match "the psql insert arrives on the open stream" 'live: t7: .*Water the plants' "$plain"
expect_eq "and in alice's replica" "Water the plants" "$(replica alice "SELECT description FROM todos WHERE id = 't7'")"

# 3. offline write lands later
expect_match "sync without a server keeps the write queued" 'not synced: .*queue 1' "$plain"
expect_eq "the offline write reached Postgres" "alice" "$(sql "SELECT created_by FROM todos WHERE description = 'Buy stamps (written offline)'")"
expect_eq "alice's upload queue is empty" "0" "$(replica alice 'SELECT count(*) FROM ferry_crud')"

# 4. unauthorized write rejected, app told
expect_match "the app is told about the rejection" 'rejected: PUT todos [^ ]+: .*\(check_failed\)' "$plain"
expect_eq "the rejected todo is not in Postgres" "0" "$(sql "SELECT count(*) FROM todos WHERE description = 'sneaky'")"
expect_eq "and was removed from bob's replica" "0" "$(replica bob "SELECT count(*) FROM todos WHERE description = 'sneaky'")"

# 5. two offline bookings of one room both land; the violation reaches its writer
expect_eq "both bookings of the Boardroom landed" "bk-alice bk-bob" "$(sql "SELECT string_agg(id, ' ' ORDER BY id) FROM bookings WHERE room_id = 'r-board'")"
expect_eq "one violation, for bob's booking" "no_double_booking bob bk-bob [\"bk-alice\"]" "$(sql "SELECT string_agg(constraint_name || ' ' || user_id || ' ' || row_id || ' ' || conflicting_ids::text, '; ') FROM ferry_violations")"
expect_match "the violation reached bob through his sync stream" 'violation for bob: bookings bk-bob: overlaps another booking' "$plain"

# 6. the official PowerSync Node client (when node and its install are there)
if command -v node >/dev/null && command -v npm >/dev/null; then
  expect_match "the PowerSync Node client synced alice's data" 'powersync: first sync complete: lists l-acme l-alice' "$plain"
  expect_match "its local write was applied through /api/write" 'powersync: local insert uploaded through /api/write: applied' "$plain"
  expect_eq "it is in Postgres" "1" "$(sql "SELECT count(*) FROM todos WHERE description = 'Added with the PowerSync Node client'")"
else
  expect_match "without node the step says it is skipped" 'node and npm are not installed: skipped' "$plain"
fi

# the end: ferry running, a token, the endpoint, how to connect and to stop
expect_match "it tells how to stop it" 'stop it: +make demo-stop' "$plain"
expect_match "it shows the endpoint" "endpoint: +http://127.0.0.1:$DEMO_PORT" "$plain"
expect_match "it shows how to connect" 'connect: +build/ferry-todo' "$plain"
tok=$(sed -n 's/^ *token: *\([^ ]*\)$/\1/p' <<<"$plain" | head -1)
expect_eq "the printed token opens a sync stream" "200" "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 -X POST "http://127.0.0.1:$DEMO_PORT/sync/stream" -H "Authorization: Token $tok" -H 'content-type: application/json' -d '{"buckets":[]}' || true)"
web=$(sed -n 's/^ *web app: *\(http[^ ]*\)$/\1/p' <<<"$plain" | head -1)
expect_match "it prints the web app's URL" '^http://127\.0\.0\.1:[0-9]+/$' "$web"
expect_eq "the web app serves its page" "200" "$(curl -s -o /dev/null -w '%{http_code}' "$web" || true)"
expect_match "and names ferry as its (other) endpoint" "\"endpoint\":\"http://127.0.0.1:$DEMO_PORT\"" "$(curl -s "${web}config.json" || true)"
expect_match "its demo tokens open a sync stream" '^200$' "$(curl -s --max-time 1 -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$DEMO_PORT/sync/stream" -H "Authorization: Token $(curl -s "${web}token?user=bob" | sed 's/.*"token":"\([^"]*\)".*/\1/')" -H 'content-type: application/json' -d '{"buckets":[]}' || true)"
webpid1=$(cat "$DEMO_VAR/web.pid" 2>/dev/null)
expect_eq "no client process is left running" "" "$(pgrep -f "$DEMO_VAR/(powersync|alice|bob)" || true)"

out=$("$T_ROOT/deploy/demo.sh" start 2>&1); rc=$?
expect_eq "running the demo again works" "0" "$rc"
expect_match "it stops the previous demo first" 'stopped ferry \(pid '"$pid1"'\)' "$out"
pid2=$(cat "$DEMO_VAR/ferry.pid")
pg2=$(sed -n 's/^PGTMP=//p' "$DEMO_VAR/demo.env")
T_PIDS+=("$pid2")
kill -0 "$pid1" 2>/dev/null && fail "the old ferry is gone" "pid $pid1 runs" || pass "the old ferry is gone"
[ -d "$pg1" ] && fail "the old postgres is gone" "$pg1 exists" || pass "the old postgres is gone"

# a client left running (as when the demo is interrupted) is stopped by demo-stop too
sleep 300 & straggler=$!
T_PIDS+=("$straggler")
echo "$straggler sleep" >>"$DEMO_VAR/clients.pid"
out=$("$T_ROOT/deploy/demo.sh" stop 2>&1)
expect_match "demo-stop stops clients, ferry and postgres" "stopped sleep.*stopped ferry.*stopped postgres" "$(echo $out)"
sleep 0.1
kill -0 "$pid2" 2>/dev/null && fail "no ferry is left" "pid $pid2 runs" || pass "no ferry is left"
kill -0 "${webpid1:-0}" 2>/dev/null && fail "no web demo server is left" "pid $webpid1 runs" || pass "no web demo server is left"
kill -0 "$straggler" 2>/dev/null && fail "no client is left" "pid $straggler runs" || pass "no client is left"
[ -d "$pg2" ] && fail "no postgres directory is left" "$pg2" || pass "no postgres directory is left"
expect_eq "no process of the demo is left" "" "$(pgrep -f "$DEMO_VAR" || true; pgrep -f "$pg2" || true)"
