#!/usr/bin/env bash
# kill_loop.sh -- kill -9 of ferry at random moments, over and over, while everything happens
#
# A writer mixes inserts, updates (some leaving a TOASTed value unchanged), deletes, values
# large enough to be TOASTed and, now and then, a TRUNCATE (of a table of events); a write-back client posts batches
# (retrying each until it is answered, as SDKs do); compaction runs every few seconds and is also
# asked for right before some kills; the rules file changes every few rounds, so a new rule
# version is built (snapshot and all) beside the serving one. Ferry is killed with SIGKILL after
# a random time each round (the first rounds land in the initial snapshot) and started again at
# once. A raw client and a libferry replica stay connected throughout (reconnecting after each
# kill). Afterwards: the oracle (chaos_lib.sh), every write-back batch applied exactly once, and
# no sanitizer report. Figures: kills by what ferry was doing, time from start to ready after a
# restart (median, max), write-back batches retried.
#
# CHAOS_MODE=short: 8 kills (make check); long: 100 (make chaos). KILLS=N overrides; SEED=N
# replays a run's random choices (the seed is printed).
source "$(dirname "$0")/../lib/testlib.sh"
source "$T_ROOT/tests/chaos/chaos_lib.sh"

if long; then kills=${KILLS:-100}; rows=30000; else kills=${KILLS:-8}; rows=6000; fi
SEED=${SEED:-$(( $(date +%s) % 100000 ))}
RANDOM=$SEED
echo "  seed $SEED (replay: SEED=$SEED CHAOS_MODE=$CHAOS_MODE bash tests/chaos/kill_loop.sh)"

pgenv=$("$T_ROOT/tests/lib/pg.sh" start kill) || { fail "own postgres starts" "pg.sh failed"; exit 1; }
own_pgtmp=$(echo "$pgenv" | sed -n 's/^PGTMP=//p')
own_uri=$(echo "$pgenv" | sed -n 's/^FERRY_PG_URI=//p')
trap 't_cleanup; "$T_ROOT/tests/lib/pg.sh" stop "$own_pgtmp"' EXIT
psql -q "$own_uri" -c "CREATE DATABASE app" || exit 1
CHAOS_DB=${own_uri%/*}/app
lpsql() { psql -q -v ON_ERROR_STOP=1 "$CHAOS_DB" "$@"; }
lpsql <<SQL || exit 1
CREATE TABLE items (id int PRIMARY KEY, owner text, grp int, v text, big text);
CREATE TABLE members (user_id text, grp int, PRIMARY KEY (user_id, grp));
CREATE TABLE notes (id text PRIMARY KEY, owner text, body text);
CREATE TABLE events (id serial PRIMARY KEY, owner text, what text);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO items SELECT i, 'u' || (i % 4), i % 10, 'v' || i,
  CASE WHEN i % 50 = 0 THEN (SELECT string_agg(md5(i::text || g::text), '') FROM generate_series(1, 120) g) END
  FROM generate_series(1, $rows) i;
INSERT INTO members VALUES ('u1', 1), ('u1', 2), ('u2', 2), ('u2', 3), ('u3', 5);
SQL

CHAOS_PORT=$(free_port)
CHAOS_CFG=$T_TMP/ferry.yaml
CHAOS_RULES=$T_TMP/sync-rules.yaml
rules_a='bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner, grp, v, big FROM items WHERE owner = bucket.owner
      - SELECT id, owner, body FROM notes WHERE owner = bucket.owner
      - SELECT id, owner, what FROM events WHERE owner = bucket.owner
  by_grp:
    parameters: SELECT grp FROM members WHERE user_id = request.user_id()
    data:
      - SELECT id, owner, grp, v, big FROM items WHERE grp = bucket.grp
write_rules:
  notes:
    operations: [insert, update, delete]
    columns: [id, owner, body]
    check: "new.owner = request.user_id()"'
# rules B: the same buckets plus one more, so a build makes new buckets and moves clients
rules_b=$(printf '%s\n' "$rules_a" | sed '/^write_rules:/,$d'; printf '  everyone_notes:\n    data:\n      - SELECT id, owner, body FROM notes\n'; printf '%s\n' "$rules_a" | sed -n '/^write_rules:/,$p')
printf '%s\n' "$rules_a" >"$CHAOS_RULES"
SNAPSHOT_CHUNK_ROWS=500 SLOT_PREFIX=kill replication_config "$CHAOS_CFG" "$CHAOS_PORT" "$CHAOS_DB"
sed -i 's/^replication:/replication:\n  compact_interval: 3/' "$CHAOS_CFG"
printf 'admin:\n  token: chaos-admin-token\n' >>"$CHAOS_CFG"
base=http://127.0.0.1:$CHAOS_PORT
logs=()

# ---- the writer (one psql session; Postgres is never killed here) ----
writer_sql() {
  local i=0 k
  while [ ! -e "$T_TMP/stop" ]; do
    i=$((i + 1)); k=$((RANDOM % rows + 1))
    case $((RANDOM % 10)) in
      0 | 1 | 2) echo "INSERT INTO items VALUES ($((rows + i)), 'u$((i % 4))', $((i % 10)), 'new $i', NULL) ON CONFLICT DO NOTHING;" ;;
      3 | 4) echo "UPDATE items SET v = v || '.', grp = $((RANDOM % 10)) WHERE id = $k;" ;; # big unchanged
      5) echo "UPDATE items SET big = (SELECT string_agg(md5('$i' || g::text), '') FROM generate_series(1, 120) g) WHERE id = $k;" ;;
      6) echo "DELETE FROM items WHERE id = $k;" ;;
      7) echo "BEGIN; UPDATE items SET owner = 'u$((RANDOM % 4))' WHERE id = $k; INSERT INTO members VALUES ('u$((RANDOM % 4))', $((RANDOM % 10))) ON CONFLICT DO NOTHING; COMMIT;" ;;
      8) echo "DELETE FROM members WHERE user_id = 'u$((RANDOM % 4))' AND grp = $((RANDOM % 10));" ;;
      9) [ $((i % 13)) -eq 0 ] && echo "TRUNCATE events;" || echo "INSERT INTO events (owner, what) VALUES ('u$((i % 4))', 'event $i');" ;;
    esac
    echo "SELECT pg_sleep(0.02);"
  done
}
writer_sql | psql -q "$CHAOS_DB" >"$T_TMP/writer.log" 2>&1 &
T_PIDS+=("$!")
wpid=$!

# ---- write-back batches, each retried until answered 200 (ferry_write_log makes it once) ----
writeback() {
  local tok b=0 code tries=0
  tok=$(mint u1)
  while [ ! -e "$T_TMP/stop" ]; do
    b=$((b + 1))
    body="{\"client_id\":\"kl\",\"batch\":[{\"op_id\":$((2 * b - 1)),\"op\":\"PUT\",\"type\":\"notes\",\"id\":\"n$b\",\"data\":{\"owner\":\"u1\",\"body\":\"note $b\"}},{\"op_id\":$((2 * b)),\"op\":\"PATCH\",\"type\":\"notes\",\"id\":\"n$b\",\"data\":{\"body\":\"note $b, edited\"}}]}"
    while :; do
      touch "$T_TMP/wb-inflight"
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X POST -H "Authorization: Bearer $tok" \
        -H 'Content-Type: application/json' "$base/api/write" -d "$body")
      rm -f "$T_TMP/wb-inflight"
      [ "$code" = 200 ] && break
      tries=$((tries + 1))
      echo "$tries" >"$T_TMP/wb-retries"
      [ -e "$T_TMP/stop" ] && break 2
      sleep 0.2
    done
    echo "$b" >"$T_TMP/wb-done"
    sleep 0.1
  done
}

start_one() { # start ferry; echo ms until ready (or "never")
  local t0 i
  t0=$(now_ms)
  start_ferry "$CHAOS_CFG" || return 1
  logs+=("$FERRY_LOG")
  for ((i = 0; i < 1200; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/probes/readiness")" = 200 ] && { echo $(($(now_ms) - t0)) >"$T_TMP/ready-ms"; return 0; }
    sleep 0.05
  done
  echo never >"$T_TMP/ready-ms"
}

start_one || exit 1
raw_start r1 u1
sdk_start s2 u2 "items:owner,grp=i,v,big;notes:owner,body;events:owner,what"
writeback &
T_PIDS+=("$!")
wbpid=$!

declare -A by_phase=()
ready_times=()
compactions=0
builds=0
for ((k = 1; k <= kills; k++)); do
  # this round's action before the kill
  if [ $((k % 7)) -eq 0 ]; then # a new rule version is built beside the serving one
    if [ $((k / 7 % 2)) -eq 1 ]; then printf '%s\n' "$rules_b" >"$CHAOS_RULES"; else printf '%s\n' "$rules_a" >"$CHAOS_RULES"; fi
    builds=$((builds + 1))
  fi
  # a random time: short ones land early (start, snapshot), long ones in steady streaming
  if long; then ms=$((RANDOM % 3000 + 50)); else ms=$((RANDOM % 1500 + 50)); fi
  if [ $((k % 5)) -eq 0 ]; then # compaction asked for right before the kill
    curl -s -o /dev/null --max-time 5 -X POST -H "Authorization: Bearer chaos-admin-token" "$base/api/admin/compact" &
    compactions=$((compactions + 1))
    ms=$((RANDOM % 300))
  fi
  sleep "$(printf '0.%03d' $((ms % 1000)))"; [ "$ms" -ge 1000 ] && sleep $((ms / 1000))
  m=$(curl -s --max-time 1 "$base/metrics")
  phase=$(echo "$m" | awk '$1 == "ferry_replication_phase" { print $2 }')
  case ${phase:-down} in 0) p=check ;; 1) p=slot ;; 2) p=snapshot ;; 3) p=streaming ;; 4) p=retrying ;; *) p=starting ;; esac
  echo "$m" | grep -q '^ferry_rules_version_building{' && p="$p+build"
  [ -e "$T_TMP/wb-inflight" ] && p="$p+write-back"
  by_phase[$p]=$((${by_phase[$p]:-0} + 1))
  kill -KILL "$FERRY_PID" 2>/dev/null; wait "$FERRY_PID" 2>/dev/null
  start_one || { fail "ferry starts again after kill $k" "$(tail -5 "$FERRY_LOG")"; break; }
  r=$(cat "$T_TMP/ready-ms")
  [ "$r" = never ] && { fail "ready after kill $k" "$(fcurl -s "$base/probes/readiness")"; continue; }
  ready_times+=("$r")
done
expect_eq "ferry was killed $kills times and came back ready each time" "$kills" "${#ready_times[@]}"

touch "$T_TMP/stop"
wait "$wpid" "$wbpid"
# the rules file's version takes over before the oracle is asked (a build may be under way)
diag() { curl -s -H "Authorization: Bearer chaos-admin-token" "$base/api/admin/diagnostics"; }
for ((i = 0; i < 1200; i++)); do [ "$(diag | jq -c '.data.building')" = null ] && break; sleep 0.1; done
oracle_ok "$CHAOS_CFG" "after $kills kills" 90
clients_ok "after $kills kills" 90
done_b=$(cat "$T_TMP/wb-done" 2>/dev/null || echo 0)
expect_eq "every write-back batch applied exactly once (notes in Postgres)" \
  "$done_b|$done_b" "$(psql -tAq "$CHAOS_DB" -c "SELECT count(*), count(*) FILTER (WHERE body LIKE '%, edited') FROM notes WHERE id ~ '^n[0-9]+$' AND substr(id, 2)::int <= $done_b")"
expect_eq "the write log holds the last batch's last op" "$((2 * done_b))" \
  "$(psql -tAq "$CHAOS_DB" -c "SELECT max(last_op_id) FROM ferry_write_log WHERE client_id = 'kl'" 2>/dev/null)"
expect_eq "no sanitizer report, no corruption in any log" "" \
  "$(cat "${logs[@]}" | grep -E 'Sanitizer|runtime error|malformed|corrupt' | head -3)"

# figures
sorted=$(printf '%s\n' "${ready_times[@]}" | sort -n)
n=${#ready_times[@]}
if [ "$n" -gt 0 ]; then
  figure restart_to_ready_median_ms "$(echo "$sorted" | sed -n "$(((n + 1) / 2))p")" ms
  figure restart_to_ready_max_ms "$(echo "$sorted" | tail -1)" ms
fi
figure kills "$kills" count
for p in "${!by_phase[@]}"; do figure "kills_during_$p" "${by_phase[$p]}" count; done
figure compactions_asked_before_a_kill "$compactions" count
figure rule_version_builds "$builds" count
figure write_back_batches "$done_b" count
figure write_back_retries "$(cat "$T_TMP/wb-retries" 2>/dev/null || echo 0)" count
stop_pid "$FERRY_PID" 10
expect_eq "ferry stops cleanly at the end" 0 "$STOP_RC"
