#!/usr/bin/env bash
# 37_instances_cut.sh -- a leader cut off from the storage database (half-open) gives way
#
# Postgres (source and storage) runs in a network namespace of its own (tests/lib/netns.sh). The
# leading instance runs in a second namespace, joined by a veth pair; the two standbys run beside
# Postgres. Then every packet between the leader and Postgres is dropped: its connections stay
# open on both ends (no reset, no FIN) and go silent. With storage.lock_timeout 5, Postgres ends
# the leader's session within about that (TCP keepalives and tcp_user_timeout on the server's
# side), which frees the lead; a standby takes over, ends the old walsender and replicates. The
# leader notices on its side too (it stops leading: metrics say standby). The time from the cut
# to replication resuming is printed (docs/operations.md states the figure). When the network
# heals the old leader serves as a standby; storage equals the oracle and no op id is reused.
source "$(dirname "$0")/../lib/testlib.sh"
source "$T_ROOT/tests/lib/instances.sh"
source "$T_ROOT/tests/lib/netns.sh"
FERRY_TEST_STORAGE=postgres

[ "$(id -u)" = 0 ] || { fail "runs as root (network namespaces)" "uid $(id -u)"; exit 1; }
netns_create || { fail "network namespaces" "ip netns / nft failed"; exit 1; }
pg_tmp=
cut_cleanup() {
  t_cleanup
  [ -n "$pg_tmp" ] && PG_NETNS=$NS_PG "$T_ROOT/tests/lib/pg.sh" stop "$pg_tmp"
  netns_destroy
}
trap cut_cleanup EXIT
pgenv=$(PG_NETNS=$NS_PG PG_LISTEN=$NS_PG_ADDR PG_HBA_NET=10.77.0.0/30 "$T_ROOT/tests/lib/pg.sh" start cut) || { fail "postgres in its namespace" "pg.sh failed"; exit 1; }
pg_tmp=$(echo "$pgenv" | sed -n 's/^PGTMP=//p')
db=$(echo "$pgenv" | sed -n 's/^FERRY_PG_URI=//p')
pg() { netns_pg psql -qtAX "$db" "$@"; }
st_sql() { netns_pg psql -tAqX "$db" -c "SET search_path = ferry" -c "$1"; }
pg -f "$T_ROOT/tests/conformance/schema.sql" >/dev/null
pg -c "DROP PUBLICATION ferry; CREATE PUBLICATION ferry FOR TABLE announcements, lists, todos, members, org_docs"
cp "$T_ROOT/tests/conformance/sync-rules.yaml" "$T_TMP/sync-rules.yaml"
LOCK_TIMEOUT=5 SLOT_PREFIX=cut37 inst_setup "$db" 3
in_ns() { # in_ns K CMD...: where instance K runs
  local ns=$NS_PG
  [ "$1" = 1 ] && ns=$NS_FY
  shift
  ip netns exec "$ns" "$@"
}
FERRY_NETNS=$NS_FY inst_start 1 || exit 1
FERRY_NETNS=$NS_FY wait_ready "${INST_PORT[1]}" 60 || { fail "the first instance is ready" "$(tail -5 "${INST_LOG[1]}")"; exit 1; }
expect_eq "the instance across the veth pair leads" 1 "$(inst_leader)"
for k in 2 3; do FERRY_NETNS=$NS_PG inst_start "$k" || exit 1; done
for k in 2 3; do FERRY_NETNS=$NS_PG wait_ready "${INST_PORT[k]}" 60 || fail "standby $k ready" "$(tail -3 "${INST_LOG[k]}")"; done
pg -c "INSERT INTO announcements VALUES ('before', 'before the cut')"
for ((i = 0; i < 100; i++)); do [ "$(st_sql "SELECT count(*) FROM rows WHERE key = 'before'")" = 1 ] && break; sleep 0.1; done
expect_eq "the leader replicates" 1 "$(st_sql "SELECT count(*) FROM rows WHERE key = 'before'")"
epoch=$(inst_epoch)

netns_fault drop
t0=$(date +%s%N)
pg -c "INSERT INTO announcements VALUES ('cut', 'during the cut')"
ok=0
for ((i = 0; i < 600; i++)); do
  if [ "$(inst_epoch)" -gt "$epoch" ] && [ "$(st_sql "SELECT count(*) FROM rows WHERE key = 'cut'")" = 1 ]; then ok=1; break; fi
  sleep 0.1
done
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
now=$(inst_leader)
[ $ok = 1 ] && [ "$now" != 1 ] && pass "a standby (i$now) replicates again ${ms} ms after the leader was cut off" || fail "a standby took over within 60 s" "epoch $(inst_epoch), leader $(st_sql "SELECT v FROM state WHERE k = 'leader'")"
echo "  cut to replicating again: $ms ms (storage.lock_timeout 5)"
stepped=0
for ((i = 0; i < 300; i++)); do
  [ "$(in_ns 1 curl -s --max-time 1 "http://127.0.0.1:${INST_PORT[1]}/metrics" | sed -n 's/^ferry_storage_leader //p')" = 0 ] && { stepped=1; break; }
  sleep 0.1
done
ms2=$(( ($(date +%s%N) - t0) / 1000000 ))
[ $stepped = 1 ] && pass "the cut-off leader stopped leading on its own side too (${ms2} ms after the cut)" || fail "the cut-off leader stepped down" "$(grep -m2 'lead' "${INST_LOG[1]}")"
expect_match "its log says why" 'no longer leads the storage' "$(cat "${INST_LOG[1]}")"

netns_fault none
FERRY_NETNS=$NS_FY wait_ready "${INST_PORT[1]}" 60 && pass "after the network heals the old leader serves again" || fail "old leader ready again" "$(in_ns 1 curl -s "http://127.0.0.1:${INST_PORT[1]}/probes/readiness")"
expect_eq "it serves as a standby" 0 "$(in_ns 1 curl -s "http://127.0.0.1:${INST_PORT[1]}/metrics" | sed -n 's/^ferry_storage_leader //p')"
pg -c "INSERT INTO announcements VALUES ('after', 'after the cut'); UPDATE todos SET completed = NOT completed WHERE list_id = 'l-bob-1'"
FERRY_NETNS=$NS_PG converged "$T_TMP/i2/ferry.yaml" 60 && pass "storage equals the oracle" || fail "oracle" "$(head -5 "$T_TMP/converge.diff")"
FERRY_NETNS=$NS_PG checksums_ok "$T_TMP/i2/ferry.yaml" && pass "every bucket checksum equals the sum of its ops" || fail "checksums" mismatch
in_ns 2 "$FERRY_BIN" debug dump --config "$T_TMP/i2/ferry.yaml" --ops >"$T_TMP/ops.jsonl"
expect_eq "no op id is duplicated" 0 "$(jq -r '.op.op_id' "$T_TMP/ops.jsonl" | sort | uniq -d | wc -l)"
