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
  definition org_data  parameter query 0: SELECT org_id FROM org_members WHERE user_id = request.user_id()  lookup org_data/1[\"u1\"]
  definition org_admin  parameter query 0: SELECT org_id FROM org_members WHERE user_id = request.user_id() AND role = 'admin' AND since < '2024-01-01'  lookup org_admin/1[\"u1\"]" "$out"

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

# ---- Sync Streams: check lists each stream's bucket kinds; explain shows, per default stream and
# per --subscribe subscription, its buckets and why (lookups answered from Postgres)
srules=$T_TMP/streams.yaml
cat >"$srules" <<'YAML'
config:
  edition: 3
streams:
  my_lists:
    auto_subscribe: true
    query: SELECT * FROM lists WHERE owner_id = auth.user_id()
  list_todos:
    priority: 2
    query: |
      SELECT * FROM todos WHERE list_id = subscription.parameter('list_id')
        AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())
  by_ids:
    query: SELECT * FROM todos WHERE id IN subscription.parameter('ids') AND auth.parameter('admin') = true
YAML
out=$("$FERRY_BIN" rules check "$srules" 2>&1); rc=$?
expect_eq "check streams: exits 0" 0 "$rc"
expect_eq "check streams: each stream with its bucket kinds and what they are keyed by" "$srules:13:44: warning: clients can send any value for this parameter, so it does not authorize anything; also compare with an authenticated value (auth.user_id(), auth.parameter(...)), or set \"accept_potentially_dangerous_queries: true\"
stream my_lists (default, priority 3):
  my_lists|0 from query 0: rows of lists by owner_id = auth.user_id()
stream list_todos (on subscription, priority 2, reads subscription parameters):
  list_todos|0 from query 0: rows of todos by list_id = subscription.parameter('list_id') when also lookup 0; lookup 0: id from lists where owner_id = auth.user_id()
stream by_ids (on subscription, priority 3, reads subscription parameters):
  by_ids|0 from query 0: rows of todos by id = each value of json_each(subscription.parameter('ids')); if auth.parameter('admin') = true
$srules: ok (edition 3, 0 bucket definitions, 3 streams, 2 tables, 0 write rules, 0 constraints, 1 warning)" "$out"
psql -q "$uri" >/dev/null <<'SQL'
CREATE TABLE lists (id text PRIMARY KEY, owner_id text, name text);
INSERT INTO lists VALUES ('l1', 'u1', 'a'), ('l2', 'u1', 'b'), ('l3', 'u2', 'c');
SQL
stok="$(printf '{"alg":"HS256","typ":"JWT"}' | b64url).$(printf '{"sub":"u1","admin":true}' | b64url).x"
out=$("$FERRY_BIN" rules explain "$srules" --token "$stok" --db "$uri" --subscribe 'list_todos:{"list_id":"l1"}' \
  --subscribe 'list_todos:{"list_id":"l3"}' --subscribe 'by_ids:{"ids":["t1","t2"]}' --subscribe 'nope:{}' \
  --subscribe 'by_ids:[1]' 2>&1); rc=$?
expect_eq "explain --subscribe: exits 0" 0 "$rc"
expect_eq "explain --subscribe: per subscription its buckets and why, or its error" "token: NOT verified (claims read without checking the signature; pass --config to verify)
user_id: u1
rule version: 1
streams:
  default stream my_lists:
    1#my_lists|0[\"u1\"]  priority 3
      because: my_lists|0 from query 0: rows of lists by owner_id = auth.user_id()
  subscription 0: list_todos {\"list_id\":\"l1\"}:
    1#list_todos|0[\"l1\"]  priority 2
      because: list_todos|0 from query 0: rows of todos by list_id = subscription.parameter('list_id') when also lookup 0; lookup 0: id from lists where owner_id = auth.user_id()
  subscription 1: list_todos {\"list_id\":\"l3\"}:
    no buckets
  subscription 2: by_ids {\"ids\":[\"t1\",\"t2\"]}:
    1#by_ids|0[\"t1\"]  priority 3
      because: by_ids|0 from query 0: rows of todos by id = each value of json_each(subscription.parameter('ids')); if auth.parameter('admin') = true
    1#by_ids|0[\"t2\"]  priority 3
      because: by_ids|0 from query 0: rows of todos by id = each value of json_each(subscription.parameter('ids')); if auth.parameter('admin') = true
  subscription 3: nope {}:
    error: stream \"nope\" is not defined in the sync rules
  subscription 4: by_ids [1]:
    error: the subscription's parameters must be a JSON object
buckets: 4
  1#my_lists|0[\"u1\"]  priority 3  stream my_lists  query 0: SELECT * FROM lists WHERE owner_id = auth.user_id()
  1#list_todos|0[\"l1\"]  priority 2  stream list_todos  query 0: SELECT * FROM todos WHERE list_id = subscription.parameter('list_id') AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())
  1#by_ids|0[\"t1\"]  priority 3  stream by_ids  query 0: SELECT * FROM todos WHERE id IN subscription.parameter('ids') AND auth.parameter('admin') = true
  1#by_ids|0[\"t2\"]  priority 3  stream by_ids  query 0: SELECT * FROM todos WHERE id IN subscription.parameter('ids') AND auth.parameter('admin') = true" "$out"
out=$("$FERRY_BIN" rules explain "$srules" --token "$stok" --no-defaults --subscribe 'list_todos:{"list_id":"l1"}' 2>&1)
expect_eq "explain --no-defaults without --db: no default streams; the subscription waits for its lookup" "streams:
  subscription 0: list_todos {\"list_id\":\"l1\"}:
    no buckets yet: its table lookups are unresolved (pass --db)
buckets: 0
unresolved (table lookups; pass --db to answer them): 1
  stream list_todos  query 0: SELECT * FROM todos WHERE list_id = subscription.parameter('list_id') AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())  lookup lookup/0[\"u1\"]" "$(echo "$out" | sed -n '/^streams:/,$p')"
