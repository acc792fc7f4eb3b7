#!/usr/bin/env bash
# 58_write_history.sh -- the sync history (ferry_write_history) and `ferry debug history`
#
# Two users edit the same task while offline and upload one after the other; the table merges
# its title with server_wins_if_changed. Every op of every batch is recorded with its outcome:
# who, which client, per column what was sent, the client's old value, the stored value and the
# result, with the strategy; rejections with their reason; duplicates. `ferry debug history`
# prints the row's replication ops and this history as one timeline in time order (each op at
# its storage chunk's commit time, the source transaction's), so the loser's line says why, a
# write comes before the op it caused and a later plain-SQL change's op after both; ops of
# chunks without a commit time (stored before chunks kept one) come first, marked. Entries
# older than write_back.history.keep are trimmed by the background pass.
# storage: both
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

# a later change in plain SQL, outside write-back
sql "UPDATE tasks SET title = 'Buy milk (plain SQL)' WHERE id = 't1'" >/dev/null

# ferry debug history: the replication ops and the write-back lines, one timeline in time order
for ((i = 0; i < 100; i++)); do
  out=$("$FERRY_BIN" debug history --config "$W_CFG" tasks t1 2>&1)
  grep -q 'repl .*data .*Buy oat milk' <<<"$out" && grep -q 'repl .*data .*plain SQL' <<<"$out" && break
  sleep 0.1
done
expect_match "debug history names the row" '^row tasks t1' "$out"
expect_match "debug history: one timeline" $'\n''timeline \(UTC, oldest first; storage checkpoint [0-9]+\):' "$out"
expect_match "debug history: the replication ops, with time, bucket, data and LSN" '  [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8}\.[0-9]{6} repl  op [0-9]+ PUT bucket [^ ]*all\[\] data \{"id":"t1","title":"Buy oat milk","done":1\} lsn [0-9A-F]+/[0-9A-F]+' "$out"
expect_match "debug history: the write-back lines, with time" '  [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8}\.[0-9]{6} write user ann client phone-ann op 1 PATCH: applied' "$out"
# line numbers: ann's write, the op it caused, ben's writes, the plain-SQL change's op
ln() { grep -n -- "$1" <<<"$out" | head -1 | cut -d: -f1; }
l_ann=$(ln 'write user ann client phone-ann op 1 PATCH'); l_op=$(ln 'repl .*"title":"Buy oat milk"')
l_ben=$(ln 'write user ben client phone-ben op 7 PATCH: applied'); l_sql=$(ln 'repl .*"title":"Buy milk (plain SQL)"')
[ -n "$l_ann" ] && [ -n "$l_op" ] && [ "$l_ann" -lt "$l_op" ] && pass "debug history: ann's write comes before the op it caused" || fail "debug history: ann's write comes before the op it caused" "$out"
[ -n "$l_ben" ] && [ "$l_op" -lt "$l_ben" ] && pass "debug history: ann's op comes before ben's later write" || fail "debug history: ann's op comes before ben's later write" "$out"
[ -n "$l_sql" ] && [ "$l_ben" -lt "$l_sql" ] && pass "debug history: the plain-SQL change's op comes after the writes" || fail "debug history: the plain-SQL change's op comes after the writes" "$out"
times=$(grep -oE '^  [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8}\.[0-9]{6}' <<<"$out")
expect_eq "debug history: every line has a time, in order" "$(sort <<<"$times")" "$times"
expect_eq "debug history: none is unknown" "" "$(grep 'time unknown' <<<"$out")"
expect_match "debug history: ann's write and what it did" 'user ann client phone-ann op 1 PATCH: applied
      done: sent 1 old 0 stored false -> 1 \(client_wins, applied\)
      title: sent "Buy oat milk" old "Buy milk" stored "Buy milk" -> "Buy oat milk" \(server_wins_if_changed, applied\)' "$out"
expect_match "debug history: why ben's title was not written" 'user ben client phone-ben op 7 PATCH: applied
      title: sent "Buy milk x2" old "Buy milk" stored "Buy oat milk" -> "Buy oat milk" \(server_wins_if_changed, kept\)' "$out"
expect_match "debug history: the rejection" 'user ben client phone-ben op 8 PATCH: rejected check_failed: the new row does not pass "check" of table "tasks"' "$out"
w1=$(grep -n 'op 1 PATCH' <<<"$out" | cut -d: -f1); w7=$(grep -n 'op 7 PATCH: applied' <<<"$out" | cut -d: -f1)
[ -n "$w1" ] && [ -n "$w7" ] && [ "$w1" -lt "$w7" ] && pass "debug history: in time order" || fail "debug history: in time order" "$out"

# retention: an entry older than write_back.history.keep goes, the others stay
# counted in the statement that inserts it: the background pass (every second) may trim it
# before a later query
expect_eq "an old batch is there" "1" "$(sql "WITH i AS (INSERT INTO ferry_write_history (at, user_id, client_id, ops, rows) VALUES (now() - interval '2 hours', 'old', 'c', '[{\"op_id\":1,\"op\":\"PUT\",\"t\":\"tasks\",\"r\":\"gone\",\"s\":\"applied\"}]', '[\"tasks\",\"gone\"]') RETURNING 1) SELECT count(*) FROM i")"
for ((i = 0; i < 300; i++)); do
  [ "$(sql "SELECT count(*) FROM ferry_write_history_ops WHERE row_id = 'gone'")" = 0 ] && break
  sleep 0.1
done
expect_eq "the old entry was trimmed" "0" "$(sql "SELECT count(*) FROM ferry_write_history_ops WHERE row_id = 'gone'")"
expect_eq "the recent ones stay (one row per batch, one entry per op)" "4 5" "$(sql "SELECT count(*) FROM ferry_write_history") $(sql "SELECT count(*) FROM ferry_write_history_ops")"
expect_match "metrics count the trimmed entries" 'ferry_write_history_trimmed_total 1' "$(curl -s "$W_URL/metrics")"
write_finish

# chunks stored before chunks kept a commit time (their commit_us is NULL): first, marked
storage_query "UPDATE op_chunks SET commit_us = NULL, commit_lsn = NULL WHERE last_op < (SELECT max(last_op) FROM op_chunks)" >/dev/null
out=$("$FERRY_BIN" debug history --config "$W_CFG" tasks t1 2>&1)
first=$(sed -n 3p <<<"$out")
expect_match "debug history: an op of an older chunk comes first, marked" '^  \(time unknown\) +repl  op [0-9]+ PUT .* lsn \?$' "$first"
expect_match "debug history: the newest op keeps its time" '^  [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8}\.[0-9]{6} repl .*plain SQL' "$(tail -1 <<<"$out")"
