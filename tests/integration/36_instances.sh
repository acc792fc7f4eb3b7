#!/usr/bin/env bash
# 36_instances.sh -- three instances on one Postgres behind HAProxy; the leader killed five times
#
# Storage kind postgres, in the source database itself (schema ferry; the publication lists the
# application's tables). Raw protocol clients (alice, bob, carol) and the official @powersync/node
# client (alice) sync through HAProxy while a writer commits inserts, updates and deletes. Five
# times, at moments drawn from a printed seed (FERRY_TEST_SEED repeats a run), the leading
# instance is killed with SIGKILL: a standby must replicate again (deadline 60 s; the takeover
# times are printed, the goal of 5 s is a benchmark figure), and the killed instance is started
# again. Then: storage equals the oracle, every bucket checksum equals the sum of its ops, op ids
# increase and none is duplicated; the clients whose instance died reconnected through HAProxy
# to another one; every client equals the oracle, none reports a checksum failure, and none
# downloaded anything twice (a raw client received exactly the ops its buckets hold; the
# official client at most a fifth of its first download more).
source "$(dirname "$0")/../lib/testlib.sh"
source "$T_ROOT/tests/lib/instances.sh"
FERRY_TEST_STORAGE=postgres

command -v haproxy >/dev/null || { fail "haproxy is installed" "deploy/deps.sh installs it"; exit 1; }
"$T_ROOT/tests/lib/npm.sh" >/dev/null || { fail "the PowerSync client is installed" "tests/lib/npm.sh"; exit 1; }
seed=${FERRY_TEST_SEED:-$(( $(date +%s) % 100000 ))}
echo "  seed $seed (FERRY_TEST_SEED=$seed repeats this run)"
RANDOM=$seed

db=$(new_db inst36)
psql -q "$db" -f "$T_ROOT/tests/conformance/schema.sql" >/dev/null
psql -q "$db" -c "DROP PUBLICATION ferry; CREATE PUBLICATION ferry FOR TABLE announcements, lists, todos, members, org_docs"
cp "$T_ROOT/tests/conformance/sync-rules.yaml" "$T_TMP/sync-rules.yaml"
SLOT_PREFIX=inst36 inst_setup "$db" 3
for k in 1 2 3; do inst_start "$k" || exit 1; done
for k in 1 2 3; do wait_ready "${INST_PORT[k]}" 60 || { fail "instance $k ready" "$(curl -s "$(inst_base "$k")/probes/readiness")"; exit 1; }; done
pass "three instances on one storage are ready"
leader=$(inst_leader)
[ -n "$leader" ] && pass "one instance leads (i$leader, epoch $(inst_epoch))" || fail "one leads" "$(st_sql "SELECT v FROM state WHERE k = 'leader'")"
roles=$(for k in 1 2 3; do curl -s "$(inst_base "$k")/metrics" | sed -n 's/^ferry_storage_leader //p'; done | sort | tr '\n' ' ')
expect_eq "metrics: one leader and two standbys" "0 0 1 " "$roles"
haproxy_start || { fail "haproxy started" "$(cat "$T_TMP/haproxy.log")"; exit 1; }

# the clients
mkdir -p "$T_TMP/clients"
(cd "$T_ROOT/tests/conformance/node" && FERRY_ENDPOINT="http://127.0.0.1:$HAPROXY_PORT" FERRY_BIN="$FERRY_BIN" \
  FERRY_CONFIG="$T_TMP/i1/ferry.yaml" FERRY_PG_URI="$db" CONFORMANCE_TMP="$T_TMP/clients" \
  RAW_USERS=alice,bob,carol OFFICIAL_USER=alice OUT="$T_TMP/clients.json" STOP="$T_TMP/stop" \
  exec node tools/clients.mjs) >"$T_TMP/clients.log" 2>&1 &
T_PIDS+=($!)
clients_pid=$!
cj() { jq -r "$1" "$T_TMP/clients.json" 2>/dev/null; }
for ((i = 0; i < 300; i++)); do
  [ "$(cj '[.clients[] | select(.checkpoints > 0)] | length')" = 4 ] && break
  sleep 0.1
done
expect_eq "four clients synced through HAProxy" 4 "$(cj '[.clients[] | select(.checkpoints > 0)] | length')"
first_download=$(cj '.clients[] | select(.kind == "official") | .ops')
servers=$(cj '[.clients[].server] | unique | length')
[ "${servers:-0}" -ge 2 ] && pass "the clients are spread over the instances ($servers)" || fail "spread" "$(cj '[.clients[].server]')"

# a writer: inserts, updates and deletes in alice's, bob's and carol's lists until told to stop
(
  n=0
  while [ ! -f "$T_TMP/writer.stop" ]; do
    n=$((n + 1)); u=$(( n % 3 )); users=(alice bob carol); l="l-${users[u]}-$(( n % 5 + 1 ))"
    psql -qX "$db" -c "BEGIN; INSERT INTO todos VALUES ('w$n', '$l', 'written $n', false);
      UPDATE todos SET description = 'updated $n', completed = NOT completed WHERE id = 't-$l-$(( n % 40 + 1 ))';
      DELETE FROM todos WHERE id = 'w$((n - 7))'; COMMIT" >/dev/null 2>&1 || true
    echo "$n" >"$T_TMP/writer.n"
    sleep 0.02
  done
) &
T_PIDS+=($!)
writer_pid=$!

takeovers=()
for kill in 1 2 3 4 5; do
  sleep "$(( 1 + RANDOM % 4 )).$(( RANDOM % 10 ))"
  k=$(inst_leader)
  [ -n "$k" ] || { fail "kill $kill: the leader is known" "$(st_sql "SELECT v FROM state WHERE k = 'leader'")"; continue; }
  epoch=$(inst_epoch)
  on_k=$(cj "[.clients[] | select(.server == \"i$k\") | .name] | join(\" \")")
  declare -A conn_before=()
  for c in $on_k; do conn_before[$c]=$(cj ".clients[] | select(.name == \"$c\") | .connects"); done
  t0=$(date +%s%N)
  inst_kill "$k"
  psql -qX "$db" -c "INSERT INTO announcements VALUES ('kill$kill', 'after kill $kill')" >/dev/null
  ok=0
  for ((i = 0; i < 600; i++)); do
    if [ "$(inst_epoch)" -gt "$epoch" ] && [ "$(st_sql "SELECT count(*) FROM rows WHERE key = 'kill$kill'")" = 1 ]; then ok=1; break; fi
    sleep 0.1
  done
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  takeovers+=("$ms")
  now=$(inst_leader)
  [ $ok = 1 ] && pass "kill $kill of the leader i$k: i$now replicates again (${ms} ms)" || fail "kill $kill: a standby replicates again within 60 s" "epoch $(inst_epoch), leader $(st_sql "SELECT v FROM state WHERE k = 'leader'")"
  for c in $on_k; do
    back=0
    for ((i = 0; i < 300; i++)); do
      [ "$(cj ".clients[] | select(.name == \"$c\") | .connects")" -gt "${conn_before[$c]}" ] && [ "$(cj ".clients[] | select(.name == \"$c\") | .server")" != "i$k" ] && { back=1; break; }
      sleep 0.1
    done
    [ $back = 1 ] && pass "kill $kill: $c reconnected through HAProxy to $(cj ".clients[] | select(.name == \"$c\") | .server")" || fail "kill $kill: $c reconnected elsewhere" "$(cj ".clients[] | select(.name == \"$c\")")"
  done
  inst_start "$k" || fail "kill $kill: i$k starts again" "$(tail -3 "${INST_LOG[k]}")"
done
echo "  takeover times (kill to replicating again): ${takeovers[*]} ms"
touch "$T_TMP/writer.stop"
wait "$writer_pid"
writes=$(cat "$T_TMP/writer.n")
[ "$writes" -gt 20 ] && pass "the writer committed $writes transactions meanwhile" || fail "the writer ran" "$writes"

converged "$T_TMP/i1/ferry.yaml" 60 && pass "storage equals the oracle after five takeovers" || fail "oracle after takeovers" "$(head -5 "$T_TMP/converge.diff")"
checksums_ok "$T_TMP/i1/ferry.yaml" && pass "every bucket checksum equals the sum of its ops" || fail "checksums" mismatch
"$FERRY_BIN" debug dump --config "$T_TMP/i1/ferry.yaml" --ops >"$T_TMP/ops.jsonl"
expect_eq "no op id is duplicated" 0 "$(jq -r '.op.op_id' "$T_TMP/ops.jsonl" | sort | uniq -d | wc -l)"
expect_eq "op ids increase within every bucket" 0 "$(jq -r '"\(.bucket) \(.op.op_id)"' "$T_TMP/ops.jsonl" | awk '$1 == b && $2 + 0 <= prev { bad++ } { b = $1; prev = $2 + 0 } END { print bad + 0 }')"

touch "$T_TMP/stop"
for ((i = 0; i < 900; i++)); do kill -0 "$clients_pid" 2>/dev/null || break; sleep 0.1; done
for c in raw-alice raw-bob raw-carol official-alice; do
  expect_eq "$c equals the oracle" true "$(cj ".final[\"$c\"]")"
  expect_eq "$c saw no checksum failure" 0 "$(cj ".clients[] | select(.name == \"$c\") | .checksum_failures")"
done
for c in raw-alice raw-bob raw-carol; do
  got=$(cj ".clients[] | select(.name == \"$c\") | .ops"); want=$(cj ".clients[] | select(.name == \"$c\") | .expected_ops")
  expect_eq "$c received every op of its buckets once ($want), after $(cj ".clients[] | select(.name == \"$c\") | .connects") connections" "$want" "$got"
done
got=$(cj '.clients[] | select(.kind == "official") | .ops'); want=$(cj '.clients[] | select(.kind == "official") | .expected_ops')
[ "$got" -le $(( want + first_download / 5 )) ] && pass "the official client did not download again ($got ops received, its buckets hold $want, first download $first_download)" || fail "official client re-downloaded" "received $got, buckets $want, first $first_download"
# (a stream cut by a kill is reported as "terminated"; anything else is a problem)
expect_eq "the official client reported no sync problem but its cut connections" "" \
  "$(cj '.clients[] | select(.kind == "official") | .problems[] | select(test("terminated|fetch failed|ECONNRESET|socket") | not)')"
expect_eq "no errors in the logs" "" "$(cat "${INST_LOGS[@]}" | grep 'level=error' | grep -v 'replication stopped' | head -3)"
