#!/usr/bin/env bash
# 61_sdk_streams.sh -- libferry's Sync Streams subscriptions end to end (build/ferry-todo)
#
# The demo schema with edition-3 rules: lists arrive by default; a list's todos only through a
# subscription to "list_todos" (owner or org member). ferry-todo "open LIST" subscribes while
# connected (the stream reopens with it), waits for the subscription's data and prints the list;
# the subscription is kept in the replica: after a restart of the app, and of ferry, later
# changes of that list still arrive. A list of another user gives nothing, a missing stream is
# reported as the server's error for that subscription while the rest syncs, and "close"
# (unsubscribe) removes the list's todos but keeps what other subscriptions hold.
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"
TODO=${FERRY_TODO_BIN:-$(dirname "$FERRY_BIN")/ferry-todo}
[ -x "$TODO" ] || { fail "ferry-todo is built" "$TODO missing (make build/ferry-todo)"; exit 1; }

rules='config:
  edition: 3
streams:
  lists:
    auto_subscribe: true
    query: |
      SELECT id, org_id, owner_id, name FROM lists
      WHERE owner_id = auth.user_id() OR org_id IN (SELECT org_id FROM members WHERE user_id = auth.user_id())
  list_todos:
    query: |
      SELECT id, list_id, org_id, description, completed, created_by FROM todos
      WHERE list_id = subscription.parameter('"'list_id'"')
        AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id()
                        OR org_id IN (SELECT org_id FROM members WHERE user_id = auth.user_id()))'
write_setup sdk61 "$(cat "$T_ROOT/deploy/demo/schema.sql")" "$rules"
A=$(write_token alice)
export FERRY_TODO_TIMEOUT=30
todo() { "$TODO" --db "$T_TMP/a.db" --endpoint "$W_URL" --token "$A" "$@"; }
replica() { sqlite3 "$T_TMP/a.db" "SELECT id || '|' || description FROM todos ORDER BY id"; }
of_lists() { # the todos of the given lists in Postgres, as "id|description"
  sql "SELECT id || '|' || description FROM todos WHERE list_id IN ($1) ORDER BY id"
}
# sync_until LISTS: sync until the replica equals those lists' todos (a change made in Postgres
# reaches a sync only once ferry replicated it; sync --wait returns at the first checkpoint)
sync_until() {
  local i out
  for ((i = 0; i < 30; i++)); do
    out=$(todo sync --wait 2>&1) || { echo "$out"; return 1; }
    [ "$(replica)" = "$(of_lists "$1")" ] && return 0
    sleep 0.2
  done
  return 1
}

out=$(todo sync --wait 2>&1) || fail "first sync" "$out"
expect_eq "default streams: alice's and her org's lists, no todos yet" "l-acme l-alice|0" \
  "$(sqlite3 "$T_TMP/a.db" "SELECT group_concat(id, ' ') FROM (SELECT id FROM lists ORDER BY id)")|$(sqlite3 "$T_TMP/a.db" "SELECT count(*) FROM todos")"

out=$(todo open l-alice 2>&1); rc=$?
expect_eq "open l-alice exits 0" 0 "$rc"
expect_eq "open subscribes while connected and prints the list's todos" \
  "$(printf 't1\t[ ]\tBuy milk\nt2\t[ ]\tCall the plumber')" "$out"
expect_eq "the replica holds that list's todos" "$(of_lists "'l-alice'")" "$(replica)"
expect_match "the stream was reopened with the subscription (one request without, one with)" \
  'subscriptions=0.*subscriptions=1' "$(grep -o 'stream started.*' "$FERRY_LOG" | tr '\n' ' ')"
expect_eq "the subscription is stored, synced, without error" \
  "$(printf 'list_todos\t{"list_id":"l-alice"}\tsynced\t')" "$(todo subscriptions)"

# a restart of the app: the subscription is read back and sent again
sql "INSERT INTO todos (id, list_id, description, created_by) VALUES ('t7', 'l-alice', 'After the app restart', 'alice')" >/dev/null
sync_until "'l-alice'"
expect_eq "after an app restart the kept subscription still brings the list's changes" "$(of_lists "'l-alice'")" "$(replica)"

# a restart of ferry
stop_pid "$FERRY_PID"
start_ferry "$W_CFG" || exit 1
wait_ready "$W_PORT" 30 || fail "ferry ready again" "$(curl -s "$W_URL/probes/readiness")"
sql "UPDATE todos SET description = 'Buy oat milk' WHERE id = 't1'" >/dev/null
sync_until "'l-alice'"
expect_eq "after a ferry restart too" "$(of_lists "'l-alice'")" "$(replica)"

# a second list, another user's list, a missing stream
out=$(todo open l-acme 2>&1) || fail "open l-acme" "$out"
expect_eq "a second subscription adds its list" "$(of_lists "'l-alice','l-acme'")" "$(replica)"
todo subscribe list_todos '{"list_id":"l-bob"}' || fail "subscribe" "l-bob"
todo subscribe no_such_stream '{"x":1}' || fail "subscribe" "no_such_stream"
out=$(todo sync --wait 2>&1) || fail "sync with an erring subscription" "$out"
expect_eq "another user's list gives nothing; the rest syncs" "$(of_lists "'l-alice','l-acme'")" "$(replica)"
subs=$(todo subscriptions)
expect_match "the missing stream is the server's error for that subscription" \
  $'no_such_stream\t\\{"x":1\\}\tnot synced\tstream "no_such_stream" is not defined in the sync rules' "$subs"
expect_eq "the other user's list is a subscription without buckets, not an error" \
  "$(printf 'list_todos\t{"list_id":"l-bob"}\tsynced\t')" "$(echo "$subs" | grep l-bob)"

# close: unsubscribing removes that list's todos, the other list's stay
todo close l-acme || fail "close" "l-acme"
todo unsubscribe no_such_stream '{"x":1}' || fail "unsubscribe" "no_such_stream"
out=$(todo sync --wait 2>&1) || fail "sync after close" "$out"
expect_eq "close removes the list's todos, the other subscription's stay" "$(of_lists "'l-alice'")" "$(replica)"
expect_eq "two subscriptions are left" 2 "$(todo subscriptions | wc -l)"
checksums=$(echo "$out" | grep -o 'checksum failures [0-9]*')
expect_eq "no checksum failure" "checksum failures 0" "$checksums"
write_finish
