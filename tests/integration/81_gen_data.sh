#!/usr/bin/env bash
# 81_gen_data.sh -- the load data generator makes a data set ferry replicates as the rules say
source "$(dirname "$0")/../lib/testlib.sh"
db=$(new_db gen81)
out=$("$T_ROOT/tests/load/gen_data.sh" --pg "$db" --users 7 --orgs 3 --rows 2000 --row-bytes 64 \
      --rules "$T_TMP/sync-rules.yaml" 2>&1); rc=$?
expect_eq "gen_data.sh succeeds" "0" "$rc"
expect_eq "it makes the rows asked for, of the size asked for" "2000|64|7" \
  "$(psql -Atc "SELECT count(*), min(length(payload)), count(DISTINCT owner) FROM load_items" "$db")"
expect_eq "every user is a member of one org" "7|3" \
  "$(psql -Atc "SELECT count(*), count(DISTINCT org_id) FROM load_members" "$db")"
"$FERRY_BIN" rules check "$T_TMP/sync-rules.yaml" >/dev/null
expect_eq "the generated rules compile" "0" "$?"
port=$(free_port)
replication_config "$T_TMP/ferry.yaml" "$port" "$db"
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 && pass "ferry replicates the generated set" || fail "ready" "not ready"
converged "$T_TMP/ferry.yaml" 60 && pass "storage equals the rules over the generated set" || fail "converged" "$(head -3 "$T_TMP/converge.diff")"
"$T_ROOT/tests/load/gen_data.sh" --pg "$db" --rows 0 >/dev/null 2>&1
expect_eq "bad counts are refused with exit 2" "2" "$?"
