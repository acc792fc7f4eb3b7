#!/usr/bin/env bash
# 11_rules_pg_values.sh -- Postgres text values through the rules library, end to end
#
# Rows of a table with one column per interesting type are read from a real Postgres (with the
# session settings the gateway pins) by `ferry rules explain --db`; a table-lookup parameter
# query outputs each column, so the bucket ids show the converted values (spec §4.7), in the
# legacy (edition 1) and ISO (edition 2) timestamp formats. This checks our assumptions about
# the text Postgres sends, not only our conversion code.
source "$(dirname "$0")/../lib/testlib.sh"

uri=$(new_db rules_values)
psql -q "$uri" >/dev/null <<'SQL'
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE vals (user_id text, k text, i8 int8, f8 float8, f4 float4, num numeric, b bool,
  ts timestamp, tstz timestamptz, d date, t time, iv interval, u uuid, j jsonb, arr text[],
  iarr int4[], m mood, by bytea);
SET TimeZone = 'Europe/Berlin';
INSERT INTO vals VALUES ('u1', 'a', 9007199254740993, 314, 1.5, 18014398509481982123.50, true,
  '2023-03-06 15:47:12.4', '2023-03-06 15:47:00.12345+02', 'infinity', '17:42:01.12', '1 hour',
  '6ba7b810-9dad-11d1-80b4-00c04fd430c8', '{"b": [true, null], "a": 1}', '{x,"y z",NULL}',
  '{{1,2},{3,4}}', 'happy', '\x01ff');
SQL

tok="$(printf '{"alg":"none"}' | openssl base64 -A | tr '+/' '-_' | tr -d '=').$(printf '{"sub":"u1"}' | openssl base64 -A | tr '+/' '-_' | tr -d '=')."

# explain CONFIG_YAML: the bucket ids of user u1 for two definitions outputting the columns
# (at most 8 bucket parameters per definition)
explain() {
  local rules=$T_TMP/rules.$RANDOM.yaml
  local c1="i8 f8 f4 num b ts tstz d" c2="t iv u j arr iarr m by" w1="" w2="" c
  for c in $c1; do w1="$w1${w1:+ AND }$c = bucket.$c"; done
  for c in $c2; do w2="$w2${w2:+ AND }$c = bucket.$c"; done
  cat >"$rules" <<YAML
$1
bucket_definitions:
  v1:
    parameters: SELECT ${c1// /, } FROM vals WHERE user_id = request.user_id()
    data:
      - SELECT id FROM x WHERE $w1
  v2:
    parameters: SELECT ${c2// /, } FROM vals WHERE user_id = request.user_id()
    data:
      - SELECT id FROM x WHERE $w2
YAML
  "$FERRY_BIN" rules explain "$rules" --token "$tok" --db "$uri" --rule-version 2 2>&1 |
    tee "$T_TMP/explain.out" | sed -n 's/^  \(2#v[12]\[.*\]\)  priority.*/\1/p'
}

want='2#v1[9007199254740993,314,1.5,"18014398509481982123.50",1,"2023-03-06 15:47:12.4","2023-03-06 13:47:00.12345Z","9999-12-31"]
2#v2["17:42:01.12","01:00:00","6ba7b810-9dad-11d1-80b4-00c04fd430c8","{\"a\": 1, \"b\": [true, null]}","[\"x\",\"y z\",null]","[[1,2],[3,4]]","happy",null]'
expect_eq "legacy formats (edition 1)" "$want" "$(explain '')"

want='2#v1[9007199254740993,314,1.5,"18014398509481982123.50",1,"2023-03-06T15:47:12.400000","2023-03-06T13:47:00.123450Z","9999-12-31"]
2#v2["17:42:01.120000","01:00:00","6ba7b810-9dad-11d1-80b4-00c04fd430c8","{\"a\": 1, \"b\": [true, null]}","[\"x\",\"y z\",null]","[[1,2],[3,4]]","happy",null]'
expect_eq "ISO 8601 formats (edition 2)" "$want" "$(explain $'config:\n  edition: 2')"
