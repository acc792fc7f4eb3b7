#!/usr/bin/env bash
# 41_sync_streams.sh -- Sync Streams (edition 3) over raw HTTP: the `streams` of the first
# checkpoint and the `subscriptions` of every bucket, include_defaults, several subscriptions to
# one stream, errors of unknown streams and unusable parameters, override_priority, the
# subscription and bucket limits, a JOIN stream following a membership change live, and
# POST /sync/checkpoint-request
# storage: both
source "$(dirname "$0")/../lib/testlib.sh"

db=$(new_db streams41)
psql -q "$db" <<'SQL'
CREATE TABLE lists (id text PRIMARY KEY, owner_id text, name text);
CREATE TABLE todos (id text PRIMARY KEY, list_id text, description text);
CREATE TABLE members (id text PRIMARY KEY, list_id text, user_id text);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO lists VALUES ('l1', 'u1', 'Groceries'), ('l2', 'u1', 'Work'), ('l3', 'u2', 'Other');
INSERT INTO todos SELECT 't' || i, 'l' || (1 + i % 3), 'todo ' || i FROM generate_series(1, 30) i;
INSERT INTO members VALUES ('m1', 'l3', 'u1');
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
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
  shared_todos:
    auto_subscribe: true
    query: SELECT todos.* FROM todos JOIN members ON members.list_id = todos.list_id WHERE members.user_id = auth.user_id()
  by_ids:
    query: SELECT * FROM todos WHERE id IN subscription.parameter('ids') AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())
YAML
port=$(free_port)
replication_config "$T_TMP/ferry.yaml" "$port" "$db"
cat >>"$T_TMP/ferry.yaml" <<'YAML'
limits:
  max_buckets_per_connection: 8
  max_subscriptions_per_connection: 5
  max_subscription_parameter_bytes: 64
YAML
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 30 || { fail "ready" "not ready"; exit 1; }
base=http://127.0.0.1:$port
T1=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub u1)
stream() { # stream BODY SECONDS > file
  timeout "${2:-2}" curl -sN -X POST "$base/sync/stream" -H "Authorization: Token $T1" \
    -H 'content-type: application/json' -d "$1"
}
first() { # the first checkpoint line, compact, buckets sorted (checksums and counts dropped)
  python3 -c '
import json, sys
cp = json.loads(open(sys.argv[1]).readline())["checkpoint"]
for b in cp["buckets"]: b.pop("checksum"); b.pop("count")
cp["buckets"].sort(key=lambda b: b["bucket"])
print(json.dumps({"buckets": cp["buckets"], "streams": cp["streams"]}, separators=(",", ":")))' "$1"
}

# defaults only (what a client sends before it subscribes to anything)
stream '{"buckets":[],"client_id":"c1","streams":{"include_defaults":true,"subscriptions":[]}}' >"$T_TMP/a.ndjson"
# (shared_todos partitions todos by list_id like list_todos, so their buckets are shared and
# named after the first, as the reference compiler names them)
expect_eq "default streams: their buckets carry priority and {\"default\": index}, and streams lists them" \
  '{"buckets":[{"bucket":"1#list_todos|0[\"l3\"]","priority":3,"subscriptions":[{"default":1}]},{"bucket":"1#my_lists|0[\"u1\"]","priority":3,"subscriptions":[{"default":0}]}],"streams":[{"name":"my_lists","is_default":true,"errors":[]},{"name":"shared_todos","is_default":true,"errors":[]}]}' \
  "$(first "$T_TMP/a.ndjson")"
n=$(grep -o '"object_id"' "$T_TMP/a.ndjson" | wc -l)
expect_eq "their rows arrive: 2 lists of u1 and the 10 todos of the shared list l3" 12 "$n"

# two subscriptions to one stream with other parameters, one to a missing stream, one with
# parameters the stream cannot use, no defaults
body='{"buckets":[],"client_id":"c1","streams":{"include_defaults":false,"subscriptions":[
  {"stream":"list_todos","parameters":{"list_id":"l1"},"override_priority":null},
  {"stream":"list_todos","parameters":{"list_id":"l2"},"override_priority":0},
  {"stream":"nope","parameters":null,"override_priority":null},
  {"stream":"by_ids","parameters":{"ids":"not an array"},"override_priority":null},
  {"stream":"by_ids","parameters":[1],"override_priority":null}]}}'
stream "$body" >"$T_TMP/b.ndjson"
got=$(first "$T_TMP/b.ndjson")
expect_match "include_defaults false drops the default streams" '^\{"buckets":\[\{"bucket":"1#list_todos' "$got"
# (each subscription names its bucket twice: the list id comes from the subscription and from
# the lookup of the user's lists, and the reference counts both)
expect_match "one bucket per subscription, each naming its subscription" \
  '"buckets":\[\{"bucket":"1#list_todos\|0\[\\"l1\\"\]","priority":2,"subscriptions":\[\{"sub":0\},\{"sub":0\}\]\},\{"bucket":"1#list_todos\|0\[\\"l2\\"\]","priority":0,"subscriptions":\[\{"sub":1\},\{"sub":1\}\]\}\]' "$got"
expect_match "override_priority 0 gives that subscription's bucket priority 0" '"l2\\"\]","priority":0' "$got"
expect_match "a subscription to a missing stream is an error of that stream, not a failure" \
  '\{"name":"nope","is_default":false,"errors":\[\{"subscription":2,"message":"stream \\"nope\\" is not defined in the sync rules"\}\]\}' "$got"
expect_match "parameters the stream cannot use are errors of those subscriptions" \
  '\{"name":"by_ids","is_default":false,"errors":\[\{"subscription":3,"message":"could not evaluate the bucket ids: [^"]+"\},\{"subscription":4,"message":"the subscription.s parameters must be a JSON object"\}\]\}' "$got"
order=$(python3 -c '
import json, sys
out = []
for l in open(sys.argv[1]):
    d = json.loads(l); k = list(d)[0]
    if k == "data": out.append("data:" + d[k]["bucket"].split("[")[1].strip("\"]\\"))
    elif k == "partial_checkpoint_complete": out.append("partial:%d" % d[k]["priority"])
    elif k in ("checkpoint_complete",): out.append("complete")
print(" ".join(out))' "$T_TMP/b.ndjson")
expect_eq "the priority-0 subscription's data comes first and is completed on its own" \
  "data:l2 partial:0 data:l1 complete" "$order"

# limits
subs=$(python3 -c 'import json; print(json.dumps([{"stream":"list_todos","parameters":{"list_id":"l%d" % i}} for i in range(6)]))')
out=$(curl -s -w ' %{http_code}' -X POST "$base/sync/stream" -H "Authorization: Token $T1" -d "{\"streams\":{\"subscriptions\":$subs}}")
expect_eq "more subscriptions than the limit is a 400 naming the limit" \
  '{"error":{"code":"too_many_subscriptions","description":"too many stream subscriptions: 6, more than limits.max_subscriptions_per_connection (5)"}} 400' "$out"
big=$(python3 -c 'print("x" * 100)')
out=$(curl -s -w ' %{http_code}' -X POST "$base/sync/stream" -H "Authorization: Token $T1" -d "{\"streams\":{\"subscriptions\":[{\"stream\":\"list_todos\",\"parameters\":{\"list_id\":\"$big\"}}]}}")
expect_eq "parameters over the byte cap are a 400 naming the limit" \
  '{"error":{"code":"subscription_parameters_too_large","description":"the parameters of streams.subscriptions[0] have 114 bytes, more than limits.max_subscription_parameter_bytes (64)"}} 400' "$out"
ids=$(python3 -c 'import json; print(json.dumps({"ids": ["t%d" % i for i in range(1, 5)]}))')
out=$(curl -s -w ' %{http_code}' -X POST "$base/sync/stream" -H "Authorization: Token $T1" -d "{\"streams\":{\"subscriptions\":[{\"stream\":\"by_ids\",\"parameters\":$ids}]}}")
expect_eq "the bucket limit counts across streams and names each with its count" \
  '{"error":{"code":"too_many_buckets","description":"too many buckets for one connection: more than 8 (\"my_lists\": 1, \"shared_todos\": 1, \"by_ids\": 8); raise limits.max_buckets_per_connection or narrow the rules"}} 400' "$out"
expect_match "the log line names them too" 'rejected a stream.*by_ids.{0,2}: 8' "$(cat "$FERRY_LOG")"

# a JOIN stream follows a membership change live, in a checkpoint_diff with subscriptions
stream '{"buckets":[],"client_id":"c2"}' 4 >"$T_TMP/c.ndjson" &
spid=$!
sleep 1
psql -q "$db" -c "INSERT INTO members VALUES ('m2', 'l2', 'u1')"
sleep 1
psql -q "$db" -c "DELETE FROM members WHERE id = 'm1'"
wait $spid
live=$(grep checkpoint_diff "$T_TMP/c.ndjson" | tr '\n' ' ')
expect_match "a new membership adds the bucket, with its subscriptions" \
  '"updated_buckets":\[\{"bucket":"1#list_todos\|0\[\\"l2\\"\]","checksum":[0-9-]+,"count":10,"priority":3,"subscriptions":\[\{"default":1\}\]\}\]' "$live"
expect_match "a removed membership removes it" '"removed_buckets":\["1#list_todos\|0\[\\"l3\\"\]"\]' "$live"

# checkpoint requests (checkpointMode: 'requests')
cr() { curl -s -w ' %{http_code}' -X POST "$base/sync/checkpoint-request" -H "Authorization: Token $T1" -d "$1"; }
expect_eq "a checkpoint request is stored and answered with its id" \
  '{"data":{"checkpoint_request_id":"5"}} 200' "$(cr '{"client_id":"c3","checkpoint_request_id":"5"}')"
expect_eq "a stale one answers the larger stored id" \
  '{"data":{"checkpoint_request_id":"5"}} 200' "$(cr '{"client_id":"c3","checkpoint_request_id":"3"}')"
expect_match "an id out of range is a 400" '"bad_request".* 400$' "$(cr '{"client_id":"c3","checkpoint_request_id":"9223372036854775808"}')"
expect_match "no client_id is a 400" '"bad_request".* 400$' "$(cr '{"checkpoint_request_id":"1"}')"
stream '{"buckets":[],"client_id":"c3"}' 2 >"$T_TMP/d.ndjson"
expect_match "the stream reports it as write_checkpoint" '^\{"checkpoint":\{"last_op_id":"[0-9]+","write_checkpoint":"5"' "$(head -1 "$T_TMP/d.ndjson")"
stream '{"buckets":[],"client_id":"c3"}' 3 >"$T_TMP/e.ndjson" &
spid=$!
sleep 1
cr '{"client_id":"c3","checkpoint_request_id":"9223372036854775807"}' >/dev/null
wait $spid
expect_match "a newer request arrives on an open stream as a diff with the new id" \
  '"checkpoint_diff":\{"last_op_id":"[0-9]+","write_checkpoint":"9223372036854775807","updated_buckets":\[\],"removed_buckets":\[\]\}' "$(cat "$T_TMP/e.ndjson")"
# a reconnect's positions are read without a JSON tree (a reconnect sends hundreds): escaped and
# \u-escaped names, positions as strings or numbers, extra keys all resume; a malformed body is
# still a 400 with the parser's message
stream '{"buckets":[],"client_id":"c1","streams":{"include_defaults":false,"subscriptions":[{"stream":"list_todos","parameters":{"list_id":"l1"}}]}}' >"$T_TMP/p1.ndjson"
cp1=$(head -1 "$T_TMP/p1.ndjson" | jq -r .checkpoint.last_op_id)
body='{"client_id":"c1","buckets":[{"x":{"y":[1,"]"]},"name":"1#list_todos|0[\"\u006c1\"]","after":'"$cp1"'},{"name":"1#list_todos|0[\"l2\"]","after":"'"$cp1"'"}],"streams":{"include_defaults":false,"subscriptions":[{"stream":"list_todos","parameters":{"list_id":"l1"}},{"stream":"list_todos","parameters":{"list_id":"l2"}}]}}'
stream "$body" >"$T_TMP/p2.ndjson"
expect_eq "buckets the client has up to the checkpoint send no data" "0" "$(grep -c '"data"' "$T_TMP/p2.ndjson")"
expect_match "and the stream completes" '"checkpoint_complete"' "$(cat "$T_TMP/p2.ndjson")"
body='{"client_id":"c1","buckets":[{"name":"1#list_todos|0[\"l1\"]","after":"0"}],"streams":{"include_defaults":false,"subscriptions":[{"stream":"list_todos","parameters":{"list_id":"l1"}}]}}'
stream "$body" >"$T_TMP/p3.ndjson"
expect_eq "a position before the data resumes from there: all 10 todos of l1" "10" "$(grep -o '"object_id"' "$T_TMP/p3.ndjson" | wc -l)"
out=$(curl -s -X POST "$base/sync/stream" -H "Authorization: Token $T1" -H 'content-type: application/json' \
  -d '{"buckets":[{"name":"a","after":"1"}],')
expect_match "a malformed body is a 400 naming where" '"code":"bad_request".*line 1, column' "$out"
expect_eq "no errors in the log" "" "$(grep 'level=error' "$FERRY_LOG")"
