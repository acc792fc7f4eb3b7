#!/usr/bin/env bash
# 10_rules_cli.sh -- `ferry rules check` and `ferry rules explain` against a real Postgres
#
# check: exact diagnostics and exit codes. explain: the buckets of a token, unverified and
# verified (--config), with table lookups unresolved (no --db) and answered from Postgres
# (--db), where the lookup table's rows are read in text form like the replicator reads them.
source "$(dirname "$0")/../lib/testlib.sh"

rules=$T_TMP/sync-rules.yaml
cat >"$rules" <<'YAML'
bucket_definitions:
  org_data:
    parameters: SELECT org_id FROM org_members WHERE user_id = request.user_id()
    data:
      - SELECT id, name, org_id FROM projects WHERE org_id = bucket.org_id
  org_admin:
    priority: 1
    parameters: SELECT org_id FROM org_members WHERE user_id = request.user_id() AND role = 'admin' AND since < '2024-01-01'
    data:
      - SELECT id, amount FROM billing WHERE org_id = bucket.org_id
  teams:
    parameters: SELECT json_each.value AS team FROM json_each(request.jwt() -> 'teams')
    data:
      - SELECT id, title FROM docs WHERE team_id = bucket.team
YAML

out=$("$FERRY_BIN" rules check "$rules" 2>&1); rc=$?
expect_eq "check: valid file exits 0" "0" "$rc"
expect_eq "check: summary" "$rules: ok (edition 1, 3 bucket definitions, 4 tables, 0 write rules, 0 constraints, 0 warnings)" "$out"

bad=$T_TMP/bad.yaml
cat >"$bad" <<'YAML'
bucket_definitions:
  user_lists:
    parameters: SELECT request.user_id() AS user_id
    data:
      - SELECT id, uper(name) AS name FROM lists WHERE owner_id = bucket.user_id
      - SELECT * FROM todos LIMIT 5
YAML
out=$("$FERRY_BIN" rules check "$bad" 2>&1); rc=$?
expect_eq "check: invalid file exits 1" "1" "$rc"
expect_eq "check: exact diagnostics" "$bad:5:20: unknown function \"uper\" (did you mean \"upper\"?)
$bad:6:29: \"LIMIT\" is not supported in data queries
$bad: 2 errors, 0 warnings" "$out"

out=$("$FERRY_BIN" rules check "$T_TMP/missing.yaml" 2>&1); rc=$?
expect_eq "check: missing file exits 1" "1" "$rc"
expect_match "check: missing file says so" "could not open file: No such file or directory" "$out"
"$FERRY_BIN" rules check >/dev/null 2>&1; expect_eq "check: no file is a usage error" "2" "$?"
"$FERRY_BIN" rules frobnicate x >/dev/null 2>&1; expect_eq "unknown subcommand is a usage error" "2" "$?"

# a token: unsigned for explain's unverified mode
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
tok="$(printf '{"alg":"HS256","typ":"JWT"}' | b64url).$(printf '{"sub":"u1","teams":["t1","t2"]}' | b64url).x"

out=$("$FERRY_BIN" rules explain "$rules" --token "$tok" --rule-version 4 2>&1); rc=$?
expect_eq "explain: exits 0" "0" "$rc"
expect_eq "explain without --db: buckets and unresolved lookups" "token: NOT verified (claims read without checking the signature; pass --config to verify)
user_id: u1
rule version: 4
buckets: 2
  4#teams[\"t1\"]  priority 3  definition teams  parameter query 0: SELECT json_each.value AS team FROM json_each(request.jwt() -> 'teams')
  4#teams[\"t2\"]  priority 3  definition teams  parameter query 0: SELECT json_each.value AS team FROM json_each(request.jwt() -> 'teams')
unresolved (table lookups; pass --db to answer them): 2
  definition org_data  parameter query 0: SELECT org_id FROM org_members WHERE user_id = request.user_id()  lookup org_data/0[\"u1\"]
  definition org_admin  parameter query 0: SELECT org_id FROM org_members WHERE user_id = request.user_id() AND role = 'admin' AND since < '2024-01-01'  lookup org_admin/0[\"u1\"]" "$out"

# --db: lookups answered from Postgres (timestamptz compared as converted text)
uri=$(new_db rules_cli)
psql -q "$uri" >/dev/null <<'SQL'
CREATE TABLE org_members (user_id text, org_id text, role text, since timestamptz);
INSERT INTO org_members VALUES ('u1', 'o1', 'admin', '2023-05-01 10:00+02'),
  ('u1', 'o2', 'member', '2023-05-01 10:00+00'), ('u2', 'o3', 'admin', '2020-01-01'),
  ('u1', 'o4', 'admin', '2025-01-01 00:00+00');
SQL
out=$("$FERRY_BIN" rules explain "$rules" --token "$tok" --db "$uri" 2>&1); rc=$?
expect_eq "explain --db: exits 0" "0" "$rc"
expect_eq "explain --db: lookups answered" "token: NOT verified (claims read without checking the signature; pass --config to verify)
user_id: u1
rule version: 1
buckets: 6
  1#org_data[\"o1\"]  priority 3  definition org_data  parameter query 0: SELECT org_id FROM org_members WHERE user_id = request.user_id()
  1#org_data[\"o2\"]  priority 3  definition org_data  parameter query 0: SELECT org_id FROM org_members WHERE user_id = request.user_id()
  1#org_data[\"o4\"]  priority 3  definition org_data  parameter query 0: SELECT org_id FROM org_members WHERE user_id = request.user_id()
  1#org_admin[\"o1\"]  priority 1  definition org_admin  parameter query 0: SELECT org_id FROM org_members WHERE user_id = request.user_id() AND role = 'admin' AND since < '2024-01-01'
  1#teams[\"t1\"]  priority 3  definition teams  parameter query 0: SELECT json_each.value AS team FROM json_each(request.jwt() -> 'teams')
  1#teams[\"t2\"]  priority 3  definition teams  parameter query 0: SELECT json_each.value AS team FROM json_each(request.jwt() -> 'teams')" "$out"

out=$("$FERRY_BIN" rules explain "$rules" --token "$tok" --db "postgresql://127.0.0.1:1/none" 2>&1); rc=$?
expect_eq "explain --db unreachable exits 1" "1" "$rc"
expect_match "explain --db unreachable says so" "could not connect to the database" "$out"

# --config: the signature is checked with the configured keys
cfg=$T_TMP/ferry.yaml
write_config "$cfg" "$(free_port)"
good=$("$FERRY_BIN" token --config "$cfg" --sub u9 --claim 'teams=["x"]' 2>/dev/null)
if [ -n "$good" ]; then
  out=$("$FERRY_BIN" rules explain "$rules" --token "$good" --config "$cfg" 2>&1); rc=$?
  expect_eq "explain --config: valid token exits 0" "0" "$rc"
  expect_match "explain --config: says verified" "^token: signature and claims verified with the keys of " "$out"
  expect_match "explain --config: buckets of the verified claims" '1#teams\["x"\]  priority 3' "$out"
  forged="${good%.*}.AAAA${good##*.}"
  out=$("$FERRY_BIN" rules explain "$rules" --token "$forged" --config "$cfg" 2>&1); rc=$?
  expect_eq "explain --config: forged token exits 1" "1" "$rc"
  expect_match "explain --config: forged token rejected" "token rejected" "$out"
else
  fail "explain --config" "ferry token produced no token"
fi
"$FERRY_BIN" rules explain "$rules" >/dev/null 2>&1; expect_eq "explain: no --token is a usage error" "2" "$?"
