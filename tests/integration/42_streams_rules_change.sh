#!/usr/bin/env bash
# 42_streams_rules_change.sh -- rule version builds and switches with Sync Streams files
#
# 1. ferry serves bucket definitions (edition 1); a live stream subscribes to a stream those rules
#    do not have (its `streams` lists the error); a request with `"include_defaults": false` gets
#    none of the legacy buckets, the same request without it gets them. The file changes to
#    edition 3 streams (a subquery stream, a JOIN stream, a default stream) while rows are
#    written: version 2 is built beside version 1 and takes over; storage equals the oracle of
#    the new rules; the live stream gets a full `checkpoint` with the new `streams` (the
#    subscription now resolves, without error) and the subscribed list's rows, its checkpoint ids
#    never decreasing.
# 2. The parameter lookups of version 2 follow changes: a new membership row adds the JOIN
#    stream's bucket to the live stream, a list moved to another owner takes the subscription's
#    bucket away.
# 3. A stream query changes but the streams stay the same: version 3 takes over and the live
#    stream moves with an ordinary `checkpoint_diff` (3# buckets updated, 2# removed).
# 4. ferry restarts: version 3's stream rules and lookups are read back; a new stream gets the
#    same buckets, and storage still equals the oracle.
source "$(dirname "$0")/../lib/testlib.sh"

db=$(new_db streams42)
psql -q "$db" <<'SQL'
CREATE TABLE lists (id text PRIMARY KEY, owner_id text, name text);
CREATE TABLE todos (id text PRIMARY KEY, list_id text, description text);
CREATE TABLE members (id text PRIMARY KEY, org_id text, user_id text);
CREATE TABLE docs (id text PRIMARY KEY, org_id text, title text);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO lists VALUES ('l1', 'u1', 'Groceries'), ('l2', 'u1', 'Work'), ('l3', 'u2', 'Other');
INSERT INTO todos SELECT 't' || i, 'l' || (1 + i % 3), 'todo ' || i FROM generate_series(1, 300) i;
INSERT INTO members VALUES ('m1', 'acme', 'u1');
INSERT INTO docs SELECT 'd' || i, CASE WHEN i % 2 = 0 THEN 'acme' ELSE 'globex' END, 'doc ' || i FROM generate_series(1, 20) i;
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  user_lists:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT * FROM todos WHERE list_id = bucket.list_id
YAML
port=$(free_port)
base="http://127.0.0.1:$port"
SLOT_PREFIX=streams42 replication_config "$T_TMP/ferry.yaml" "$port" "$db"
cat >>"$T_TMP/ferry.yaml" <<'YAML'
admin:
  token: "admin-token-for-the-streams-rules-test"
YAML
diag() { curl -s -H "Authorization: Bearer admin-token-for-the-streams-rules-test" "$base/api/admin/diagnostics"; }
wait_version() {
  local i; for ((i = 0; i < $2 * 10; i++)); do
    [ "$(diag | jq -r .data.rules_version)" = "$1" ] && return 0; sleep 0.1
  done; return 1; }
put_rules() { cat >"$T_TMP/rules.new" && mv "$T_TMP/rules.new" "$T_TMP/sync-rules.yaml"; }
# checkpoints FILE: every checkpoint line of a stream, compact: kind, buckets (sorted, without
# checksums and counts) and streams
checkpoints() {
  python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try: m = json.loads(line)
    except ValueError: continue
    for kind in ("checkpoint", "checkpoint_diff"):
        if kind not in m: continue
        c = m[kind]
        bs = c.get("buckets", c.get("updated_buckets", []))
        for b in bs: b.pop("checksum", None); b.pop("count", None)
        bs.sort(key=lambda b: b["bucket"])
        out = {"kind": kind, "buckets": bs}
        if "removed_buckets" in c: out["removed"] = sorted(c["removed_buckets"])
        if "streams" in c: out["streams"] = c["streams"]
        print(json.dumps(out, separators=(",", ":")))' "$1"
}
# wait_line FILE PATTERN SECONDS: until a line of FILE matches
wait_line() {
  local i; for ((i = 0; i < $3 * 10; i++)); do grep -q -- "$2" "$1" && return 0; sleep 0.1; done; return 1; }

start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 30 || { fail "ready" "not ready"; exit 1; }
converged "$T_TMP/ferry.yaml" 20 && pass "version 1 (bucket definitions) equals the oracle" || fail "version 1" "$(head -3 "$T_TMP/converge.diff")"

# ---- 1. bucket definitions -> streams while a stream is open and rows are written ----
tok=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub u1)
body='{"buckets":[],"client_id":"c1","streams":{"include_defaults":true,"subscriptions":[{"stream":"list_todos","parameters":{"list_id":"l1"},"override_priority":null}]}}'
timeout 90 curl -sN -X POST "$base/sync/stream" -H "Authorization: Token $tok" \
  -H 'content-type: application/json' -d "$body" >"$T_TMP/live.ndjson" &
curl_pid=$!
T_PIDS+=("$curl_pid")
wait_line "$T_TMP/live.ndjson" checkpoint_complete 20 || fail "first checkpoint" "$(head -c 300 "$T_TMP/live.ndjson")"
expect_eq "version 1: the legacy definition is a default stream; the subscription to a stream those rules lack is an error" \
  '{"kind":"checkpoint","buckets":[{"bucket":"1#user_lists[\"l1\"]","priority":3,"subscriptions":[{"default":0}]},{"bucket":"1#user_lists[\"l2\"]","priority":3,"subscriptions":[{"default":0}]}],"streams":[{"name":"user_lists","is_default":true,"errors":[]},{"name":"list_todos","is_default":false,"errors":[{"subscription":0,"message":"stream \"list_todos\" is not defined in the sync rules"}]}]}' \
  "$(checkpoints "$T_TMP/live.ndjson" | head -1)"
# the legacy definitions are default streams: "include_defaults": false drops them, and the same
# request without that key gets them
stream_once "$base" "$tok" '{"buckets":[],"client_id":"c2","streams":{"include_defaults":false,"subscriptions":[]}}' >"$T_TMP/nodefaults.ndjson"
expect_eq "version 1: include_defaults false gets none of the legacy buckets" \
  '{"kind":"checkpoint","buckets":[],"streams":[]}' \
  "$(checkpoints "$T_TMP/nodefaults.ndjson" | head -1)"
stream_once "$base" "$tok" '{"buckets":[],"client_id":"c2","streams":{"subscriptions":[]}}' >"$T_TMP/defaults.ndjson"
expect_eq "version 1: the same request without include_defaults gets them" \
  '{"kind":"checkpoint","buckets":[{"bucket":"1#user_lists[\"l1\"]","priority":3,"subscriptions":[{"default":0}]},{"bucket":"1#user_lists[\"l2\"]","priority":3,"subscriptions":[{"default":0}]}],"streams":[{"name":"user_lists","is_default":true,"errors":[]}]}' \
  "$(checkpoints "$T_TMP/defaults.ndjson" | head -1)"
put_rules <<'YAML'
config:
  edition: 3
streams:
  my_lists:
    auto_subscribe: true
    query: SELECT * FROM lists WHERE owner_id = auth.user_id()
  list_todos:
    query: |
      SELECT * FROM todos WHERE list_id = subscription.parameter('list_id')
        AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())
  org_docs:
    auto_subscribe: true
    query: SELECT docs.* FROM docs JOIN members ON members.org_id = docs.org_id WHERE members.user_id = auth.user_id()
YAML
( for n in $(seq 1 30); do psql -q "$db" -c "INSERT INTO todos VALUES ('w$n', 'l1', 'during the build')"; sleep 0.05; done ) &
writer=$!
wait_version 2 60 && pass "version 2 (streams) takes over while ferry runs" || fail "version 2 takes over" "$(diag)"
wait "$writer"
converged "$T_TMP/ferry.yaml" 30 && pass "storage equals the oracle of the stream rules, rows written during the build included" || fail "version 2 equals the oracle" "$(head -3 "$T_TMP/converge.diff")"
expect_eq "every served bucket carries the new version" "" "$(grep -v '"bucket":"2#' "$T_TMP/dump.txt" | head -2)"
wait_line "$T_TMP/live.ndjson" '"2#list_todos' 30
full=$(checkpoints "$T_TMP/live.ndjson" | grep '"2#' | head -1)
# (the subquery and the equality on list_id both ask for subscription 0: the reference lists it
# once per condition)
expect_eq "the live stream gets a full checkpoint with the new streams: the subscription resolves" \
  '{"kind":"checkpoint","buckets":[{"bucket":"2#list_todos|0[\"l1\"]","priority":3,"subscriptions":[{"sub":0},{"sub":0}]},{"bucket":"2#my_lists|0[\"u1\"]","priority":3,"subscriptions":[{"default":0}]},{"bucket":"2#org_docs|0[\"acme\"]","priority":3,"subscriptions":[{"default":2}]}],"streams":[{"name":"my_lists","is_default":true,"errors":[]},{"name":"list_todos","is_default":false,"errors":[]},{"name":"org_docs","is_default":true,"errors":[]}]}' \
  "$full"
for ((i = 0; i < 100; i++)); do sed -n '/"2#list_todos/,$p' "$T_TMP/live.ndjson" | grep -q checkpoint_complete && break; sleep 0.1; done
got=$(sed -n '/"2#list_todos/,$p' "$T_TMP/live.ndjson" | grep -o '"object_id":"w[0-9]*"' | sort -u | wc -l)
expect_eq "its rows follow, the ones written during the build included" 30 "$got"
ids=$(grep -o '"last_op_id":"[0-9]*"' "$T_TMP/live.ndjson" | grep -o '[0-9]*')
expect_eq "the stream's checkpoint ids never decrease" "$(echo "$ids" | sort -n)" "$ids"

# ---- 2. version 2's lookups follow changes ----
psql -q "$db" -c "INSERT INTO members VALUES ('m2', 'globex', 'u1')"
wait_line "$T_TMP/live.ndjson" '"bucket":"2#org_docs|0\[\\"globex\\"\]"' 20
expect_match "a new membership adds the JOIN stream's bucket live" \
  '"kind":"checkpoint_diff","buckets":\[\{"bucket":"2#org_docs\|0\[\\"globex\\"\]","priority":3,"subscriptions":\[\{"default":2\}\]\}\]' \
  "$(checkpoints "$T_TMP/live.ndjson" | grep globex | head -1)"
psql -q "$db" -c "UPDATE lists SET owner_id = 'u2' WHERE id = 'l1'"
wait_line "$T_TMP/live.ndjson" '"removed_buckets":\["2#list_todos' 20
expect_match "a list moved to another owner takes the subscription's bucket away" \
  '"kind":"checkpoint_diff","buckets":\[\{"bucket":"2#my_lists\|0\[\\"u1\\"\]"[^[]*\[\{"default":0\}\]\}\],"removed":\["2#list_todos\|0\[\\"l1\\"\]"\]' \
  "$(checkpoints "$T_TMP/live.ndjson" | grep '"removed":\["2#list_todos' | head -1)"
psql -q "$db" -c "UPDATE lists SET owner_id = 'u1' WHERE id = 'l1'"
back() { checkpoints "$T_TMP/live.ndjson" | sed -n '/"removed":\["2#list_todos/,$p' | tail -n +2 | grep -q '"bucket":"2#list_todos'; }
for ((i = 0; i < 200; i++)); do back && break; sleep 0.1; done
back && pass "and back: the bucket returns" || fail "bucket returns" "$(tail -3 "$T_TMP/live.ndjson")"

# ---- 3. a changed query, the same streams: a checkpoint_diff ----
put_rules <<'YAML'
config:
  edition: 3
streams:
  my_lists:
    auto_subscribe: true
    query: SELECT * FROM lists WHERE owner_id = auth.user_id()
  list_todos:
    query: |
      SELECT id, list_id, upper(description) AS description FROM todos
      WHERE list_id = subscription.parameter('list_id')
        AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())
  org_docs:
    auto_subscribe: true
    query: SELECT docs.* FROM docs JOIN members ON members.org_id = docs.org_id WHERE members.user_id = auth.user_id()
YAML
wait_version 3 60 && pass "version 3 takes over" || fail "version 3 takes over" "$(diag)"
wait_line "$T_TMP/live.ndjson" '"3#list_todos' 30
expect_match "the streams did not change: the live stream moves with a checkpoint_diff" \
  '^\{"kind":"checkpoint_diff","buckets":\[\{"bucket":"3#list_todos\|0\[\\"l1\\"\]".*"3#my_lists.*"3#org_docs\|0\[\\"acme\\"\]".*"3#org_docs\|0\[\\"globex\\"\]".*"removed":\["2#list_todos' \
  "$(checkpoints "$T_TMP/live.ndjson" | grep '"3#' | head -1)"
wait_line "$T_TMP/live.ndjson" 'DURING THE BUILD' 20 && pass "and gets the new version's rows" || fail "new rows" "none"
expect_eq "one full checkpoint per change of streams, no more" 2 "$(checkpoints "$T_TMP/live.ndjson" | grep -c '"kind":"checkpoint"')"
kill "$curl_pid" 2>/dev/null; wait "$curl_pid" 2>/dev/null
converged "$T_TMP/ferry.yaml" 30 && pass "version 3 equals the oracle" || fail "version 3 equals the oracle" "$(head -3 "$T_TMP/converge.diff")"

# ---- 4. restart ----
stop_pid "$FERRY_PID" 10
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 30 || fail "ready after restart" "$(curl -s "$base/probes/readiness")"
expect_eq "after a restart version 3 serves" 3 "$(diag | jq -r .data.rules_version)"
timeout 3 curl -sN -X POST "$base/sync/stream" -H "Authorization: Token $tok" \
  -H 'content-type: application/json' -d "$body" >"$T_TMP/again.ndjson"
expect_eq "a new stream gets the same buckets from the stored lookups" \
  '{"kind":"checkpoint","buckets":[{"bucket":"3#list_todos|0[\"l1\"]","priority":3,"subscriptions":[{"sub":0},{"sub":0}]},{"bucket":"3#my_lists|0[\"u1\"]","priority":3,"subscriptions":[{"default":0}]},{"bucket":"3#org_docs|0[\"acme\"]","priority":3,"subscriptions":[{"default":2}]},{"bucket":"3#org_docs|0[\"globex\"]","priority":3,"subscriptions":[{"default":2}]}],"streams":[{"name":"my_lists","is_default":true,"errors":[]},{"name":"list_todos","is_default":false,"errors":[]},{"name":"org_docs","is_default":true,"errors":[]}]}' \
  "$(checkpoints "$T_TMP/again.ndjson" | head -1)"
psql -q "$db" -c "DELETE FROM members WHERE id = 'm2'; INSERT INTO todos VALUES ('after', 'l1', 'after the restart')"
converged "$T_TMP/ferry.yaml" 20 && pass "after the restart storage still equals the oracle" || fail "oracle after restart" "$(head -3 "$T_TMP/converge.diff")"
checksums_ok "$T_TMP/ferry.yaml" && pass "checksums equal the sum of ops" || fail "checksums" mismatch
expect_eq "no errors in the log" "" "$(grep 'level=error' "$FERRY_LOG" | head -3)"
