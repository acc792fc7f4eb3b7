#!/usr/bin/env bash
# 93_security_demo.sh -- the demo's rules hold against a cross-tenant writer; rules check warns
#
# With the demo's schema and rules (deploy/demo/), bob (organisation acme) tries what broke the
# old demo rules: plant a todo in globex's bucket posing as carol, move acme's t4 into globex,
# write in someone else's name. Every attempt is rejected, Postgres is untouched, carol receives
# none of it and acme keeps t4, while bob's ordinary writes (a todo of his own, completing
# alice's todo in their shared list) still apply. An update or delete of another tenant's row
# is answered exactly like one of a row that does not exist. `ferry rules check` passes the
# shipped rules without a warning and warns, at the column, on the unsafe pattern (a writable
# column that decides buckets or feeds a parameter query, ignored by "check"), in bucket
# definitions and in an edition-3 file's streams alike.
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"

W_DB=$(new_db sec93)
drop_at_exit sec93
psql -q -v ON_ERROR_STOP=1 "$W_DB" -f "$T_ROOT/deploy/demo/schema.sql" >/dev/null
cat "$T_ROOT/deploy/demo/sync-rules.yaml" "$T_ROOT/deploy/demo/write-rules.yaml" >"$T_TMP/sync-rules.yaml"

# ---- rules check ----
out=$("$FERRY_BIN" rules check "$T_TMP/sync-rules.yaml" 2>&1)
expect_match "the shipped demo rules pass without a warning" ': ok \(edition 1, 7 bucket definitions, .*, 0 warnings\)$' "$out"
cat >"$T_TMP/unsafe.yaml" <<'YAML'
bucket_definitions:
  org_lists:
    parameters: SELECT org_id FROM members WHERE user_id = request.user_id()
    data:
      - SELECT id, org_id, name FROM lists WHERE org_id = bucket.org_id
  org_todos:
    parameters: SELECT org_id FROM members WHERE user_id = request.user_id()
    data:
      - SELECT id, list_id, description FROM todos WHERE org_id = bucket.org_id
write_rules:
  todos:
    operations: [insert, update, delete]
    columns: [id, list_id, org_id, description, completed, created_by]
    check: "new.list_id IN (SELECT id FROM lists WHERE owner_id = request.user_id()
              OR org_id IN (SELECT org_id FROM members WHERE user_id = request.user_id()))"
    check_old: "old.list_id IN (SELECT id FROM lists WHERE owner_id = request.user_id()
              OR org_id IN (SELECT org_id FROM members WHERE user_id = request.user_id()))"
  members:
    operations: [insert]
    columns: [id, org_id, user_id]
    check: "new.user_id = request.user_id()"
YAML
out=$("$FERRY_BIN" rules check "$T_TMP/unsafe.yaml" 2>&1); rc=$?
expect_eq "warnings do not fail the check" "0" "$rc"
expect_match "the old demo pattern: a warning at the org_id column" \
  "unsafe.yaml:13:28: warning: column \"org_id\" of table \"todos\" is writable and decides the buckets of bucket definition \"org_todos\", but \"check\" does not mention new.org_id" "$out"
expect_match "a writable column a parameter query reads: a warning too" \
  "unsafe.yaml:20:19: warning: column \"org_id\" of table \"members\" is writable and feeds a parameter query of bucket definition \"org_lists\"" "$out"
expect_match "columns the check mentions are not reported" ', 2 warnings\)$' "$out"
# the same mistake in an edition-3 file, which has only streams: a subquery decides the bucket
cat >"$T_TMP/unsafe3.yaml" <<'YAML'
config:
  edition: 3
streams:
  org_todos:
    auto_subscribe: true
    query: SELECT * FROM todos WHERE org_id IN (SELECT org_id FROM members WHERE user_id = auth.user_id())
  my_lists:
    query: SELECT lists.* FROM lists JOIN members ON members.org_id = lists.org_id WHERE members.user_id = auth.user_id()
write_rules:
  todos:
    operations: [insert, update, delete]
    columns: [id, list_id, org_id, description, completed, created_by]
    check: "new.list_id IN (SELECT id FROM lists WHERE org_id IN (SELECT org_id FROM members WHERE user_id = request.user_id()))"
  members:
    operations: [insert]
    columns: [id, org_id, user_id]
    check: "new.user_id = request.user_id()"
YAML
out=$("$FERRY_BIN" rules check "$T_TMP/unsafe3.yaml" 2>&1); rc=$?
expect_eq "edition 3: warnings do not fail the check" "0" "$rc"
expect_match "edition 3: a warning at the org_id column that picks the stream's bucket" \
  "unsafe3.yaml:12:28: warning: column \"org_id\" of table \"todos\" is writable and decides the buckets of stream \"org_todos\", but \"check\" does not mention new.org_id" "$out"
expect_match "edition 3: a writable column a stream's lookup reads: a warning too" \
  "unsafe3.yaml:16:19: warning: column \"org_id\" of table \"members\" is writable and feeds a lookup \(subquery or join\) of stream \"org_todos\"" "$out"
expect_match "edition 3: columns the check mentions are not reported" ', 2 warnings\)$' "$out"

# ---- bob against the demo's rules ----
W_PORT=$(free_port)
W_CFG=$T_TMP/ferry.yaml
W_URL=http://127.0.0.1:$W_PORT
replication_config "$W_CFG" "$W_PORT" "$W_DB"
sed -i 's/^log_level: info/log_level: debug/' "$W_CFG"
start_ferry "$W_CFG" || exit 1
wait_ready "$W_PORT" 30 || { fail "ferry becomes ready" "$(tail -5 "$FERRY_LOG")"; exit 1; }
expect_eq "ferry logs no rules warning for the demo" "" "$(grep 'level=warn mod=rules' "$FERRY_LOG")"
bob=$(write_token bob)
alice=$(write_token alice)
carol=$(write_token carol)
todo() { # OP_ID OP ID DATA
  printf '{"op_id":%s,"op":"%s","type":"todos","id":"%s"%s}' "$1" "$2" "$3" "${4:+,\"data\":$4}"
}
r=$(write_post "$bob" "{\"client_id\":\"bob-1\",\"batch\":[
 $(todo 1 PUT x1 '{"list_id":"l-acme","org_id":"globex","description":"planted","completed":false,"created_by":"carol"}'),
 $(todo 2 PUT x2 '{"list_id":"l-globex","org_id":"globex","description":"planted","completed":false,"created_by":"bob"}'),
 $(todo 3 PATCH t4 '{"org_id":"globex"}'),
 $(todo 4 PATCH t4 '{"list_id":"l-globex","org_id":"globex"}'),
 $(todo 5 PUT x3 '{"list_id":"l-acme","org_id":"acme","description":"in alice'"'"'s name","completed":false,"created_by":"alice"}'),
 $(todo 6 PATCH t5 '{"created_by":"alice"}'),
 $(todo 7 PUT x4 '{"list_id":"l-acme","org_id":"acme","description":"bob'"'"'s own","completed":false,"created_by":"bob"}'),
 $(todo 8 PATCH t4 '{"completed":true}')
]}")
expect_match "the batch answers 200" '^200 ' "$r"
expect_match "a todo in acme's list posing as carol in globex's bucket: check_failed" '"op_id":1,"status":"rejected","code":"check_failed"' "$r"
expect_match "a todo in globex's list: check_failed" '"op_id":2,"status":"rejected","code":"check_failed"' "$r"
expect_match "moving t4 to globex's bucket: check_failed" '"op_id":3,"status":"rejected","code":"check_failed"' "$r"
expect_match "moving t4 to globex's list and bucket: check_failed" '"op_id":4,"status":"rejected","code":"check_failed"' "$r"
expect_match "a new todo in alice's name: check_failed" '"op_id":5,"status":"rejected","code":"check_failed"' "$r"
expect_match "renaming the author of his own todo: check_failed" '"op_id":6,"status":"rejected","code":"check_failed"' "$r"
expect_match "bob's own todo in the shared list: applied" '"op_id":7,"status":"applied"' "$r"
expect_match "completing alice's todo in the shared list: applied" '"op_id":8,"status":"applied"' "$r"
expect_eq "Postgres: t4 still acme's, done, alice's" "l-acme|acme|true|alice" \
  "$(sql "SELECT list_id || '|' || org_id || '|' || completed || '|' || created_by FROM todos WHERE id = 't4'")"
expect_eq "Postgres: t5 still bob's" "bob" "$(sql "SELECT created_by FROM todos WHERE id = 't5'")"
expect_eq "Postgres: globex has only its own todo" "t6" "$(sql "SELECT string_agg(id, ' ') FROM todos WHERE org_id = 'globex'")"
expect_eq "Postgres: none of the planted rows" "x4" "$(sql "SELECT string_agg(id, ' ' ORDER BY id) FROM todos WHERE id LIKE 'x%'")"

# ---- another tenant's row answers like a missing one ----
r=$(write_post "$bob" "{\"client_id\":\"bob-2\",\"batch\":[
 $(todo 1 PATCH t6 '{"description":"x"}'), $(todo 2 PATCH no-such-todo '{"description":"x"}'),
 $(todo 3 DELETE t6), $(todo 4 DELETE no-such-todo)]}")
ans() { grep -o "\"op_id\":$1,[^}]*}" <<<"$r" | sed "s/\"op_id\":$1,//"; }
expect_match "an update of globex's t6 is refused" '"status":"rejected","code":"check_old_failed"' "$(ans 1)"
expect_eq "an update of a missing id gets the same answer" "$(ans 1)" "$(ans 2)"
expect_eq "a delete of globex's t6 and of a missing id: the same answer" "$(ans 3)" "$(ans 4)"
expect_eq "t6 untouched" "Check the books" "$(sql "SELECT description FROM todos WHERE id = 't6'")"
expect_match "ferry's own debug log keeps the difference" 'msg="op not applied" client="bob-2" op_id=2 status=rejected code=check_old_failed reason=not_found' "$(cat "$FERRY_LOG")"

# ---- what each user receives ----
converged "$W_CFG" 30 || fail "storage converges" "$(head -5 "$T_TMP/converge.diff")"
stream_of() { curl -s -N -m 3 -X POST -H "Authorization: Bearer $1" -d "{\"client_id\":\"$2\"}" "$W_URL/sync/stream" || true; }
carol_out=$(stream_of "$carol" c1)
alice_out=$(stream_of "$alice" a1)
expect_match "carol receives globex's t6" '"object_type":"todos","object_id":"t6"' "$carol_out"
expect_eq "carol receives none of bob's rows" "" "$(grep -oE '"object_id":"(x[0-9]|t4|t5)"' <<<"$carol_out")"
expect_match "alice still receives t4, completed" '"object_id":"t4"[^}]*\\"completed\\":1' "$alice_out"
expect_match "and bob's own todo" '"object_type":"todos","object_id":"x4"' "$alice_out"
# naming globex's bucket in the request gives bob nothing of it
bob_out=$(curl -s -N -m 3 -X POST -H "Authorization: Bearer $bob" \
  -d '{"client_id":"b3","buckets":[{"name":"1#org_todos[\"globex\"]","after":"0"}]}' "$W_URL/sync/stream" || true)
expect_eq "bob's request for globex's bucket is ignored" "0" "$(grep -c 'globex' <<<"$bob_out")"
write_finish
