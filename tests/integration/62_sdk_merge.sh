#!/usr/bin/env bash
# 62_sdk_merge.sh -- libferry sends "old", and the server's merge strategies use it
#
# ferry-todo's todos table tracks previous values (ferry_table_t.track_previous), so a PATCH it
# uploads carries the changed columns' old values. The write rules merge the description with
# server_wins_if_changed: two of alice's clients edit the same todo while offline; the first
# upload wins, the second is kept out (recorded in ferry_write_conflicts, which the rules send
# back to alice), and both replicas converge on the winner. Without old values the op would be
# rejected (checked with a hand-made PATCH).
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"
TODO=${FERRY_TODO_BIN:-$(dirname "$FERRY_BIN")/ferry-todo}
[ -x "$TODO" ] || { fail "ferry-todo is built" "$TODO missing (make build/ferry-todo)"; exit 1; }

rules="$(cat "$T_ROOT/deploy/demo/sync-rules.yaml")
  my_conflicts:
    parameters: SELECT request.user_id() AS user_id
    data:
      - SELECT id, row_id, column_name, resolution FROM ferry_write_conflicts WHERE user_id = bucket.user_id
write_rules:
  todos:
    operations: [insert, update, delete]
    columns: [id, list_id, org_id, description, completed, created_by]
    check: \"new.list_id IN (SELECT id FROM lists WHERE owner_id = request.user_id() OR org_id IN (SELECT org_id FROM members WHERE user_id = request.user_id()))\"
    check_old: \"old.list_id IN (SELECT id FROM lists WHERE owner_id = request.user_id() OR org_id IN (SELECT org_id FROM members WHERE user_id = request.user_id()))\"
    merge: {description: server_wins_if_changed}
"
write_setup sdk62 "$(cat "$T_ROOT/deploy/demo/schema.sql")" "$rules"
A=$(write_token alice)
export FERRY_TODO_TIMEOUT=30
todo() { local c=$1; shift; "$TODO" --db "$T_TMP/$c.db" --endpoint "$W_URL" --token "$A" "$@"; }
desc() { sqlite3 "$T_TMP/$1.db" "SELECT description FROM todos WHERE id = 't4'"; }

for c in a1 a2; do todo $c sync --wait >"$T_TMP/$c.sync" 2>&1 || fail "first sync of $c" "$(cat "$T_TMP/$c.sync")"; done
before=$(sql "SELECT description FROM todos WHERE id = 't4'")
expect_eq "both replicas have t4" "$before|$before" "$(desc a1)|$(desc a2)"
todo a1 edit t4 "Ship it (a1)"     # both offline: neither has synced since
todo a2 edit t4 "Ship it (a2)"
expect_eq "the queued PATCH carries the old value" "{\"description\":\"$before\"}" "$(sqlite3 "$T_TMP/a2.db" "SELECT old FROM ferry_crud WHERE op = 'PATCH'")"
todo a1 sync --wait >"$T_TMP/a1.sync" 2>&1 || fail "a1 syncs" "$(cat "$T_TMP/a1.sync")"
todo a2 sync --wait >"$T_TMP/a2.sync" 2>&1 || fail "a2 syncs" "$(cat "$T_TMP/a2.sync")"
todo a1 sync --wait >/dev/null 2>&1
expect_eq "the first upload won in Postgres" "Ship it (a1)" "$(sql "SELECT description FROM todos WHERE id = 't4'")"
expect_eq "both replicas converge on it" "Ship it (a1)|Ship it (a1)" "$(desc a1)|$(desc a2)"
expect_eq "the conflict is recorded: column, strategy, what was sent and the old value" "t4 description server_wins_if_changed kept \"Ship it (a2)\" \"$before\"" \
  "$(sql "SELECT concat_ws(' ', row_id, column_name, strategy, resolution, sent, old) FROM ferry_write_conflicts")"
expect_match "and reaches alice's replicas (ferry_write_conflicts)" '^\[\{"id":"[^"]+","row_id":"t4","column_name":"description","resolution":"kept"\}\]$' "$(todo a2 conflicts 2>&1)"
r=$(write_post "$A" '{"client_id":"handmade","batch":[{"op_id":1,"op":"PATCH","type":"todos","id":"t4","data":{"description":"no old"}}]}')
expect_match "a PATCH without old is rejected" '"status":"rejected","code":"old_required"' "$r"
write_finish
