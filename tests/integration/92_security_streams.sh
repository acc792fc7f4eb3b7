#!/usr/bin/env bash
# 92_security_streams.sh -- what one user's sync streams can take from the others
#
#   - limits.max_streams_per_user: a user's third stream (of 2 allowed) ends the user's oldest,
#     on whichever loop thread it lives; the others and another user's stream go on;
#   - hash flooding: a request naming 30,000 bucket names crafted so their unkeyed FNV-1a hashes
#     share the low 16 bits is answered like any other (the spread of such keys is asserted by
#     the unit test test_base_map_keyed_hash_spreads_fnv_collisions; what they cost against random
#     names is a time, measured by tests/load/bench_hash_flood.sh in make bench, not here);
#   - "buckets" past limits.max_buckets_per_connection, "parameters" past 16 KB: 400;
#     positions are taken only for the user's own buckets;
#   - "parameters" naming another user (her list, her id as user_id/sub/owner) give no bucket
#     of hers through a parameter query that reads request.parameters() and the token;
#   - streams do not keep their request bodies: 40 streams with 200 KB bodies grow ferry's
#     resident memory by much less than the bodies' 8 MB.
source "$(dirname "$0")/../lib/testlib.sh"
sectools() { python3 "$T_ROOT/tests/lib/sectools.py" "$@"; }

db=$(new_db sec92)
drop_at_exit sec92
psql -q -v ON_ERROR_STOP=1 "$db" <<'SQL' >/dev/null
CREATE TABLE lists (id text PRIMARY KEY, owner text NOT NULL, name text);
INSERT INTO lists VALUES ('l1', 'alice', 'one'), ('l2', 'bob', 'two');
CREATE PUBLICATION ferry FOR ALL TABLES;
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, name FROM lists WHERE owner = bucket.owner
  everything:
    data:
      - SELECT id, owner FROM lists
  picked:
    parameters: SELECT id AS list_id FROM lists WHERE id = request.parameters() ->> 'list' AND owner = token_parameters.user_id
    data:
      - SELECT id, name FROM lists WHERE id = bucket.list_id
YAML
port=$(free_port)
replication_config "$T_TMP/ferry.yaml" "$port" "$db"
sed -i "s|^  threads: 2|&\n  max_request_body: 4194304|" "$T_TMP/ferry.yaml"
cat >>"$T_TMP/ferry.yaml" <<'YAML'
limits:
  max_streams_per_user: 2
  max_buckets_per_connection: 40000
YAML
# under AddressSanitizer freed memory waits in a quarantine instead of being reused, which would
# make released bodies look kept: no quarantine for this ferry (no effect on a plain build)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0"
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 30 || { fail "ferry becomes ready" "$(tail -5 "$FERRY_LOG")"; exit 1; }
base=http://127.0.0.1:$port
tok() { "$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub "$1"; }
alice=$(tok alice)
bob=$(tok bob)
metric() { curl -s "$base/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

# ---- streams do not keep their request bodies (first, while the heap is fresh) ----
rss() { awk '/^VmRSS/ {print $2}' "/proc/$FERRY_PID/status"; }
pad=$(head -c 200000 /dev/zero | tr '\0' x)
printf '{"client_id":"big","app_metadata":{"pad":"%s"}}' "$pad" >"$T_TMP/big.json"
users=()
for i in $(seq 1 50); do users+=("$(tok "mem$i")"); done
hold() { curl -s -N -o /dev/null -m 120 -X POST -H "Authorization: Bearer $1" --data-binary @"$T_TMP/big.json" "$base/sync/stream" & T_PIDS+=($!); }
wait_open() { for ((i = 0; i < 400; i++)); do [ "$(metric ferry_streams_open)" -ge "$1" ] && return; sleep 0.05; done; }
# one after the other (so only one body is ever in flight): ten first, so allocator pools and
# thread caches are warm; then measure forty more
for i in $(seq 0 9); do hold "${users[$i]}"; wait_open $((i + 1)); done
before=$(rss)
for i in $(seq 10 49); do hold "${users[$i]}"; wait_open $((i + 1)); done
n=$(metric ferry_streams_open)
expect_eq "50 streams with 200 KB bodies open" "50" "$n"
after=$(rss)
per=$(( (after - before) / 40 ))
[ "$per" -lt 64 ] && pass "40 more streams with 200 KB bodies: ${per} KB each (bodies released)" ||
  fail "streams do not keep their 200 KB bodies" "${per} KB of resident memory per stream"

# ---- max_streams_per_user ----
# stream NAME TOKEN: a background stream whose output goes to $T_TMP/NAME and whose curl exit
# status goes to $T_TMP/NAME.rc once it ends
stream() {
  (curl -s -N -m 120 -X POST -H "Authorization: Bearer $2" -d "{\"client_id\":\"$1\"}" "$base/sync/stream" >"$T_TMP/$1"
   echo $? >"$T_TMP/$1.rc") &
  T_PIDS+=($!)
  local i
  for ((i = 0; i < 100; i++)); do grep -q checkpoint_complete "$T_TMP/$1" 2>/dev/null && return 0; sleep 0.05; done
  fail "stream $1 starts" "no checkpoint"
}
stream a1 "$alice"
stream b1 "$bob"
stream a2 "$alice"
expect_eq "three streams open (and the 50 above)" "53" "$(metric ferry_streams_open)"
stream a3 "$alice"
for ((i = 0; i < 100; i++)); do [ -f "$T_TMP/a1.rc" ] && break; sleep 0.05; done
expect_eq "alice's oldest stream (a1) ended cleanly" "0" "$(cat "$T_TMP/a1.rc" 2>/dev/null)"
expect_eq "her newer ones and bob's go on" "" "$(ls "$T_TMP"/a2.rc "$T_TMP"/a3.rc "$T_TMP"/b1.rc 2>/dev/null)"
expect_eq "three streams open again" "53" "$(metric ferry_streams_open)"
expect_eq "evictions counted" "1" "$(metric ferry_streams_evicted_total)"
expect_match "the log says which stream went and why" \
  'msg="too many streams for one user; ending the oldest" conn=s[0-9]+ user="alice" evicted=s[0-9]+ max_streams_per_user=2' "$(cat "$FERRY_LOG")"
expect_match "the evicted stream's end is logged" 'msg="stream ended" .*user="alice" .*reason=evicted' "$(cat "$FERRY_LOG")"
# more streams than threads: the evicted one may live on the other loop thread
for i in 4 5 6; do stream "a$i" "$alice"; done
for ((i = 0; i < 100; i++)); do [ -f "$T_TMP/a4.rc" ] && break; sleep 0.05; done
expect_eq "each new stream ends alice's oldest (a2, a3, a4 ended)" "0 0 0" \
  "$(cat "$T_TMP"/a2.rc "$T_TMP"/a3.rc "$T_TMP"/a4.rc 2>/dev/null | xargs)"
expect_eq "alice keeps 2, bob 1" "53" "$(metric ferry_streams_open)"

# ---- hash flooding: a crafted request is answered like any other ----
sectools colliding 30000 >"$T_TMP/coll.txt"
python3 -c 'import json,sys; print(json.dumps({"client_id": "flood", "buckets": [{"name": l.strip(), "after": "1"} for l in open(sys.argv[1])]}))' \
  "$T_TMP/coll.txt" >"$T_TMP/coll.json"
flood=$(tok flooder)
(curl -s -N -m 60 -X POST -H "Authorization: Bearer $flood" -H 'content-type: application/json' \
  --data-binary @"$T_TMP/coll.json" "$base/sync/stream" >"$T_TMP/flood.out" 2>/dev/null) &
T_PIDS+=($!)
for ((i = 0; i < 600; i++)); do grep -q checkpoint_complete "$T_TMP/flood.out" 2>/dev/null && break; sleep 0.05; done
out=$(cat "$T_TMP/flood.out")
expect_match "30,000 colliding bucket names: the stream starts with a checkpoint" '^\{"checkpoint":' "$out"
expect_match "and completes it" '"checkpoint_complete"' "$out"
expect_eq "no bucket but the flooder's own (everything[], mine[flooder]) is named back" "" \
  "$(grep -oE '"bucket":"([^"\\]|\\.)*"' <<<"$out" | grep -vE '^"bucket":"[0-9]+#(everything\[\]|mine\[\\"flooder\\"\])"$' | head -3)"

# ---- request limits ----
many=$(python3 -c 'import json; print(json.dumps({"buckets": [{"name": "b%d" % i, "after": "0"} for i in range(40001)]}))')
out=$(curl -s -m 5 -w ' %{http_code}' -X POST -H "Authorization: Bearer $bob" --data-binary @- "$base/sync/stream" <<<"$many")
expect_eq "buckets past the limit: 400" \
  '{"error":{"code":"bad_request","description":"\"buckets\" lists more than 40000 buckets (limits.max_buckets_per_connection)"}} 400' "$out"
params=$(python3 -c 'import json; print(json.dumps({"parameters": {"p": "x" * 16400}}))')
out=$(curl -s -m 5 -w ' %{http_code}' -X POST -H "Authorization: Bearer $bob" --data-binary @- "$base/sync/stream" <<<"$params")
expect_eq "parameters past 16 KB: 400" \
  '{"error":{"code":"bad_request","description":"\"parameters\" is longer than 16384 bytes as JSON"}} 400' "$out"
# positions: alice's own bucket at its end (no data), someone else's and made-up names ignored
ver=$(grep -o 'rule_version=[0-9]*' "$FERRY_LOG" | head -1 | cut -d= -f2)
out=$(curl -s -N -m 2 -X POST -H "Authorization: Bearer $bob" \
  -d "{\"buckets\":[{\"name\":\"$ver#mine[\\\"alice\\\"]\",\"after\":\"0\"},{\"name\":\"$ver#mine[\\\"bob\\\"]\",\"after\":\"999999\"}]}" "$base/sync/stream" || true)
expect_eq "a position for bob's own bucket is taken (no data for it)" "" "$(grep '"data":{"bucket":"'"$ver"'#mine' <<<"$out")"
expect_eq "naming alice's bucket gives bob nothing of it" "0" "$(grep -c 'mine\[\\"alice\\"\]' <<<"$out")"
expect_match "bob gets the global bucket from the start" '"data":\{"bucket":"[0-9]+#everything\[\]","after":"0"' "$out"

# ---- "parameters" naming another user ----
buckets_of() { # TOKEN PARAMETERS_JSON: the bucket names of the first checkpoint
  curl -s -N -m 2 -X POST -H "Authorization: Bearer $1" -d "{\"client_id\":\"p\",\"parameters\":$2}" "$base/sync/stream" |
    head -1 | grep -oE '"bucket":"([^"\\]|\\.)*"' | sed -E 's/^"bucket":"[0-9]+#//; s/"$//' | sort | paste -sd' '
}
expect_eq "alice picking her list l1 gets it" 'everything[] mine[\"alice\"] picked[\"l1\"]' \
  "$(buckets_of "$alice" '{"list":"l1"}')"
expect_eq "bob picking his list l2 gets it (so the next can fail)" 'everything[] mine[\"bob\"] picked[\"l2\"]' \
  "$(buckets_of "$bob" '{"list":"l2"}')"
expect_eq "bob picking alice's list l1 gets no picked bucket" 'everything[] mine[\"bob\"]' \
  "$(buckets_of "$bob" '{"list":"l1"}')"
expect_eq "bob naming alice as user, sub and owner in parameters gets only his own" 'everything[] mine[\"bob\"]' \
  "$(buckets_of "$bob" '{"list":"l1","user_id":"alice","sub":"alice","owner":"alice","token_parameters":{"user_id":"alice"}}')"

stop_pid "$FERRY_PID"
expect_eq "ferry exits 0 on SIGTERM" "0" "$STOP_RC"
expect_eq "no sanitizer report" "" "$(grep -E 'Sanitizer|runtime error' "$FERRY_LOG" | head -3)"
