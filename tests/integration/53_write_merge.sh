#!/usr/bin/env bash
# 53_write_merge.sh -- field-level merge of PATCHes, and lww_column
#
# Two clients PATCH different fields of one row: both survive (PATCH updates only the columns it
# names). With lww_column, a write whose value is older than the stored one is "stale" and the
# newer stored value is kept; an equal or newer one applies. A PUT on an existing row is an upsert
# of the given columns only.
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"

write_setup write53 "
CREATE TABLE docs (id text PRIMARY KEY, title text, body text, tags text, owner text NOT NULL);
CREATE TABLE cards (id text PRIMARY KEY, text text, updated_at timestamptz NOT NULL, owner text NOT NULL);
INSERT INTO docs VALUES ('d1', 'T0', 'B0', 'g0', 'team');
INSERT INTO cards VALUES ('c1', 'v0', '2026-01-01T10:00:00Z', 'team');
CREATE PUBLICATION ferry FOR ALL TABLES;
" "
bucket_definitions:
  all:
    data:
      - SELECT id, title FROM docs
write_rules:
  docs:
    operations: [insert, update]
    columns: [id, title, body, tags, owner]
    check_old: \"old.owner = 'team'\"
  cards:
    operations: [insert, update]
    columns: [id, text, updated_at, owner]
    lww_column: updated_at
"
a=$(write_token ann)
b=$(write_token ben)
# the two clients' writes made "at the same time": both posted concurrently, several rounds
for round in 1 2 3 4 5; do
  write_post "$a" "{\"client_id\":\"ca\",\"batch\":[{\"op_id\":$round,\"op\":\"PATCH\",\"type\":\"docs\",\"id\":\"d1\",\"data\":{\"title\":\"T-ann-$round\"}}]}" >"$T_TMP/a.$round" &
  pa=$!
  write_post "$b" "{\"client_id\":\"cb\",\"batch\":[{\"op_id\":$round,\"op\":\"PATCH\",\"type\":\"docs\",\"id\":\"d1\",\"data\":{\"body\":\"B-ben-$round\"}}]}" >"$T_TMP/b.$round" &
  wait "$pa" $!
done
expect_eq "every PATCH applied" "10" "$(cat "$T_TMP"/a.* "$T_TMP"/b.* | grep -c '"status":"applied"')"
expect_eq "both fields survive, the others kept" "T-ann-5|B-ben-5|g0|team" "$(sql "SELECT concat_ws('|', title, body, tags, owner) FROM docs WHERE id = 'd1'")"

r=$(write_post "$a" '{"client_id":"ca","batch":[{"op_id":10,"op":"PUT","type":"docs","id":"d1","data":{"tags":"g1"}}]}')
expect_match "PUT on an existing row applies" '"op_id":10,"status":"applied"' "$r"
expect_eq "PUT changed only its columns" "T-ann-5|B-ben-5|g1|team" "$(sql "SELECT concat_ws('|', title, body, tags, owner) FROM docs WHERE id = 'd1'")"

# lww_column
r=$(write_post "$a" '{"client_id":"ca","batch":[{"op_id":20,"op":"PATCH","type":"cards","id":"c1","data":{"text":"newer","updated_at":"2026-01-01T12:00:00Z"}}]}')
expect_match "newer write applies" '"op_id":20,"status":"applied"' "$r"
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":20,"op":"PATCH","type":"cards","id":"c1","data":{"text":"older","updated_at":"2026-01-01T11:00:00Z"}}]}')
expect_match "older write reported stale" '"op_id":20,"status":"stale","code":"stale","message":"' "$r"
expect_eq "newer value kept" "newer|2026-01-01 12:00:00+00" "$(sql "SET TimeZone=UTC; SELECT text || '|' || updated_at FROM cards WHERE id = 'c1'" | tail -1)"
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":21,"op":"PUT","type":"cards","id":"c1","data":{"text":"older put","updated_at":"2026-01-01T09:00:00+00"}}]}')
expect_match "older PUT on an existing row stale" '"op_id":21,"status":"stale"' "$r"
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":22,"op":"PATCH","type":"cards","id":"c1","data":{"text":"same time","updated_at":"2026-01-01T12:00:00Z"}}]}')
expect_match "equal timestamp applies" '"op_id":22,"status":"applied"' "$r"
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":23,"op":"PATCH","type":"cards","id":"c1","data":{"text":"no time"}}]}')
expect_match "a write without the lww column applies" '"op_id":23,"status":"applied"' "$r"
expect_eq "final card" "no time" "$(sql "SELECT text FROM cards WHERE id = 'c1'")"
r=$(write_post "$b" '{"client_id":"cb","batch":[{"op_id":24,"op":"PUT","type":"cards","id":"c2","data":{"text":"new card","updated_at":"2020-01-01T00:00:00Z","owner":"ben"}}]}')
expect_match "an insert is never stale" '"op_id":24,"status":"applied"' "$r"
metrics=$(curl -s "$W_URL/metrics")
expect_match "metrics count stale ops" 'ferry_write_ops_total\{status="stale"\} 2' "$metrics"
write_finish
