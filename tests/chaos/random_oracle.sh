#!/usr/bin/env bash
# random_oracle.sh -- generated data, users and mutations against the SQL oracle, seed by seed
#
# For each seed, random_oracle.py generates the schema and first rows (values of every awkward
# kind), the users with their claims and client parameters, and a sequence of transactions.
# A fresh database and ferry get the rows; a raw client per user and a libferry replica for two
# users connect; the transactions are applied (in bursts, so ferry streams them incrementally);
# then every user's replica must equal what the rules select, computed two independent ways:
# by SQL in Postgres (random_oracle.py expect: the rules' conditions as SQL, the values as
# rules/README.md says they convert), and by `ferry debug oracle` with the user's buckets. Plus
# the storage oracle (chaos_lib.sh). A failing seed prints itself and the command replaying it.
#
# CHAOS_MODE=short: 2 seeds of 120 transactions and 4 users (make check); long: 30 seeds of 600
# transactions and 8 users. SEEDS="s1 s2 ..." picks the seeds.
source "$(dirname "$0")/../lib/testlib.sh"
source "$T_ROOT/tests/chaos/chaos_lib.sh"
# count this seed's failures (fail is testlib's; wrapped so a seed knows it failed)
eval "t_fail_orig() $(declare -f fail | tail -n +2)"
fail() { SEED_FAILED=$((SEED_FAILED + 1)); t_fail_orig "$@"; }
SEED_FAILED=0

if long; then nseeds=30 steps=600 nusers=8; else nseeds=2 steps=120 nusers=4; fi
base_seed=$(( $(date +%s) % 100000 ))
SEEDS=${SEEDS:-$(for ((i = 0; i < nseeds; i++)); do echo $((base_seed + i)); done)}
pgenv=$("$T_ROOT/tests/lib/pg.sh" start oracle) || { fail "own postgres starts" "pg.sh failed"; exit 1; }
own_pgtmp=$(echo "$pgenv" | sed -n 's/^PGTMP=//p')
own_uri=$(echo "$pgenv" | sed -n 's/^FERRY_PG_URI=//p')
trap 't_cleanup; "$T_ROOT/tests/lib/pg.sh" stop "$own_pgtmp"' EXIT
GEN=$T_ROOT/tests/chaos/random_oracle.py
seeds_failed=()
checked=0

for seed in $SEEDS; do
  echo "  -- seed $seed"
  d=$T_TMP/seed-$seed
  mkdir -p "$d"
  python3 "$GEN" gen "$seed" "$steps" "$nusers" "$d" || { fail "seed $seed: generate" "random_oracle.py gen failed"; continue; }
  psql -q "$own_uri" -c "CREATE DATABASE s$seed" || continue
  CHAOS_DB=${own_uri%/*}/s$seed
  psql -q -v ON_ERROR_STOP=1 "$CHAOS_DB" -f "$d/schema.sql" >"$d/schema.log" 2>&1 ||
    { fail "seed $seed: the first rows load" "$(tail -3 "$d/schema.log")"; continue; }
  CHAOS_PORT=$(free_port)
  CHAOS_CFG=$d/ferry.yaml
  CHAOS_RULES=$d/sync-rules.yaml
  cp "$d/rules.yaml" "$CHAOS_RULES"
  SLOT_PREFIX=o$seed replication_config "$CHAOS_CFG" "$CHAOS_PORT" "$CHAOS_DB"
  SEED_FAILED=0
  start_ferry "$CHAOS_CFG" || continue
  wait_ready "$CHAOS_PORT" 60 || { fail "seed $seed: ready" "$(curl -s "http://127.0.0.1:$CHAOS_PORT/probes/readiness")"; stop_pid "$FERRY_PID" 10; continue; }
  # each user's claims and parameters
  RAW_PIDS=() SDK_PIDS=() CLAIMS_OF=()
  users=$(jq -r 'keys[]' "$d/users.json")
  for u in $users; do
    CLAIMS_OF[$u]=$(jq -r --arg u "$u" '.[$u].claims | to_entries[] | "\(.key)=\(.value | if type == "string" then . else tojson end)"' "$d/users.json")
    raw_start "$seed-$u" "$u" "$(jq -c --arg u "$u" '.[$u].params' "$d/users.json")"
  done
  spec="items:owner,team_id=i,project,title,n4=i,n8=i,f8=r,num,flag=i,js,jb,tags,nums,ts,big;docs:region,tag,public=i,title,big"
  for u in u0 u1; do sdk_start "$seed-$u" "$u" "$spec" "$(jq -c --arg u "$u" '.[$u].params' "$d/users.json")"; done
  # the transactions, in five bursts
  total=$(wc -l <"$d/steps.sql")
  per=$(( (total + 4) / 5 ))
  for ((part = 0; part < 5; part++)); do
    sed -n "$((part * per + 1)),$(((part + 1) * per))p" "$d/steps.sql" | psql -q "$CHAOS_DB" >>"$d/steps.log" 2>&1
    sleep 0.5
  done
  grep -q 'ERROR' "$d/steps.log" && fail "seed $seed: the transactions apply" "$(grep -m2 ERROR "$d/steps.log")"
  oracle_ok "$CHAOS_CFG" "seed $seed" 90
  clients_ok "seed $seed (rules oracle)" 90
  # the SQL oracle
  for u in $users; do
    python3 "$GEN" expect "$d" "$CHAOS_DB" "$u" "$d/expect-$u.txt" || { fail "seed $seed: SQL oracle of $u" "expect failed"; continue; }
    out=""
    for ((i = 0; i < 60; i++)); do out=$(python3 "$GEN" check-raw "$d/expect-$u.txt" "$T_TMP/raw-$seed-$u.json") && break; sleep 0.5; done
    [ -z "$out" ] && pass "seed $seed: $u's raw replica equals the SQL of its rules" ||
      fail "seed $seed: $u's raw replica equals the SQL of its rules" "$(echo "$out" | head -3)"
    checked=$((checked + 1))
  done
  for u in u0 u1; do
    echo sql >"$d/sql-bucket"
    out=$(python3 "$CHAOS_DIR/compare.py" sdk "$d/expect-$u.txt" "$d/sql-bucket" "${SDK_DBS[$seed-$u]}" "$spec")
    [ -z "$out" ] && pass "seed $seed: $u's libferry replica equals the SQL of its rules" ||
      fail "seed $seed: $u's libferry replica equals the SQL of its rules" "$(echo "$out" | head -3)"
  done
  for p in "${RAW_PIDS[@]}" "${SDK_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  stop_pid "$FERRY_PID" 10
  # the seed's slot and database go (30 seeds would exhaust max_replication_slots); a failed
  # seed keeps its database for the replay's inspection
  psql -q "$own_uri" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = 's$seed' AND NOT active" >/dev/null 2>&1
  [ "$SEED_FAILED" = 0 ] && psql -q "$own_uri" -c "DROP DATABASE IF EXISTS s$seed" >/dev/null 2>&1
  if [ "$SEED_FAILED" != 0 ]; then
    seeds_failed+=("$seed")
    echo "  seed $seed FAILED; replay: SEEDS=$seed CHAOS_MODE=$CHAOS_MODE T_KEEP=1 bash tests/chaos/random_oracle.sh"
  fi
done
figure seeds "$(echo $SEEDS | wc -w)" count
figure transactions_per_seed "$steps" count
figure users_checked_against_sql "$checked" count
expect_eq "no seed failed" "" "${seeds_failed[*]}"
