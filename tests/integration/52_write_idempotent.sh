#!/usr/bin/env bash
# 52_write_idempotent.sh -- a batch sent twice, or overlapping an applied one, applies once
#
# ferry_write_log keeps the highest op id per user and client in the write transaction: ops at or
# below it are answered "duplicate" and not applied again. Counters make a second application
# visible (n = n + 1 through PATCHes would not; inserts of new ids and a trigger counting
# applications do).
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"

write_setup write52 "
CREATE TABLE items (id text PRIMARY KEY, label text, owner text);
CREATE TABLE applied (id int PRIMARY KEY, n int);
INSERT INTO applied VALUES (1, 0);
CREATE FUNCTION count_applied() RETURNS trigger LANGUAGE plpgsql AS
  \$\$BEGIN UPDATE applied SET n = n + 1; RETURN NEW; END\$\$;
CREATE TRIGGER items_applied AFTER INSERT OR UPDATE OR DELETE ON items FOR EACH ROW EXECUTE FUNCTION count_applied();
CREATE TABLE loose (id text, label text, owner text);  -- no unique index on id
ALTER TABLE loose REPLICA IDENTITY FULL;
CREATE PUBLICATION ferry FOR ALL TABLES;
" "
bucket_definitions:
  all:
    data:
      - SELECT id, label FROM items
write_rules:
  items:
    operations: [insert, update, delete]
    columns: [id, label, owner]
    check: \"new.owner = request.user_id()\"
  loose:
    operations: [insert, update]
    columns: [id, label, owner]
    check: \"new.owner = request.user_id()\"
"
t=$(write_token ann)
ops() { # ops FROM TO: PUT ops with those op ids
  local i s=''
  for ((i = $1; i <= $2; i++)); do s+="{\"op_id\":$i,\"op\":\"PUT\",\"type\":\"items\",\"id\":\"i$i\",\"data\":{\"label\":\"L$i\",\"owner\":\"ann\"}},"; done
  echo "${s%,}"
}
b1="{\"client_id\":\"dev1\",\"batch\":[$(ops 1 5)]}"
r1=$(write_post "$t" "$b1")
expect_match "first send: all applied" '^200 .*"op_id":1,"status":"applied".*"op_id":5,"status":"applied"' "$r1"
r2=$(write_post "$t" "$b1")
expect_eq "second send: all duplicate" \
  '200 {"results":[{"op_id":1,"status":"duplicate"},{"op_id":2,"status":"duplicate"},{"op_id":3,"status":"duplicate"},{"op_id":4,"status":"duplicate"},{"op_id":5,"status":"duplicate"}]}' "$r2"
expect_eq "applied once (trigger count)" "5" "$(sql "SELECT n FROM applied")"

r3=$(write_post "$t" "{\"client_id\":\"dev1\",\"batch\":[$(ops 4 8)]}")
expect_match "overlap: old ops duplicate" '"op_id":4,"status":"duplicate"\},\{"op_id":5,"status":"duplicate"\}' "$r3"
expect_match "overlap: new ops applied" '"op_id":6,"status":"applied"\},\{"op_id":7,"status":"applied"\},\{"op_id":8,"status":"applied"\}' "$r3"
expect_eq "8 applications in all" "8" "$(sql "SELECT n FROM applied")"
expect_eq "8 rows" "8" "$(sql "SELECT count(*) FROM items")"

# a rejected op is answered once too: resent, it is a duplicate (so the client's queue moves on)
r4=$(write_post "$t" '{"client_id":"dev1","batch":[{"op_id":9,"op":"PUT","type":"items","id":"bad","data":{"owner":"eve"}}]}')
expect_match "rejected op" '"op_id":9,"status":"rejected","code":"check_failed"' "$r4"
r5=$(write_post "$t" '{"client_id":"dev1","batch":[{"op_id":9,"op":"PUT","type":"items","id":"bad","data":{"owner":"eve"}}]}')
expect_match "rejected op resent: duplicate" '"op_id":9,"status":"duplicate"' "$r5"

# the log is per client and per user: the same op ids from another client or user apply
r6=$(write_post "$t" "{\"client_id\":\"dev2\",\"batch\":[{\"op_id\":1,\"op\":\"PATCH\",\"type\":\"items\",\"id\":\"i1\",\"data\":{\"label\":\"from dev2\"}}]}")
expect_match "another client's op 1 applies" '"op_id":1,"status":"applied"' "$r6"
expect_eq "write log rows" "ann|dev1|9;ann|dev2|1" "$(sql "SELECT string_agg(concat_ws('|', user_id, client_id, last_op_id), ';' ORDER BY client_id) FROM ferry_write_log")"

# the same batch posted concurrently: still applied once (the write-log row is locked)
b7="{\"client_id\":\"dev3\",\"batch\":[$(ops 100 120)]}"
before=$(sql "SELECT n FROM applied")
pids=()
for k in 1 2 3 4; do write_post "$t" "$b7" >"$T_TMP/par.$k" & pids+=($!); done
wait "${pids[@]}"
applied=$(cat "$T_TMP"/par.* | grep -o '"status":"applied"' | wc -l)
expect_eq "concurrent copies: 21 applied in all" "21" "$applied"
expect_eq "concurrent copies: 21 applications" "$((before + 21))" "$(sql "SELECT n FROM applied")"
# a PUT of an existing id is an update, also on a table without a unique index on id
for k in 1 2; do
  r=$(write_post "$t" "{\"client_id\":\"dev4\",\"batch\":[{\"op_id\":$k,\"op\":\"PUT\",\"type\":\"loose\",\"id\":\"x1\",\"data\":{\"label\":\"v$k\",\"owner\":\"ann\"}}]}")
  expect_match "PUT $k on the table without a unique id applied" "\"op_id\":$k,\"status\":\"applied\"" "$r"
done
r=$(write_post "$t" '{"client_id":"dev5","batch":[{"op_id":1,"op":"PUT","type":"items","id":"i1","data":{"label":"put again","owner":"ann"}}]}')
expect_match "PUT of an existing id with a unique index applied" '"op_id":1,"status":"applied"' "$r"
expect_eq "one row x1, updated" "1|v2" "$(sql "SELECT count(*) || '|' || max(label) FROM loose WHERE id = 'x1'")"
expect_eq "one row i1, updated" "1|put again" "$(sql "SELECT count(*) || '|' || max(label) FROM items WHERE id = 'i1'")"
write_finish
