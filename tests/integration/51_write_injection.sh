#!/usr/bin/env bash
# 51_write_injection.sh -- client text never becomes SQL
#
# Table names, column names, ids and values carrying quotes, semicolons and SQL: a name that is
# not exactly a table or column of the write rules is rejected; values and ids are stored
# verbatim as data. A sentinel table must survive every attempt to drop it.
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"

write_setup write51 "
CREATE TABLE notes (id text PRIMARY KEY, body text, \"weird col\" text, n int);
CREATE TABLE sentinel (id int PRIMARY KEY);
INSERT INTO sentinel VALUES (1);
CREATE PUBLICATION ferry FOR ALL TABLES;
" "
bucket_definitions:
  all:
    data:
      - SELECT id, body FROM notes
write_rules:
  notes:
    operations: [insert, update, delete]
    columns: [id, body, \"weird col\", n]
"
t=$(write_token mallory)
evil_values=(
  "x'); DROP TABLE sentinel; --"
  "\\\"; DELETE FROM sentinel; --"
  "\$\$; DROP TABLE sentinel; \$\$"
  "' OR 1=1 --"
  "E'\\\\'; TRUNCATE sentinel; --"
)
batch='' i=0
for v in "${evil_values[@]}"; do
  i=$((i + 1))
  jv=$(printf '%s' "$v" | sed 's/\\/\\\\/g; s/"/\\"/g')
  batch+="{\"op_id\":$i,\"op\":\"PUT\",\"type\":\"notes\",\"id\":\"v$i\",\"data\":{\"body\":\"$jv\",\"weird col\":\"$jv\"}},"
done
batch+='{"op_id":10,"op":"PUT","type":"notes; DROP TABLE sentinel; --","id":"t1","data":{"body":"b"}},'
batch+='{"op_id":11,"op":"PUT","type":"notes\" ; DROP TABLE sentinel; --","id":"t2","data":{"body":"b"}},'
batch+='{"op_id":12,"op":"PUT","type":"public.sentinel","id":"2","data":{}},'
batch+='{"op_id":13,"op":"PUT","type":"notes","id":"c1","data":{"body\" = null; DROP TABLE sentinel; --":"b"}},'
batch+='{"op_id":14,"op":"PUT","type":"notes","id":"c2","data":{"n) VALUES (1); DROP TABLE sentinel; --":1}},'
batch+='{"op_id":15,"op":"PUT","type":"notes","id":"x'"'"'); DROP TABLE sentinel; --","data":{"body":"id with sql"}},'
batch+='{"op_id":16,"op":"PATCH","type":"notes","id":"v1'"'"' OR '"'"'1'"'"'='"'"'1","data":{"body":"patched"}},'
batch+='{"op_id":17,"op":"DELETE","type":"notes","id":"v1'"'"' OR '"'"'1'"'"'='"'"'1"},'
batch+='{"op_id":18,"op":"PUT","type":"notes","id":"n1","data":{"n":"1; DROP TABLE sentinel"}},'
batch+='{"op_id":19,"op":"PUT","type":"NOTES","id":"u1","data":{"body":"b"}}'
r=$(write_post "$t" "{\"client_id\":\"evil\",\"batch\":[$batch]}")
expect_match "batch answers 200" '^200 ' "$r"
expect_match "values with SQL applied as data" '"op_id":1,"status":"applied".*"op_id":5,"status":"applied"' "$r"
for n in 10 11 12 19; do
  expect_match "table name with SQL or unknown case rejected (op $n)" "\"op_id\":$n,\"status\":\"rejected\",\"code\":\"table_not_writable\"" "$r"
done
for n in 13 14; do
  expect_match "column name with SQL rejected (op $n)" "\"op_id\":$n,\"status\":\"rejected\",\"code\":\"column_not_allowed\"" "$r"
done
expect_match "id with SQL stored as data" '"op_id":15,"status":"applied"' "$r"
expect_match "PATCH of an id with OR 1=1 finds no row" '"op_id":16,"status":"rejected","code":"not_found"' "$r"
expect_match "DELETE of an id with OR 1=1 deletes nothing" '"op_id":17,"status":"applied"' "$r"
expect_match "SQL in an integer value is a type error" '"op_id":18,"status":"rejected","code":"invalid_value"' "$r"

expect_eq "sentinel table survives" "1" "$(sql "SELECT count(*) FROM sentinel")"
i=0
for v in "${evil_values[@]}"; do
  i=$((i + 1))
  expect_eq "value $i stored verbatim" "$v|$v" "$(sql "SELECT body || '|' || \"weird col\" FROM notes WHERE id = 'v$i'")"
done
expect_eq "id with SQL stored verbatim" "id with sql" "$(sql "SELECT lower(body) FROM notes WHERE id = 'x''); DROP TABLE sentinel; --'")"
expect_eq "no other rows" "6" "$(sql "SELECT count(*) FROM notes")"
expect_eq "v1 not patched" "x'); DROP TABLE sentinel; --" "$(sql "SELECT body FROM notes WHERE id = 'v1'")"
write_finish
