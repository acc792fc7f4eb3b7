#!/usr/bin/env bash
# 58_write_history.sh -- the sync history (ferry_write_history) and `ferry debug history`
#
# Two users edit the same task while offline and upload one after the other; the table merges
# its title with server_wins_if_changed. Every op of every batch is recorded with its outcome:
# who, which client, per column what was sent, the client's old value, the stored value and the
# result, with the strategy; rejections with their reason; duplicates. `ferry debug history`
# prints the row's replication ops and this history, so the loser's line says why. Entries
# older than write_back.history.keep are trimmed by the background pass.
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"

W_EXTRA_CONFIG="write_back:
  recheck_interval: 1
  history:
    keep: 3600" write_setup write58 "
CREATE TABLE tasks (id text PRIMARY KEY, title text, done boolean NOT NULL DEFAULT false, owner text);
CREATE TABLE notes (id text PRIMARY KEY, body text);
INSERT INTO tasks VALUES ('t1', 'Buy milk', false, 'team');
INSERT INTO notes VALUES ('n1', 'v0');
CREATE PUBLICATION ferry FOR TABLE tasks, notes;
" "
bucket_definitions:
  all:
    data:
      - SELECT id, title, done FROM tasks
write_rules:
  tasks:
    operations: [insert, update]
    columns: [id, title, done, owner]
    check: \"new.owner = 'team'\"
    merge: {title: server_wins_if_changed}
  notes:
    operations: [update]
    columns: [id, body]
"
a=$(write_token ann)
b=$(write_token ben)
# offline, both saw "Buy milk"; ann renames and ticks it, ben renames it
r=$(write_post "$a" '{"client_id":"phone-ann","batch":[{"op_id":1,"op":"PATCH","type":"tasks","id":"t1","data":{"title":"Buy oat milk","done":1},"old":{"title":"Buy milk","done":0}}]}')
expect_match "ann's edit applies" '"op_id":1,"status":"applied"}' "$r"
r=$(write_post "$b" '{"client_id":"phone-ben","batch":[{"op_id":7,"op":"PATCH","type":"tasks","id":"t1","data":{"title":"Buy milk x2"},"old":{"title":"Buy milk"}},{"op_id":8,"op":"PATCH","type":"tasks","id":"t1","data":{"owner":"ben"}}]}')
expect_match "ben's title loses" '"op_id":7,"status":"applied","columns":\{"title":"kept"\}' "$r"
expect_match "ben's owner change is rejected by check" '"op_id":8,"status":"rejected","code":"check_failed"' "$r"
r=$(write_post "$b" '{"client_id":"phone-ben","batch":[{"op_id":7,"op":"PATCH","type":"tasks","id":"t1","data":{"title":"Buy milk x2"},"old":{"title":"Buy milk"}}]}')
expect_match "a resent op is a duplicate" '"op_id":7,"status":"duplicate"' "$r"
# a plain table (the pipelined path) records the stored value too
r=$(write_post "$a" '{"client_id":"phone-ann","batch":[{"op_id":2,"op":"PATCH","type":"notes","id":"n1","data":{"body":"v1"}}]}')
expect_match "note edited" '"op_id":2,"status":"applied"}' "$r"

h() { sql "SELECT concat_ws(' | ', user_id, client_id, op_id, op, status, code, 'sent ' || sent::text, 'old ' || old::text, 'stored ' || stored::text, 'decided ' || decided::text) FROM ferry_write_history_ops WHERE row_id = '$1' ORDER BY batch_id, op_id"; }
hist=$(h t1)
expect_match "ann's op: sent, old, stored, and what the strategy decided" 'ann \| phone-ann \| 1 \| PATCH \| applied \| sent \{"done": 1, "title": "Buy oat milk"\} \| old \{"done": 0, "title": "Buy milk"\} \| stored \{"done": false, "title": "Buy milk"\} \| decided \{"title": \{"result": "Buy oat milk", "strategy": "server_wins_if_changed", "resolution": "applied"\}\}' "$hist"
expect_match "ben's op: kept, the stored value stays" 'ben \| phone-ben \| 7 \| PATCH \| applied \| sent \{"title": "Buy milk x2"\} \| old \{"title": "Buy milk"\} \| stored \{"title": "Buy oat milk"\} \| decided \{"title": \{"result": "Buy oat milk", "strategy": "server_wins_if_changed", "resolution": "kept"\}\}' "$hist"
expect_match "the rejected op and its reason" 'ben \| phone-ben \| 8 \| PATCH \| rejected \| check_failed \| sent \{"owner": "ben"\} \| stored \{"owner": "team"\}' "$hist"
expect_match "the duplicate" 'ben \| phone-ben \| 7 \| PATCH \| duplicate' "$hist"
expect_match "the plain batch took the pipelined path, history and all" 'client="?phone-ann"? status=200 ops=1 applied=1 .*path=pipelined' "$(grep 'msg="batch"' "$FERRY_LOG" | tail -1)"
expect_eq "pipelined path: the stored value before" 'ann | phone-ann | 2 | PATCH | applied | sent {"body": "v1"} | stored {"body": "v0"}' "$(h n1)"

# ferry debug history: the replication ops and the write-back lines, in order
for ((i = 0; i < 100; i++)); do
  out=$("$FERRY_BIN" debug history --config "$W_CFG" tasks t1 2>&1)
  [[ "$out" == *'Buy oat milk'*'op '*'PUT'* ]] && grep -q 'data .*Buy oat milk' <<<"$out" && break
  sleep 0.1
done
expect_match "debug history names the row" '^row tasks t1' "$out"
expect_match "debug history: the replication ops, with bucket and data" 'op [0-9]+ PUT bucket [^ ]*all\[\] data \{"id":"t1","title":"Buy oat milk","done":1\}' "$out"
expect_match "debug history: ann's write and what it did" 'user ann client phone-ann op 1 PATCH: applied
      done: sent 1 old 0 stored false -> 1 \(client_wins, applied\)
      title: sent "Buy oat milk" old "Buy milk" stored "Buy milk" -> "Buy oat milk" \(server_wins_if_changed, applied\)' "$out"
expect_match "debug history: why ben's title was not written" 'user ben client phone-ben op 7 PATCH: applied
      title: sent "Buy milk x2" old "Buy milk" stored "Buy oat milk" -> "Buy oat milk" \(server_wins_if_changed, kept\)' "$out"
expect_match "debug history: the rejection" 'user ben client phone-ben op 8 PATCH: rejected check_failed: the new row does not pass "check" of table "tasks"' "$out"
w1=$(grep -n 'op 1 PATCH' <<<"$out" | cut -d: -f1); w7=$(grep -n 'op 7 PATCH: applied' <<<"$out" | cut -d: -f1)
[ -n "$w1" ] && [ -n "$w7" ] && [ "$w1" -lt "$w7" ] && pass "debug history: in time order" || fail "debug history: in time order" "$out"

# retention: an entry older than write_back.history.keep goes, the others stay
sql "INSERT INTO ferry_write_history (at, user_id, client_id, ops, rows) VALUES (now() - interval '2 hours', 'old', 'c', '[{\"op_id\":1,\"op\":\"PUT\",\"t\":\"tasks\",\"r\":\"gone\",\"s\":\"applied\"}]', '[\"tasks\",\"gone\"]')" >/dev/null
expect_eq "an old batch is there" "1" "$(sql "SELECT count(*) FROM ferry_write_history_ops WHERE row_id = 'gone'")"
for ((i = 0; i < 300; i++)); do
  [ "$(sql "SELECT count(*) FROM ferry_write_history_ops WHERE row_id = 'gone'")" = 0 ] && break
  sleep 0.1
done
expect_eq "the old entry was trimmed" "0" "$(sql "SELECT count(*) FROM ferry_write_history_ops WHERE row_id = 'gone'")"
expect_eq "the recent ones stay (one row per batch, one entry per op)" "4 5" "$(sql "SELECT count(*) FROM ferry_write_history") $(sql "SELECT count(*) FROM ferry_write_history_ops")"
expect_match "metrics count the trimmed entries" 'ferry_write_history_trimmed_total 1' "$(curl -s "$W_URL/metrics")"
write_finish
