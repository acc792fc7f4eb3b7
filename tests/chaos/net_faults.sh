#!/usr/bin/env bash
# net_faults.sh -- the network between ferry and Postgres breaks: silence, loss, resets, latency
#
# Postgres runs in one network namespace, ferry and its clients in another, joined by a veth
# pair (tests/lib/netns.sh); faults are nftables rules in ferry's namespace. A writer commits
# through Postgres's unix socket the whole time, and a raw client and a libferry replica stay
# connected to ferry. In turn:
#   drop    every packet between ferry and Postgres is dropped (a half-open connection: no
#           error, no data). Ferry must notice within replication.timeout and say so
#           (readiness 503, the diagnostics' "source"), write-back and write checkpoints must
#           answer 503 within postgres.timeout instead of hanging, and once the network is back
#           ferry reconnects (ending its own stale walsender) and readiness recovers.
#   loss    5 % of the packets dropped at random, both ways.
#   reset   a share of the packets answered with a TCP reset, both ways.
#   delay   ferry restarted behind tests/lib/delay_relay.py adding 300 ms each way.
# Then the oracle (chaos_lib.sh). Only outcomes are asserted, with deadlines of 60 s; the times
# (notice, answer, recover) are figures.
source "$(dirname "$0")/../lib/testlib.sh"
source "$T_ROOT/tests/lib/netns.sh"
source "$T_ROOT/tests/chaos/chaos_lib.sh"

[ "$(id -u)" -eq 0 ] || { fail "network namespaces need root" "not root"; exit 1; }
netns_create || { fail "network namespaces are made" "ip netns / nft failed"; exit 1; }
own_pgtmp=
trap 't_cleanup; [ -n "$own_pgtmp" ] && PG_NETNS=$NS_PG "$T_ROOT/tests/lib/pg.sh" stop "$own_pgtmp"; netns_destroy' EXIT
pgenv=$(PG_NETNS=$NS_PG PG_LISTEN=$NS_PG_ADDR PG_HBA_NET=10.77.0.0/30 "$T_ROOT/tests/lib/pg.sh" start net) ||
  { fail "postgres starts in its namespace" "pg.sh failed"; exit 1; }
own_pgtmp=$(echo "$pgenv" | sed -n 's/^PGTMP=//p')
own_port=$(echo "$pgenv" | sed -n 's/^PGPORT=//p')
export FERRY_NETNS=$NS_FY
lpsql() { psql -h "$own_pgtmp" -p "$own_port" -U postgres -v ON_ERROR_STOP=1 "$@"; }
lpsql -q -d postgres -c "CREATE DATABASE app" || exit 1
# storage in Postgres (FERRY_TEST_STORAGE=postgres): a database beside app on the same server, so
# the faults cut ferry's storage connections too
[ "$FERRY_TEST_STORAGE" = postgres ] && { lpsql -q -d postgres -c "CREATE DATABASE app_st" || exit 1; }
lpsql -q -d app <<'SQL' || exit 1
CREATE TABLE items (id text PRIMARY KEY, owner text, n int, note text);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO items SELECT 'seed' || i, 'u' || (i % 3), i, 'seed ' || i FROM generate_series(1, 300) i;
SQL

if long; then rtimeout=10; hold=30; noisy=60; else rtimeout=6; hold=0; noisy=10; fi
CHAOS_DB=postgresql://postgres@$NS_PG_ADDR:$own_port/app
CHAOS_PORT=$(free_port)
CHAOS_CFG=$T_TMP/ferry.yaml
CHAOS_RULES=$T_TMP/sync-rules.yaml
cat >"$CHAOS_RULES" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner, n, note FROM items WHERE owner = bucket.owner
  everything:
    data:
      - SELECT id, owner, n, note FROM items
write_rules:
  items:
    operations: [insert, update, delete]
    columns: [id, owner, n, note]
YAML
config() { # config URI [PG_TIMEOUT]: the ferry.yaml for ferry reaching Postgres at URI
  SLOT_PREFIX=net replication_config "$CHAOS_CFG" "$CHAOS_PORT" "$1"
  # the test reads the storage over the server's socket (its address is inside the namespaces);
  # ferry reaches its storage at the server's own address, also when the source is behind the
  # delaying relay (opening the storage takes a few dozen round trips: at 600 ms each, start-up
  # alone would outlast the test's wait)
  if [ "$FERRY_TEST_STORAGE" = postgres ]; then
    T_STORAGE_URI="postgresql://postgres@/app_st?host=$own_pgtmp&port=$own_port"
    sed -i "s|^  uri: \".*_st\"|  uri: \"postgresql://postgres@$NS_PG_ADDR:$own_port/app_st\"|" "$CHAOS_CFG"
  fi
  cat >>"$CHAOS_CFG" <<YAML
admin:
  token: chaos-admin-token
YAML
  sed -i "s/^replication:/replication:\n  timeout: $rtimeout/; s|^postgres:|postgres:\n  timeout: ${2:-3}|" "$CHAOS_CFG"
}
config "$CHAOS_DB"
start_ferry "$CHAOS_CFG" || exit 1
wait_ready "$CHAOS_PORT" 60 || { fail "ready" "$(fcurl -s "http://127.0.0.1:$CHAOS_PORT/probes/readiness")"; exit 1; }
base=http://127.0.0.1:$CHAOS_PORT
raw_start r1 u1
sdk_start s2 u2 "items:owner,n=i,note"

# the writer: inserts, updates and deletes through the unix socket, whatever the network does
writer() {
  local i=0
  while [ ! -e "$T_TMP/stop-writer" ]; do
    i=$((i + 1))
    lpsql -q -d app -c "INSERT INTO items VALUES ('w$i', 'u$((i % 3))', $i, 'written $i');
      UPDATE items SET n = n + 1, note = 'updated at $i' WHERE id = 'seed$((i % 300 + 1))';
      DELETE FROM items WHERE id = 'w$((i - 7))' AND $((i % 5)) = 0" >/dev/null 2>&1 || true
    sleep 0.05
  done
}
writer &
T_PIDS+=("$!")
wpid=$!

readiness() { fcurl -s -o "$T_TMP/ready.json" -w '%{http_code}' "$base/probes/readiness"; }
wait_code() { # wait_code WANT SECS: poll readiness until it answers WANT
  local until=$(($(date +%s) + $2))
  while [ "$(date +%s)" -lt "$until" ]; do [ "$(readiness)" = "$1" ] && return 0; sleep 0.1; done
  return 1
}
diag() { fcurl -s -H "Authorization: Bearer chaos-admin-token" "$base/api/admin/diagnostics"; }
tok=$(mint u1)
write_batch() { # write_batch N: one write-back of row "wb-N"; prints "STATUS MILLISECONDS"
  local t0 out; t0=$(now_ms)
  out=$(fcurl -s -o /dev/null -w '%{http_code}' --max-time 90 -X POST -H "Authorization: Bearer $tok" \
    -H 'Content-Type: application/json' "$base/api/write" \
    -d "{\"client_id\":\"net\",\"batch\":[{\"op_id\":$1,\"op\":\"PUT\",\"type\":\"items\",\"id\":\"wb-$1\",\"data\":{\"owner\":\"u1\",\"n\":$1,\"note\":\"write-back\"}}]}")
  echo "$out $(($(now_ms) - t0))"
}
wcp() { # a write checkpoint; prints "STATUS MILLISECONDS"
  local t0 out; t0=$(now_ms)
  out=$(fcurl -s -o /dev/null -w '%{http_code}' --max-time 90 -H "Authorization: Bearer $tok" \
    "$base/write-checkpoint2.json?client_id=net")
  echo "$out $(($(now_ms) - t0))"
}
read -r code ms <<<"$(write_batch 1)"
expect_eq "write-back works before the faults" 200 "$code"

# ---- drop: a silent network ----
t0=$(now_ms)
netns_fault drop
if wait_code 503 60; then
  figure silent_source_noticed_ms $(($(now_ms) - t0)) ms
  pass "a silent source turns readiness 503"
else
  fail "a silent source turns readiness 503" "$(cat "$T_TMP/ready.json")"
fi
expect_match "readiness says the source is silent" 'replication source.*sent nothing for [0-9]+ s' "$(cat "$T_TMP/ready.json")"
# with storage behind the same link the instance may already have let go of the storage's lead
# (a standby does not judge the source): then the diagnostics name the storage as unreachable
if [ "$FERRY_TEST_STORAGE" = postgres ]; then
  expect_match "the diagnostics say so too (the source silent, or the storage unreachable)" \
    '"source":\{"state":"(silent|unreachable)","reason":"[^"]+"|"storage":\{"kind":"postgres"[^}]*"reachable":false' "$(diag)"
else
  expect_match "the diagnostics say so too" '"source":\{"state":"(silent|unreachable)","reason":"[^"]+"' "$(diag)"
fi
read -r code ms <<<"$(write_batch 2)"
expect_eq "write-back answers 503 on a dead connection (not hanging)" 503 "$code"
figure write_back_503_ms "$ms" ms
read -r code ms <<<"$(wcp)"
expect_eq "a write checkpoint answers 503 on a dead connection" 503 "$code"
figure write_checkpoint_503_ms "$ms" ms
[ "$hold" -gt 0 ] && sleep "$hold"
t0=$(now_ms)
netns_fault none
if wait_code 200 60; then
  figure silent_source_recovered_ms $(($(now_ms) - t0)) ms
  pass "readiness recovers once the network is back"
else
  fail "readiness recovers once the network is back" "$(cat "$T_TMP/ready.json")"
fi
expect_match "the diagnostics say the source is healthy again" '"source":\{"state":"ok","reason":null' "$(diag)"
read -r code ms <<<"$(write_batch 3)"
expect_eq "write-back works again" 200 "$code"

# ---- loss and resets ----
for fault in "loss 5" "reset 2"; do
  netns_fault $fault
  sleep "$noisy"
  netns_fault none
  if wait_code 200 60; then pass "ready after ${fault% *}"; else fail "ready after ${fault% *}" "$(cat "$T_TMP/ready.json")"; fi
done

# ---- 300 ms each way, through the delaying relay ----
relay_port=$(free_port)
echo 300 >"$T_TMP/delay_ms"
t_bg python3 "$T_ROOT/tests/lib/delay_relay.py" "127.0.0.1:$relay_port" "$NS_PG_ADDR:$own_port" 300 "$T_TMP/delay_ms" >"$T_TMP/relay.log" 2>&1 &
T_PIDS+=("$!")
for ((i = 0; i < 100; i++)); do grep -q listening "$T_TMP/relay.log" && break; sleep 0.1; done
stop_pid "$FERRY_PID" 10
config "postgresql://postgres@127.0.0.1:$relay_port/app" 10 # several round trips of 600 ms
start_ferry "$CHAOS_CFG" || exit 1
wait_code 200 60 && pass "ready behind 300 ms of latency" || fail "ready behind 300 ms of latency" "$(cat "$T_TMP/ready.json")"
read -r code ms <<<"$(write_batch 4)"
expect_eq "write-back works behind 300 ms of latency" 200 "$code"
figure write_back_at_300ms_first_ms "$ms" ms # a new connection: prepares its statements
# each worker's connection prepares its statements on its first batch (postgres.pool_size of
# them, taken in no set order): the fastest of eight batches is the steady cost of 600 ms round
# trips, the slowest one that prepared
times=()
for b in 5 6 7 8 9 10 11 12; do
  read -r code ms <<<"$(write_batch $b)"
  [ "$code" = 200 ] || fail "write-back $b works behind 300 ms of latency" "$code"
  times+=("$ms")
done
figure write_back_at_300ms_min_ms "$(printf '%s\n' "${times[@]}" | sort -n | head -1)" ms
figure write_back_at_300ms_max_ms "$(printf '%s\n' "${times[@]}" | sort -n | tail -1)" ms
t0=$(now_ms)
lpsql -q -d app -c "INSERT INTO items VALUES ('marker', 'u1', 0, 'latency marker')"
for ((i = 0; i < 600; i++)); do
  [ "$(storage_query "SELECT count(*) FROM rows WHERE key = 'marker'" 2>/dev/null)" = 1 ] && break
  sleep 0.1
done
figure change_to_storage_at_300ms_ms $(($(now_ms) - t0)) ms
sleep "$noisy"

figure network_faults 4 count # silence, loss, resets, latency
# ---- the oracle ----
touch "$T_TMP/stop-writer"
wait "$wpid"
oracle_ok "$CHAOS_CFG" "after the network faults" 60
clients_ok "after the network faults" 60
# the walsender ferry ended may need one TCP retransmission interval (tens of seconds after a long
# silence) to notice and exit: ferry retries meanwhile; readiness recovering within its deadline
# above is the check, the retries are a figure
figure stale_walsender_retries "$(grep -h -c 'is still held by this process' "$T_TMP"/ferry.*.log | awk '{n += $1} END {print n + 0}')" count
stop_pid "$FERRY_PID" 10
expect_eq "ferry stops cleanly" 0 "$STOP_RC"
