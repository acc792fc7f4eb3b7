#!/usr/bin/env bash
# 43_instances_writes.sh -- every instance serves: write-back, write checkpoints, rule changes, refusals
#
# Three instances on one storage (kind postgres, in the source database), each with its own copy
# of the rules file. Write-back through every instance is applied and replicated; a write
# checkpoint asked of one instance is resolved through a stream on another. A rule change on the
# leader's file: one build, one switch, and every stream on every instance moves to the new
# version's buckets; the standbys, whose files still hold the old rules, serve the stored
# version and say their file differs. Then the refusals, each with its exact message: a
# publication that would replicate Ferry's own tables, a schema holding tables that are not
# Ferry's, a schema written by a newer layout.
source "$(dirname "$0")/../lib/testlib.sh"
source "$T_ROOT/tests/lib/instances.sh"
FERRY_TEST_STORAGE=postgres

db=$(new_db inst41)
psql -q "$db" -f "$T_ROOT/tests/conformance/schema.sql" >/dev/null
psql -q "$db" -c "DROP PUBLICATION ferry; CREATE PUBLICATION ferry FOR TABLE announcements, lists, todos, members, org_docs"
cp "$T_ROOT/tests/conformance/sync-rules.yaml" "$T_TMP/sync-rules.yaml"
INST_OWN_RULES=1 SLOT_PREFIX=inst41 inst_setup "$db" 3
inst_start 1 || exit 1
wait_ready "${INST_PORT[1]}" 60 || { fail "the first instance is ready" "$(tail -3 "${INST_LOG[1]}")"; exit 1; }
for k in 2 3; do inst_start "$k" || exit 1; done
for k in 2 3; do wait_ready "${INST_PORT[k]}" 60 || fail "instance $k ready" "$(tail -3 "${INST_LOG[k]}")"; done
expect_eq "the first instance leads" 1 "$(inst_leader)"
tok=$("$FERRY_BIN" token --config "$T_TMP/i1/ferry.yaml" --sub alice)

# write-back through every instance
for k in 1 2 3; do
  code=$(curl -s -o "$T_TMP/w$k.body" -w '%{http_code}' -X POST "$(inst_base "$k")/api/write" -H "Authorization: Bearer $tok" \
    -H 'Content-Type: application/json' \
    -d "{\"client_id\":\"wb\",\"batch\":[{\"op_id\":$k,\"op\":\"PUT\",\"type\":\"todos\",\"id\":\"via$k\",\"data\":{\"list_id\":\"l-alice-2\",\"description\":\"through i$k\",\"completed\":false}}]}")
  expect_eq "write-back through instance $k is applied" 200 "$code"
done
expect_eq "all three writes are in Postgres" 3 "$(psql -tAqX "$db" -c "SELECT count(*) FROM todos WHERE id LIKE 'via%'")"
for ((i = 0; i < 100; i++)); do [ "$(st_sql "SELECT count(*) FROM rows WHERE key LIKE 'via%'")" = 3 ] && break; sleep 0.1; done
expect_eq "and replicated into storage" 3 "$(st_sql "SELECT count(*) FROM rows WHERE key LIKE 'via%'")"

# streams on every instance; a write checkpoint asked of instance 2 resolves through instance 1's
declare -a SPID
for k in 1 2 3; do
  curl -sN -X POST "$(inst_base "$k")/sync/stream" -H "Authorization: Token $tok" -H 'Content-Type: application/json' \
    -d "{\"client_id\":\"c$k\",\"raw_data\":true,\"buckets\":[]}" >"$T_TMP/stream$k.out" &
  SPID[k]=$!
  T_PIDS+=($!)
done
for k in 1 2 3; do for ((i = 0; i < 100; i++)); do grep -q checkpoint_complete "$T_TMP/stream$k.out" && break; sleep 0.1; done; done
wcp=$(curl -s "$(inst_base 2)/write-checkpoint2.json?client_id=c1" -H "Authorization: Token $tok" | jq -r '.data.write_checkpoint')
[[ "$wcp" =~ ^[0-9]+$ ]] && pass "instance 2 created write checkpoint $wcp for client c1" || fail "write checkpoint on instance 2" "$wcp"
for ((i = 0; i < 100; i++)); do grep -q "\"write_checkpoint\":\"$wcp\"" "$T_TMP/stream1.out" && break; sleep 0.1; done
grep -q "\"write_checkpoint\":\"$wcp\"" "$T_TMP/stream1.out" && pass "client c1's stream on instance 1 was sent write checkpoint $wcp" || fail "write checkpoint resolved on another instance" "$(tail -c 400 "$T_TMP/stream1.out")"
wcp3=$(curl -s "$(inst_base 1)/write-checkpoint2.json?client_id=c3" -H "Authorization: Token $tok" | jq -r '.data.write_checkpoint')
for ((i = 0; i < 100; i++)); do grep -q "\"write_checkpoint\":\"$wcp3\"" "$T_TMP/stream3.out" && break; sleep 0.1; done
grep -q "\"write_checkpoint\":\"$wcp3\"" "$T_TMP/stream3.out" && pass "and one asked of the leader reaches a stream on a standby" || fail "leader's write checkpoint on a standby's stream" "$(tail -c 400 "$T_TMP/stream3.out")"

# a rule change on the leader's file: one build, one switch, every stream on every instance moves
sed 's/^  my_lists:/  own_lists:/' "$T_TMP/sync-rules.yaml" >"$T_TMP/i1/rules.new" && mv "$T_TMP/i1/rules.new" "$T_TMP/i1/sync-rules.yaml"
for ((i = 0; i < 600; i++)); do [ "$(st_sql "SELECT v FROM state WHERE k = 'serving'")" = 2 ] && break; sleep 0.1; done
expect_eq "the storage serves rule version 2" 2 "$(st_sql "SELECT v FROM state WHERE k = 'serving'")"
for k in 1 2 3; do
  for ((i = 0; i < 200; i++)); do grep -q '"bucket":"2#own_lists' "$T_TMP/stream$k.out" && break; sleep 0.1; done
  grep -q '"bucket":"2#own_lists' "$T_TMP/stream$k.out" && pass "the stream on instance $k moved to version 2's buckets" || fail "stream $k moved" "$(tail -c 300 "$T_TMP/stream$k.out")"
  kill -0 "${SPID[k]}" 2>/dev/null && pass "over its open connection ($k)" || fail "stream $k stayed open" "ended"
done
all=$(cat "${INST_LOGS[@]}")
expect_eq "one build" 1 "$(grep -c 'msg="building a new rule version beside the serving one"' <<<"$all")"
expect_eq "one switch" 1 "$(grep -c 'msg="switched to the new rule version"' <<<"$all")"
for k in 2 3; do
  expect_match "standby $k followed the leader to version 2" 'msg="following the leader to a new rule version" version=2' "$(cat "${INST_LOG[k]}")"
  expect_match "standby $k says its own rules file differs" 'msg="this instance.s sync rules file differs from the rules the leader stored' "$(cat "${INST_LOG[k]}")"
done
psql -q "$db" -c "INSERT INTO lists VALUES ('l-alice-9', 'alice', 'after the switch')"
for k in 1 2 3; do
  for ((i = 0; i < 100; i++)); do grep -q 'after the switch' "$T_TMP/stream$k.out" && break; sleep 0.1; done
  grep -q 'after the switch' "$T_TMP/stream$k.out" && pass "changes stream on instance $k with the new rules" || fail "changes on $k after the switch" "$(tail -c 300 "$T_TMP/stream$k.out")"
done
converged "$T_TMP/i1/ferry.yaml" 30 && pass "storage equals the oracle of the new rules" || fail "oracle" "$(head -3 "$T_TMP/converge.diff")"
expect_eq "no errors in the logs" "" "$(grep 'level=error' <<<"$all" | head -3)"
for k in 1 2 3; do stop_pid "${INST_PID[k]}"; done

# refusals
cfgdir=$T_TMP/refuse; mkdir -p "$cfgdir"; cp "$T_TMP/sync-rules.yaml" "$cfgdir/"
refuse_config() { # refuse_config SOURCE_URI STORAGE_URI
  cat >"$cfgdir/ferry.yaml" <<YAML
log_level: info
http:
  listen: "127.0.0.1:$(free_port)"
postgres:
  uri: "$1"
replication:
  slot_prefix: refuse41
storage:
  kind: postgres
  uri: "$2"
auth:
  audience: [ferry]
  keys:
    - { kid: conf, alg: HS256, secret: "conformance-secret-conformance-secret-0123" }
YAML
}
db2=$(new_db inst41b)
psql -q "$db2" -f "$T_ROOT/tests/conformance/schema.sql" >/dev/null # FOR ALL TABLES
refuse_config "$db2" "$db2"
start_ferry "$cfgdir/ferry.yaml" || exit 1
port=$(sed -n 's/^ *listen: "127.0.0.1:\([0-9]*\)"/\1/p' "$cfgdir/ferry.yaml")
body=$(wait_match "http://127.0.0.1:$port/probes/readiness" 'would replicate' 20)
expect_match "a publication that would replicate Ferry's own tables is refused, with the fix" \
  'publication \\"ferry\\" would replicate Ferry.s own storage tables \(schema \\"ferry\\" of this database\); fix: publish only the application.s tables \(CREATE PUBLICATION ferry FOR TABLE \.\.\.\), or put storage in another database \(storage.uri\)"' "$body"
expect_eq "and nothing was replicated" 0 "$(psql -tAqX "$db2" -c "SELECT count(*) FROM ferry.rows")"
stop_pid "$FERRY_PID"

db3=$(new_db inst41c)
psql -q "$db3" -c "CREATE SCHEMA ferry; CREATE TABLE ferry.invoices (id int)"
refuse_config "$db" "$db3"
out=$("$FERRY_BIN" serve --config "$cfgdir/ferry.yaml" 2>&1 >/dev/null | grep '^ferry:\|^       ')
expect_eq "a schema holding other tables is refused, naming the fix" \
  "ferry: storage: storage schema \"ferry\" holds tables that are not Ferry's (1, and no Ferry layout)
       Set storage.schema to a schema of Ferry's own (it is created at the first start), or drop that schema if it is a leftover." "$out"
psql -q "$db3" -c "SET client_min_messages = warning; DROP SCHEMA ferry CASCADE; CREATE SCHEMA ferry; CREATE TABLE ferry.state (k text PRIMARY KEY, v text NOT NULL); INSERT INTO ferry.state VALUES ('layout', '2')"
out=$("$FERRY_BIN" serve --config "$cfgdir/ferry.yaml" 2>&1 >/dev/null | grep '^ferry:\|^       ')
expect_eq "a schema of a newer layout is refused, naming the fix" \
  "ferry: storage: storage schema \"ferry\" was written by a newer ferry (layout 2; this one knows layout 1)
       Run the newer ferry here as well (upgrade instances one at a time; a newer ferry reads an older layout, not the other way round), or set storage.schema to another schema." "$out"
