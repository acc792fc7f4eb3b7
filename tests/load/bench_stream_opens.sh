#!/usr/bin/env bash
# bench_stream_opens.sh -- opening a stream with many subscriptions, at the rate clients reconnect
# (issue 17: a subscription change is a new request; make bench)
#
# On its own Postgres cluster and one ferry (http.threads 2): edition-3 rules with a default
# stream whose buckets come from a membership lookup (the user is in 150 groups: 150 buckets) and
# a subscribed stream checked against an ownership lookup (50 subscriptions, one list each: 50
# buckets), so one request resolves 200 buckets through 51 parameter-index reads. The request a
# reconnecting client sends: its 200 buckets with positions (so no data follows), the 50
# subscriptions, include_defaults. build/bench-opens opens such streams at RATE per second
# (default 500) for SECONDS (default 10, after 1 s of warm-up), each on a new connection, on an
# open-loop schedule, and measures from connect() to the complete first line (the checkpoint);
# then the same at the same rate for GET /probes/liveness (the HTTP floor of this run). Each is
# run twice, alternating. Prints "BENCH name value unit note". Goals: p50 <= 2 ms, p99 <= 10 ms.
set -euo pipefail
source "$(dirname "$0")/../lib/testlib.sh"
rate=${BENCH_OPENS_RATE:-500}
secs=${BENCH_OPENS_SECONDS:-10}
opens=${OPENS_BIN:-$(dirname "$FERRY_BIN")/bench-opens}
[ -x "$opens" ] && [ -x "$FERRY_BIN" ] || { echo "build first: make all"; exit 1; }
pgenv=$("$T_ROOT/tests/lib/pg.sh" start benchopens)
eval "$pgenv"
trap 't_cleanup; "$T_ROOT/tests/lib/pg.sh" stop "$PGTMP"' EXIT
export FERRY_PG_URI
db=$(new_db bench)
psql -q "$db" <<'SQL'
CREATE TABLE members (id text PRIMARY KEY, grp text, user_id text);
CREATE TABLE items (id text PRIMARY KEY, grp text, body text);
CREATE TABLE lists (id text PRIMARY KEY, owner_id text, name text);
CREATE TABLE todos (id text PRIMARY KEY, list_id text, description text);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO members SELECT 'm' || i, 'g' || i, 'u1' FROM generate_series(1, 150) i;
INSERT INTO members SELECT 'n' || i, 'g' || i, 'u' || (2 + i % 50) FROM generate_series(1, 1000) i;
INSERT INTO items SELECT 'i' || i, 'g' || (1 + i % 400), 'item ' || i FROM generate_series(1, 4000) i;
INSERT INTO lists SELECT 'l' || i, CASE WHEN i <= 50 THEN 'u1' ELSE 'u2' END, 'list ' || i FROM generate_series(1, 100) i;
INSERT INTO todos SELECT 't' || i, 'l' || (1 + i % 100), 'todo ' || i FROM generate_series(1, 1000) i;
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
config:
  edition: 3
streams:
  my_groups:
    auto_subscribe: true
    query: SELECT * FROM items WHERE grp IN (SELECT grp FROM members WHERE user_id = auth.user_id())
  list_todos:
    query: |
      SELECT * FROM todos WHERE list_id = subscription.parameter('list_id')
        AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())
YAML
port=$(free_port)
SLOT_PREFIX=benchopens replication_config "$T_TMP/ferry.yaml" "$port" "$db"
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 || { echo "ferry not ready"; tail -5 "$FERRY_LOG"; exit 1; }
converged "$T_TMP/ferry.yaml" 60 || { echo "ferry did not converge"; exit 1; }
tok=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub u1 --ttl 3600)
subs=$(python3 -c 'import json; print(json.dumps([{"stream": "list_todos", "parameters": {"list_id": "l%d" % i}, "override_priority": None} for i in range(1, 51)]))')
first='{"buckets":[],"client_id":"bench","parameters":{},"streams":{"include_defaults":true,"subscriptions":'"$subs"'}}'
timeout 5 curl -sN -X POST "http://127.0.0.1:$port/sync/stream" -H "Authorization: Token $tok" \
  -H 'content-type: application/json' -d "$first" | head -1 >"$T_TMP/cp.json" || true
python3 - "$T_TMP/cp.json" "$subs" >"$T_TMP/body.json" <<'PY'
import json, sys
cp = json.loads(open(sys.argv[1]).read())["checkpoint"]
body = {"buckets": [{"name": b["bucket"], "after": cp["last_op_id"]} for b in cp["buckets"]],
        "include_checksum": True, "raw_data": True, "client_id": "bench", "parameters": {},
        "streams": {"include_defaults": True, "subscriptions": json.loads(sys.argv[2])}}
print(json.dumps(body))
PY
nb=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["buckets"]))' "$T_TMP/body.json")
[ "$nb" = 200 ] || { echo "the request resolves to $nb buckets, not 200"; exit 1; }
echo "request: $(wc -c <"$T_TMP/body.json") bytes, 200 buckets with positions, 50 subscriptions"

run() { # run NAME ARGS...: prints the result line, appends "p50 p99 achieved errors" to $T_TMP/NAME
  local name=$1; shift
  local line
  line=$("$opens" --url "http://127.0.0.1:$port" --token "$tok" --rate "$rate" --seconds "$secs" "$@") || true
  echo "  $name: $line"
  echo "$line" | awk '{ for (i = 1; i < NF; i++) v[$i] = $(i + 1); print v["p50"], v["p99"], v["achieved"], v["errors"] }' >>"$T_TMP/$name"
}
for round in 1 2; do
  run opens --body "$T_TMP/body.json"
  run floor --path /probes/liveness --method GET
done
pick() { awk -v c="$2" '{ print $c }' "$T_TMP/$1" | sort -n | tail -1; } # the worse of the two runs
errs=$(awk '{ s += $4 } END { print s + 0 }' "$T_TMP/opens")
for r in 1 2; do
  read -r p50 p99 ach e < <(sed -n "${r}p" "$T_TMP/opens")
  echo "BENCH stream_open_run${r}_p50 $p50 ms run $r: $ach opens/s achieved, p99 $p99 ms, errors $e"
done
echo "BENCH stream_open_first_checkpoint_p50 $(pick opens 1) ms open to first checkpoint line, 50 subscriptions, 200 buckets, $rate opens/s offered (worse of 2 runs), errors $errs, goal <= 2"
echo "BENCH stream_open_first_checkpoint_p99 $(pick opens 2) ms the same, p99 (worse of 2 runs), goal <= 10"
echo "BENCH stream_open_http_floor_p50 $(pick floor 1) ms GET /probes/liveness on a new connection at the same rate (worse of 2 runs); p99 $(pick floor 2) ms"
