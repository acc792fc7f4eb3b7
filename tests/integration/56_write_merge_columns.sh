#!/usr/bin/env bash
# 56_write_merge_columns.sh -- per-column merge strategies of write rules (merge:)
#
# Two clients edit one row while offline and upload later, each op carrying the CRUD entry's
# "old" (trackPrevious) and "metadata" (trackMetadata) as the PowerSync clients send them:
# - server_wins_if_changed: different columns both land; the same column: the first upload wins,
#   the second is kept out, said so in its result and recorded in ferry_write_conflicts;
# - add: two increments both count; an op without "old" is rejected naming trackPrevious;
# - max: the greater value stays;
# - lww (timestamp from metadata): the later edit wins per column, whatever the upload order;
#   without the timestamp the op is rejected naming what is missing.
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"

write_setup write56 "
CREATE TABLE tasks (id text PRIMARY KEY, title text, due date, likes integer NOT NULL DEFAULT 0,
                    best integer, note text);
CREATE TABLE notes (id text PRIMARY KEY, title text, body text);
INSERT INTO tasks VALUES ('t1', 'T0', '2026-01-01', 0, 5, 'n0');
CREATE PUBLICATION ferry FOR ALL TABLES;
" "
bucket_definitions:
  all:
    data:
      - SELECT id, title FROM tasks
write_rules:
  tasks:
    operations: [insert, update, delete]
    columns: [id, title, due, likes, best, note]
    merge: {title: server_wins_if_changed, due: server_wins_if_changed, likes: add, best: max}
  notes:
    operations: [insert, update, delete]
    columns: [id, title, body]
    merge: {default: lww}
    lww_timestamp: {metadata: ts}
"
a=$(write_token ann)
b=$(write_token ben)
row() { sql "SELECT concat_ws('|', title, due, likes, best, note) FROM tasks WHERE id = '$1'"; }

# server_wins_if_changed, different columns: both land
r=$(write_post "$a" '{"client_id":"ca","batch":[{"op_id":1,"op":"PATCH","type":"tasks","id":"t1","data":{"title":"T-ann"},"old":{"title":"T0"}}]}')
expect_match "ann's title applies" '"op_id":1,"status":"applied"}' "$r"
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":1,"op":"PATCH","type":"tasks","id":"t1","data":{"due":"2026-02-02"},"old":{"due":"2026-01-01"}}]}')
expect_match "ben's due date applies" '"op_id":1,"status":"applied"}' "$r"
expect_eq "both columns landed" "T-ann|2026-02-02|0|5|n0" "$(row t1)"

# the same column: the first upload wins, the second is kept out and recorded
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":2,"op":"PATCH","type":"tasks","id":"t1","data":{"title":"T-ben","note":"n-ben"},"old":{"title":"T0","note":"n0"}}]}')
expect_match "ben's stale title is kept out, his note applies" '"op_id":2,"status":"applied","columns":\{"title":"kept"\}\}' "$r"
expect_eq "ann's title stays, ben's note lands" "T-ann|2026-02-02|0|5|n-ben" "$(row t1)"
expect_eq "the conflict is recorded" "tasks|t1|title|ben|cb|2|server_wins_if_changed|kept|\"T-ben\"|\"T0\"|\"T-ann\"|\"T-ann\"" \
  "$(sql "SELECT concat_ws('|', table_name, row_id, column_name, user_id, client_id, op_id, strategy, resolution, sent, old, stored, result) FROM ferry_write_conflicts")"
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":3,"op":"PATCH","type":"tasks","id":"t1","data":{"title":"T-ben2"}}]}')
expect_match "without old: rejected, naming trackPrevious" '"op_id":3,"status":"rejected","code":"old_required","message":"column \\"title\\" of table \\"tasks\\" merges with \\"server_wins_if_changed\\", which needs its previous value in the op.s \\"old\\": enable trackPrevious' "$r"
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":4,"op":"PATCH","type":"tasks","id":"t1","data":{"title":"T-ben3"},"old":{"title":"T-ann"}}]}')
expect_match "with the current value as old: applies" '"op_id":4,"status":"applied"}' "$r"
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":5,"op":"PUT","type":"tasks","id":"t2","data":{"title":"new","likes":3}}]}')
expect_match "a PUT of a new row writes what it sends" '"op_id":5,"status":"applied"}' "$r"
expect_eq "new row" "new|3" "$(sql "SELECT concat_ws('|', title, likes) FROM tasks WHERE id = 't2'")"

# add: two offline increments of the same counter both count
r=$(write_post "$a" '{"client_id":"ca","batch":[{"op_id":10,"op":"PATCH","type":"tasks","id":"t1","data":{"likes":1},"old":{"likes":0}}]}')
expect_match "ann's +1" '"op_id":10,"status":"applied"}' "$r"
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":10,"op":"PATCH","type":"tasks","id":"t1","data":{"likes":1},"old":{"likes":0}}]}')
expect_match "ben's +1 is merged" '"op_id":10,"status":"applied","columns":\{"likes":"merged"\}\}' "$r"
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":11,"op":"PATCH","type":"tasks","id":"t1","data":{"likes":4},"old":{"likes":1}}]}')
expect_eq "both increments and a +3 count" "5" "$(sql "SELECT likes FROM tasks WHERE id = 't1'")"
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":12,"op":"PATCH","type":"tasks","id":"t1","data":{"likes":9}}]}')
expect_match "add without old: rejected, naming trackPrevious" '"op_id":12,"status":"rejected","code":"old_required","message":"column \\"likes\\" of table \\"tasks\\" merges with \\"add\\".*trackPrevious' "$r"
expect_eq "the rejected op changed nothing" "5" "$(sql "SELECT likes FROM tasks WHERE id = 't1'")"

# max
r=$(write_post "$a" '{"client_id":"ca","batch":[{"op_id":20,"op":"PATCH","type":"tasks","id":"t1","data":{"best":3}},{"op_id":21,"op":"PATCH","type":"tasks","id":"t1","data":{"best":9}}]}')
expect_match "a smaller value is kept out" '"op_id":20,"status":"applied","columns":\{"best":"kept"\}\}' "$r"
expect_eq "max keeps the greater" "9" "$(sql "SELECT best FROM tasks WHERE id = 't1'")"

# lww: ann edited at 10:00, ben at 11:00; ben uploads first
r=$(write_post "$a" '{"client_id":"ca","batch":[{"op_id":30,"op":"PUT","type":"notes","id":"n1","data":{"title":"A0","body":"B0"},"metadata":"{\"ts\":\"2026-03-01T09:00:00Z\"}"}]}')
expect_match "the note is created" '"op_id":30,"status":"applied"}' "$r"
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":30,"op":"PATCH","type":"notes","id":"n1","data":{"title":"A-ben"},"old":{"title":"A0"},"metadata":"{\"ts\":\"2026-03-01T11:00:00Z\"}"}]}')
expect_match "ben's later title applies" '"op_id":30,"status":"applied"}' "$r"
r=$(write_post "$a" '{"client_id":"ca","batch":[{"op_id":31,"op":"PATCH","type":"notes","id":"n1","data":{"title":"A-ann","body":"B-ann"},"old":{"title":"A0","body":"B0"},"metadata":"{\"ts\":\"2026-03-01T10:00:00Z\"}"}]}')
expect_match "ann's earlier title is kept out, her body applies" '"op_id":31,"status":"applied","columns":\{"title":"kept"\}\}' "$r"
expect_eq "per column, the later edit won" "A-ben|B-ann" "$(sql "SELECT concat_ws('|', title, body) FROM notes WHERE id = 'n1'")"
r=$(write_post "$a" '{"client_id":"ca","batch":[{"op_id":32,"op":"PATCH","type":"notes","id":"n1","data":{"title":"A-ann2"},"old":{"title":"A0"},"metadata":"{\"ts\":\"2026-03-01T12:00:00Z\"}"}]}')
expect_match "a later edit over another writer's value: overwritten" '"op_id":32,"status":"applied","columns":\{"title":"overwritten"\}\}' "$r"
expect_eq "the latest title" "A-ann2" "$(sql "SELECT title FROM notes WHERE id = 'n1'")"
r=$(write_post "$a" '{"client_id":"ca","batch":[{"op_id":33,"op":"PATCH","type":"notes","id":"n1","data":{"title":"x"}}]}')
expect_match "lww without a timestamp: rejected, saying what is missing" '"op_id":33,"status":"rejected","code":"timestamp_required","message":"column \\"title\\" of table \\"notes\\" merges with \\"lww\\", which needs the op.s time: field \\"ts\\" of its \\"metadata\\"' "$r"
r=$(write_post "$a" '{"client_id":"ca","batch":[{"op_id":34,"op":"PATCH","type":"notes","id":"n1","data":{"title":"x"},"old":7}]}')
expect_match "old must be an object" '"op_id":34,"status":"rejected","code":"invalid_op","message":"\\"old\\" must be an object"' "$r"
expect_eq "ferry's per-column times" "body 2026-03-01T10:00:00Z|title 2026-03-01T12:00:00Z" \
  "$(sql "SELECT string_agg(column_name || ' ' || ts, '|' ORDER BY column_name) FROM ferry_write_times WHERE row_id = 'n1'")"
r=$(write_post "$a" '{"client_id":"ca","batch":[{"op_id":35,"op":"DELETE","type":"notes","id":"n1"}]}')
expect_match "delete applies" '"op_id":35,"status":"applied"}' "$r"
expect_eq "a deleted row's times go with it" "0" "$(sql "SELECT count(*) FROM ferry_write_times WHERE row_id = 'n1'")"

expect_eq "conflicts recorded: title kept, likes merged twice (ben was behind both times), best kept, note title kept, overwritten" \
  "server_wins_if_changed kept,add merged,add merged,max kept,lww kept,lww overwritten" \
  "$(sql "SELECT string_agg(strategy || ' ' || resolution, ',' ORDER BY created_at, op_id) FROM ferry_write_conflicts")"
batches=$(grep 'msg="batch"' "$FERRY_LOG" | tr '\n' ' ')
expect_match "merged PATCHes take the pipelined path (one statement each), kept columns and all" \
  'client="?ca"? status=200 ops=1 applied=1 .*path=pipelined.*client="?cb"? status=200 ops=1 applied=1 .*path=pipelined' "$batches"
expect_match "an op a strategy rejects goes the careful way" 'client="?cb"? status=200 ops=1 applied=0 duplicate=0 rejected=1 .*path=careful' "$batches"
expect_match "tables with merge: have their one-statement form" 'msg="write rules prepared" .*one_statement_writes=6' "$(cat "$FERRY_LOG")"
metrics=$(curl -s "$W_URL/metrics")
expect_match "metrics count the conflicts" 'ferry_write_conflicts_total 6' "$metrics"
write_finish
