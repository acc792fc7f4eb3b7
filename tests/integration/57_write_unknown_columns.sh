#!/usr/bin/env bash
# 57_write_unknown_columns.sh -- old clients after a schema change: columns the rules do not list
#
# An app version from before a schema change still sends a column that the table lost (dropped)
# or that the write rules no longer list. unknown_columns: reject (the default) rejects the op
# naming the column and the table; ignore applies the rest. Both are counted per table and
# column (a column the table does not have as "(unknown)") and logged, naming the client.
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"

write_setup write57 "
CREATE TABLE docs (id text PRIMARY KEY, title text, secret text);
CREATE TABLE items (id text PRIMARY KEY, title text, legacy text);
INSERT INTO docs VALUES ('d1', 'T0', 's0');
INSERT INTO items VALUES ('i1', 'I0', 'l0');
CREATE PUBLICATION ferry FOR ALL TABLES;
" "
bucket_definitions:
  all:
    data:
      - SELECT id, title FROM docs
write_rules:
  docs:
    operations: [insert, update]
    columns: [id, title]
  items:
    operations: [insert, update]
    columns: [id, title]
    unknown_columns: ignore
"
a=$(write_token ann)
# the app dropped items.legacy; an old client still writes it
sql "ALTER TABLE items DROP COLUMN legacy" >/dev/null

r=$(write_post "$a" '{"client_id":"old-app","batch":[{"op_id":1,"op":"PATCH","type":"docs","id":"d1","data":{"title":"T1","secret":"x"}},{"op_id":2,"op":"PATCH","type":"docs","id":"d1","data":{"title":"T2","ghost":"x"}},{"op_id":3,"op":"PATCH","type":"docs","id":"d1","data":{"title":"T3"}}]}')
expect_match "reject: the op names the column and the table" '"op_id":1,"status":"rejected","code":"column_not_allowed","message":"column \\"secret\\" of table \\"docs\\" is not writable"' "$r"
expect_match "reject: a column the table does not have, named too" '"op_id":2,"status":"rejected","code":"column_not_allowed","message":"column \\"ghost\\" of table \\"docs\\" is not writable"' "$r"
expect_match "the rest of the batch applies" '"op_id":3,"status":"applied"' "$r"
expect_eq "nothing of the rejected ops was written" "T3|s0" "$(sql "SELECT title || '|' || secret FROM docs WHERE id = 'd1'")"

r=$(write_post "$a" '{"client_id":"old-app","batch":[{"op_id":4,"op":"PATCH","type":"items","id":"i1","data":{"title":"I1","legacy":"l1"}},{"op_id":5,"op":"PUT","type":"items","id":"i2","data":{"title":"new","legacy":"l2"}}]}')
expect_match "ignore: the update applies without the dropped column" '"op_id":4,"status":"applied"' "$r"
expect_match "ignore: the insert too" '"op_id":5,"status":"applied"' "$r"
expect_eq "the other columns were written" "i1 I1|i2 new" "$(sql "SELECT string_agg(id || ' ' || title, '|' ORDER BY id) FROM items")"
expect_eq "the history keeps what ignore dropped, with the values sent" '4 {"legacy": "l1"}|5 {"legacy": "l2"}' \
  "$(sql "SELECT string_agg(op_id || ' ' || ignored::text, '|' ORDER BY op_id) FROM ferry_write_history_ops WHERE table_name = 'items'")"
expect_eq "and no ignored entry for an op that dropped nothing" "" \
  "$(sql "SELECT string_agg(op_id::text, ',') FROM ferry_write_history_ops WHERE table_name = 'docs' AND ignored IS NOT NULL")"

metrics=$(curl -s "$W_URL/metrics")
expect_match "metric: a column the table has but the rules do not list" 'ferry_write_unknown_columns_total\{table="docs",column="secret"\} 1' "$metrics"
expect_match "metric: columns the table does not have are \"(unknown)\"" 'ferry_write_unknown_columns_total\{table="docs",column="\(unknown\)"\} 1' "$metrics"
expect_match "metric: the dropped column, ignored, counted" 'ferry_write_unknown_columns_total\{table="items",column="\(unknown\)"\} 2' "$metrics"
expect_match "a warning names the table, the column and the client" 'level=warn mod=write msg="a client wrote a column the write rules do not list" table=docs column="secret" user="ann" client="old-app" action=rejected' "$(cat "$FERRY_LOG")"

# ferry rules check --db: columns the rules name that Postgres does not have
cat >"$T_TMP/stale-rules.yaml" <<'YAML'
bucket_definitions:
  all:
    data:
      - SELECT id, title, legacy FROM items
write_rules:
  items:
    operations: [update]
    columns: [id, title, legacy]
YAML
out=$("$FERRY_BIN" rules check "$T_TMP/stale-rules.yaml" --db "$W_DB" 2>&1)
expect_match "rules check --db warns about a data query's dropped column" 'warning: column "legacy" of table "public.items" does not exist in Postgres \(named by a data query of bucket definition "all"\)' "$out"
expect_match "and about the write rules'" 'warning: column "legacy" of table "public.items" does not exist in Postgres \(named by the write rules\)' "$out"
expect_match "the summary counts them" 'ok \(.*2 warnings\)' "$out"
out=$("$FERRY_BIN" rules check "$T_TMP/stale-rules.yaml" 2>&1)
expect_match "without --db: no such warnings" 'ok \(.*0 warnings\)' "$out"
write_finish
