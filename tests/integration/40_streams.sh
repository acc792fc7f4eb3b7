#!/usr/bin/env bash
# 40_streams.sh -- POST /sync/stream over raw HTTP: line shapes, checksums, pagination, resume,
# live diffs, write checkpoints, errors and limits, and SIGTERM with open streams
# storage: both
source "$(dirname "$0")/../lib/testlib.sh"

db=$(new_db streams40)
psql -q "$db" <<'SQL'
CREATE TABLE items (id text PRIMARY KEY, owner text, body text, prio int);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO items SELECT 'i' || i, 'u' || (i % 3), 'body ' || i, 0 FROM generate_series(1, 2500) i;
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  urgent:
    priority: 0
    data:
      - SELECT id, body FROM items WHERE prio = 1
  everything:
    data:
      - SELECT id, owner, body FROM items
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, body FROM items WHERE owner = bucket.owner
  by_param:
    parameters: SELECT request.parameters() ->> 'x' AS x
    data:
      - SELECT id FROM items WHERE owner = bucket.x
  many:
    parameters: SELECT value AS x FROM json_each(request.parameters() -> 'xs')
    data:
      - SELECT id FROM items WHERE owner = bucket.x
YAML
port=$(free_port)
replication_config "$T_TMP/ferry.yaml" "$port" "$db"
cat >>"$T_TMP/ferry.yaml" <<'YAML'
limits:
  max_connections: 8
  max_buckets_per_connection: 6
YAML
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 || { fail "ready" "not ready"; exit 1; }
base=http://127.0.0.1:$port
tok() { "$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub "$1" "${@:2}"; }
T1=$(tok u1)

# one full sync, read until checkpoint_complete (or 60 s: the machine may be loaded)
stream() { stream_once "$base" "$2" "$1"; } # stream BODY TOKEN > file
stream '{"buckets":[],"client_id":"c1","parameters":{"x":"u2"}}' "$T1" >"$T_TMP/s1.ndjson"
python3 - "$T_TMP/s1.ndjson" >"$T_TMP/check1.txt" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = []
def say(k, v): out.append(f"{k}={v}")
say("one_key_per_line", all(len(l) == 1 for l in lines))
cp = lines[0]["checkpoint"]
say("first_is_checkpoint", True)
say("last_op_id_is_string", isinstance(cp["last_op_id"], str))
say("buckets", ",".join(sorted(b["bucket"] for b in cp["buckets"])))
sums = {}; counts = {}; order = []; ok_ids = True; pages = {}
for l in lines:
    if "data" in l:
        d = l["data"]; b = d["bucket"]; order.append(b)
        pages[b] = pages.get(b, 0) + 1
        ok_ids &= isinstance(d["after"], str) and isinstance(d["next_after"], str)
        for op in d["data"]:
            ok_ids &= isinstance(op["op_id"], str) and isinstance(op["data"], str)
            sums[b] = (sums.get(b, 0) + op["checksum"]) % 2**32
            counts[b] = counts.get(b, 0) + 1
say("ids_are_strings", ok_ids)
say("checksums_match", all(sums.get(b["bucket"], 0) == b["checksum"] % 2**32 and counts.get(b["bucket"], 0) == b["count"] for b in cp["buckets"]))
say("everything_pages", pages.get('1#everything[]', 0))
say("has_more_on_first_page", [l["data"]["has_more"] for l in lines if "data" in l and l["data"]["bucket"] == '1#everything[]'][0])
kinds = [list(l)[0] for l in lines]
say("ends_with_complete", kinds[-1] == "checkpoint_complete" and lines[-1]["checkpoint_complete"]["last_op_id"] == cp["last_op_id"])
say("partials", [l["partial_checkpoint_complete"]["priority"] for l in lines if "partial_checkpoint_complete" in l])
print("\n".join(out))
PY
c=$(cat "$T_TMP/check1.txt")
expect_match "every line has exactly one key" 'one_key_per_line=True' "$c"
expect_match "the first line is a checkpoint with last_op_id as a string" 'last_op_id_is_string=True' "$c"
expect_match "the user gets the buckets the rules give (request value, client parameter, global)" \
  'buckets=1#by_param\["u2"\],1#everything\[\],1#mine\["u1"\]' "$c"
expect_match "op ids, after and next_after are decimal strings; data is a string" 'ids_are_strings=True' "$c"
expect_match "each bucket's checksum and count equal the sum of its ops" 'checksums_match=True' "$c"
expect_match "a 2,500-op bucket comes in pages of at most 1,000 ops" 'everything_pages=3' "$c"
expect_match "has_more is true on a page that is not the last" 'has_more_on_first_page=True' "$c"
expect_match "it ends with checkpoint_complete for the same last_op_id" 'ends_with_complete=True' "$c"
expect_match "one partial_checkpoint_complete, after the priority-0 level (not after the last level)" 'partials=\[0\]' "$c"

# resume: send positions at the checkpoint; only newer ops come back
cp=$(head -1 "$T_TMP/s1.ndjson" | python3 -c 'import json,sys; print(json.load(sys.stdin)["checkpoint"]["last_op_id"])')
psql -q "$db" -c "UPDATE items SET body = 'changed', prio = 1 WHERE id = 'i3'"
converged "$T_TMP/ferry.yaml" 60 || fail "the update is replicated before the resume" "$(head -3 "$T_TMP/converge.diff")"
stream "{\"buckets\":[{\"name\":\"1#everything[]\",\"after\":\"$cp\"},{\"name\":\"1#mine[\\\"u1\\\"]\",\"after\":\"$cp\"}],\"client_id\":\"c1\"}" "$T1" >"$T_TMP/s2.ndjson"
n=$(grep -c '"op_id"' "$T_TMP/s2.ndjson")
ops=$(python3 -c 'import json,sys
n=0
for l in open(sys.argv[1]):
    d=json.loads(l)
    if "data" in d and d["data"]["bucket"] in ("1#everything[]",): n+=len(d["data"]["data"])
print(n)' "$T_TMP/s2.ndjson")
expect_eq "resuming from after=checkpoint sends only the one new op of that bucket" "1" "$ops"
kinds=$(head -3 "$T_TMP/s2.ndjson" | python3 -c 'import json,sys
for l in sys.stdin:
    d=json.loads(l); k=list(d)[0]
    print(k + (":" + d[k]["bucket"] if k == "data" else ""))' | tr '\n' ' ')
expect_eq "a priority-0 bucket comes first, followed by partial_checkpoint_complete" \
  'checkpoint data:1#urgent[] partial_checkpoint_complete ' "$kinds"

# live: a change arrives as checkpoint_diff + data + complete on an open stream
# the stream is open (its first checkpoint complete) before the change, so the change comes as a
# diff; each step waits for what it needs to see, up to 60 s, whatever the machine's speed
timeout 90 curl -sN -X POST "$base/sync/stream" -H "Authorization: Token $T1" -d '{"buckets":[],"client_id":"c2"}' >"$T_TMP/s3.ndjson" &
spid=$!
seen() { # seen REGEX: wait until the live stream's file has a line matching REGEX
  local i
  for ((i = 0; i < 600; i++)); do grep -Eq "$1" "$T_TMP/s3.ndjson" && return 0; sleep 0.1; done
  return 1
}
seen checkpoint_complete || fail "the live stream starts" "$(head -c 300 "$T_TMP/s3.ndjson")"
psql -q "$db" -c "UPDATE items SET body = 'live' WHERE id = 'i4'"
seen '"object_id":"i4".*live' || fail "the live change arrives" "$(tail -c 300 "$T_TMP/s3.ndjson")"
wcp=$(curl -s "$base/write-checkpoint2.json?client_id=c2" -H "Authorization: Token $T1")
expect_match "GET /write-checkpoint2.json answers a counter as a string" '^\{"data":\{"write_checkpoint":"[0-9]+"\}\}$' "$wcp"
seen '"write_checkpoint":"[0-9]+","updated_buckets":\[\],"removed_buckets":\[\]' ||
  fail "the write checkpoint arrives on the stream" "$(tail -c 300 "$T_TMP/s3.ndjson")"
seen 'checkpoint_complete.*$' && sleep 0.2
kill "$spid" 2>/dev/null
wait $spid 2>/dev/null
live=$(sed -n '2,$p' "$T_TMP/s3.ndjson" | grep -v '"data":{"bucket"' | grep -v token_expires | tr '\n' ' ')
expect_match "a live change comes as checkpoint_diff with updated and removed buckets" \
  '\{"checkpoint_diff":\{"last_op_id":"[0-9]+","updated_buckets":\[\{"bucket":"1#everything\[\]".*"removed_buckets":\[\]\}\}' "$live"
expect_match "the write checkpoint arrives in a later diff (empty arrays when nothing else changed)" \
  '"write_checkpoint":"[0-9]+","updated_buckets":\[\],"removed_buckets":\[\]' "$live"
expect_match "its data line carries the new row" '"object_id":"i4".*\\"body\\":\\"live\\"' "$(cat "$T_TMP/s3.ndjson")"

# errors
out=$(curl -s -w ' %{http_code}' -X POST "$base/sync/stream" -d '{}')
expect_match "no token is 401 with the error shape" '^\{"error":\{"code":"malformed","description":"[^"]+"\}\} 401$' "$out"
out=$(curl -s -w ' %{http_code}' -X POST "$base/sync/stream" -H "Authorization: Token ${T1}x" -d '{}')
expect_match "a bad signature is 401 bad_signature" '"code":"bad_signature".* 401$' "$out"
out=$(curl -s -w ' %{http_code}' -X POST "$base/sync/stream" -H "Authorization: Token $T1" -d '{"buckets": ')
expect_match "malformed JSON is 400 with a message" '^\{"error":\{"code":"bad_request","description":"the request body is not a JSON object.*\}\} 400$' "$out"
out=$(curl -s -w ' %{http_code}' -X POST "$base/sync/stream" -H "Authorization: Token $T1" -d '{"buckets": 5}')
expect_match "a wrong field type is 400" '"bad_request".* 400$' "$out"
out=$(stream '{"parameters":{"x":"u0"},"unknown_field":[1]}' "$T1")
expect_match "unknown fields are ignored" '^\{"checkpoint"' "$out"

# the bucket limit (6): parameters that produce too many buckets get a clear 400
out=$(stream '{"parameters":{"x":"u2","xs":["a","b"]}}' "$T1")
expect_match "within the limit the stream starts" '^\{"checkpoint"' "$out"
out=$(curl -s -w ' %{http_code}' -X POST "$base/sync/stream" -H "Authorization: Token $T1" -d '{"parameters":{"x":"u2","xs":["a","b","c","d","e"]}}' --max-time 30)
expect_eq "over the limit: 400 naming each definition and its bucket count" \
  '{"error":{"code":"too_many_buckets","description":"too many buckets for one connection: more than 6 (\"urgent\": 1, \"everything\": 1, \"mine\": 1, \"by_param\": 1, \"many\": 5); raise limits.max_buckets_per_connection or narrow the rules"}} 400' "$out"
expect_match "the log says the same" 'msg="rejected a stream" user="u1" error="too many buckets for one connection: more than 6' "$(cat "$FERRY_LOG")"

# clients that hung up are noticed within seconds, not at the next 20-second keepalive
body=$(wait_match "$base/metrics" 'ferry_streams_open 0' 12) &&
  pass "streams of clients that hung up are released within seconds" || fail "hung-up streams released" "$(echo "$body" | grep streams_open)"

# the connection limit (8): open idle streams, then one more gets 503 with Retry-After
pids=()
for i in 1 2 3 4 5 6 7 8; do
  timeout 90 curl -sN -X POST "$base/sync/stream" -H "Authorization: Token $T1" -d '{}' >/dev/null &
  pids+=($!)
done
# once all eight streams are open (however long that takes here; the admin listener, port + 1,
# is not counted against the limit and tells), the next connection is refused
body=$(wait_match "http://127.0.0.1:$((port + 1))/metrics" 'ferry_streams_open 8' 60) ||
  fail "eight streams open" "$(echo "$body" | grep -E 'streams_(open|evicted)|http_open')"
out=$(curl -s -i -X POST "$base/sync/stream" -H "Authorization: Token $T1" -d '{}' --max-time 2 | tr -d '\r')
expect_match "over limits.max_connections a client gets 503 with Retry-After" '503 Service Unavailable.*Retry-After: [0-9]+' "$(echo $out)"
metrics=$(curl -s "$base/metrics" 2>/dev/null)

# SIGTERM with open streams: they end cleanly and ferry exits 0 within 5 s
t0=$(date +%s%N)
stop_pid "$FERRY_PID" 5
t1=$(date +%s%N)
expect_eq "SIGTERM with open streams exits 0" "0" "$STOP_RC"
ms=$(( (t1 - t0) / 1000000 ))
[ "$ms" -lt 5000 ] && pass "it stops within 5 s with open streams (${ms} ms)" || fail "stops within 5 s" "${ms} ms"
expect_match "each stream logs its end with the reason" 'msg="stream ended" conn=s[0-9]+ user="u1" .*reason=server_shutdown' "$(cat "$FERRY_LOG")"
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
