#!/usr/bin/env bash
# 91_security_write.sh -- write-back cannot be taken by one user; write-checkpoint keys
#
# The worker pool has one connection (postgres.pool_size 1), so the order in which batches
# commit is the order ferry serves them. The test holds a lock on the written table from its own
# Postgres session (a point it controls, not a race against the machine's speed):
#   - a queued batch's body is held once (its copy), not also in h2o's input buffer: 20
#     queued 400 KB batches grow ferry's resident memory by less than 1.5 times their size;
#   - fairness: user "flood" queues 10 batches of 1,000 ops (the first blocked on the lock), then
#     user "victim" sends one op; released, the victim's op commits right after the batch that
#     was running, before the other 9 (a FIFO would put it last);
#   - a user past write_back.max_batches_per_user gets 429 with Retry-After and the error shape;
#   - more than write_back.max_ops_per_batch ops: 413, nothing applied;
#   - write_back.statement_timeout: a batch blocked on the lock is rolled back and answered 503
#     with Retry-After after the timeout (not when the lock goes), and applies on retry;
#   - write_back.batch_timeout: a batch of ops that each sleep 0.5 s in their check (each well
#     under statement_timeout, together over the batch's 3 s) is rolled back and answered 503
#     with Retry-After before all its ops ran (a sequence the check advances counts them), on
#     the pipelined and on the careful path; a batch inside the time applies;
#   - write-checkpoint keys of ("bob/x", "y") and ("bob", "x/y") stay distinct; a client_id
#     over 200 bytes is 400 on every route that takes one, and so is a token subject too long
#     for the key;
#   - alice and bob with one client_id: separate write-checkpoint counters and checkpoint
#     request ids, and bob's op ids never make alice's ops duplicates (ferry_write_log).
# The time the victim waits is a benchmark figure (tests/load/bench_write_fair.sh), not asserted.
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"

W_DB=$(new_db sec91)
drop_at_exit sec91
psql -q -v ON_ERROR_STOP=1 "$W_DB" <<'SQL' >/dev/null
CREATE TABLE items (id text PRIMARY KEY, owner text NOT NULL, label text,
                    seq bigserial NOT NULL);
-- each op on "slow" sleeps 0.5 s in its check and counts itself (a sequence outlives rollbacks)
CREATE TABLE slow (id text PRIMARY KEY, owner text NOT NULL);
CREATE SEQUENCE slow_calls;
CREATE FUNCTION slow_ok() RETURNS boolean LANGUAGE plpgsql AS
  $$BEGIN PERFORM nextval('slow_calls'); PERFORM pg_sleep(0.5); RETURN true; END$$;
CREATE PUBLICATION ferry FOR ALL TABLES;
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, label FROM items WHERE owner = bucket.owner
write_rules:
  items:
    operations: [insert, update, delete]
    columns: [id, owner, label]
    check: "new.owner = request.user_id()"
    check_old: "old.owner = request.user_id()"
  slow:
    operations: [insert]
    columns: [id, owner]
    check: "new.owner = request.user_id() AND slow_ok()"
YAML
W_PORT=$(free_port)
W_CFG=$T_TMP/ferry.yaml
W_URL=http://127.0.0.1:$W_PORT
replication_config "$W_CFG" "$W_PORT" "$W_DB"
sed -i "s|^  uri: .*|&\n  pool_size: 1|" "$W_CFG"
cat >>"$W_CFG" <<'YAML'
write_back:
  max_batches_per_user: 12
  max_ops_per_batch: 1000
  statement_timeout: 300
YAML
# under AddressSanitizer freed memory waits in a quarantine instead of being reused, which would
# make released bodies look kept: no quarantine for this ferry (no effect on a plain build)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0"
start_ferry "$W_CFG" || exit 1
wait_ready "$W_PORT" 30 || { fail "ferry becomes ready" "$(tail -5 "$FERRY_LOG")"; exit 1; }

metric() { curl -s "$W_URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# wait_metric NAME VALUE: until /metrics shows it (at most 60 s)
wait_metric() {
  local i
  for ((i = 0; i < 600; i++)); do [ "$(metric "$1")" = "$2" ] && return 0; sleep 0.1; done
  return 1
}
# hold_lock / release_lock: a session of the test's own holds items against inserts
hold_lock() {
  psql -q "$W_DB" -v ON_ERROR_STOP=1 >/dev/null 2>&1 <<'SQL' &
SET application_name = 'sec91_holder';
BEGIN;
LOCK TABLE items IN SHARE MODE;
SELECT pg_sleep(600);
SQL
  HOLDER=$!
  T_PIDS+=("$HOLDER")
  for ((i = 0; i < 100; i++)); do
    [ "$(sql "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'sec91_holder' AND l.mode = 'ShareLock' AND l.granted")" = 1 ] && return 0
    sleep 0.1
  done
  fail "the test holds its lock" "no"
  exit 1
}
release_lock() {
  sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sec91_holder'" >/dev/null
  wait "$HOLDER" 2>/dev/null || true
}
# batch_json CLIENT FIRST N OWNER: N PUT ops with op ids and ids from FIRST
batch_json() {
  awk -v c="$1" -v f="$2" -v n="$3" -v o="$4" 'BEGIN {
    printf "{\"client_id\":\"%s\",\"batch\":[", c
    for (i = 0; i < n; i++)
      printf "%s{\"op_id\":%d,\"op\":\"PUT\",\"type\":\"items\",\"id\":\"%s-%d\",\"data\":{\"owner\":\"%s\",\"label\":\"%s\"}}", (i ? "," : ""), i + 1, c, f + i, o, c
    printf "]}"
  }'
}
# post_bg TOKEN FILE OUT: POST in the background, "STATUS" and headers into OUT
post_bg() {
  curl -s -m 120 -D "$3.h" -o "$3.b" -w '%{http_code}' -X POST -H "Authorization: Bearer $1" \
    -H 'Content-Type: application/json' --data-binary @"$2" "$W_URL/api/write" >"$3" &
  T_PIDS+=($!)
  BG+=($!)
}

flood=$(write_token flood)
victim=$(write_token victim)
many=$(write_token many)

# ---- a queued batch is kept once (its copy), not also in h2o's input buffer ----
# (first, while the heap is fresh) one batch runs, blocked on the lock; 24 users queue one
# 400 KB batch each behind it; the last 20 of them may grow ferry's resident memory by about
# their copies (400 KB each), not by twice that
rss() { awk '/^VmRSS/ {print $2}' "/proc/$FERRY_PID/status"; }
pad=$(head -c 400000 /dev/zero | tr '\0' x)
hold_lock
BG=()
batch_json mem0 1 1 mem0 >"$T_TMP/kb0.json"
post_bg "$(write_token mem0)" "$T_TMP/kb0.json" "$T_TMP/kb0.out"
wait_metric ferry_write_batches_running 1 || fail "a batch runs, blocked on the lock" "running=$(metric ferry_write_batches_running)"
for i in $(seq 1 24); do
  printf '{"client_id":"mem%s","pad":"%s","batch":[{"op_id":1,"op":"PUT","type":"items","id":"mem%s","data":{"owner":"mem%s","label":"mem"}}]}' \
    "$i" "$pad" "$i" "$i" >"$T_TMP/kb$i.json"
done
for i in $(seq 1 24); do
  post_bg "$(write_token "mem$i")" "$T_TMP/kb$i.json" "$T_TMP/kb$i.out"
  wait_metric ferry_write_batches_queued "$i" || fail "batch mem$i is queued" "queued=$(metric ferry_write_batches_queued)"
  [ "$i" = 4 ] && before=$(rss)
done
after=$(rss)
per=$(( (after - before) / 20 ))
[ "$per" -lt 600 ] && pass "20 queued 400 KB batches: ${per} KB each (kept once)" ||
  fail "a queued batch is kept once" "${per} KB of resident memory per queued 400 KB batch"
release_lock
for p in "${BG[@]}"; do wait "$p" 2>/dev/null || true; done
expect_eq "all 25 batches applied" "25" "$(sql "SELECT count(*) FROM items WHERE label = 'mem' OR owner = 'mem0'")"
expect_eq "and answered 200" "$(printf '200%.0s' $(seq 1 25))" "$(cat "$T_TMP"/kb{0..24}.out | tr -d '\n')"
sql "DELETE FROM items" >/dev/null

# ---- fairness ----
hold_lock
BG=()
for i in $(seq 1 10); do
  batch_json "a$i" 1 1000 flood >"$T_TMP/a$i.json"
  post_bg "$flood" "$T_TMP/a$i.json" "$T_TMP/a$i.out"
done
wait_metric ferry_write_batches_queued 9 && wait_metric ferry_write_batches_running 1 ||
  fail "the flood is queued behind the lock" "queued=$(metric ferry_write_batches_queued) running=$(metric ferry_write_batches_running)"
batch_json v 1 1 victim >"$T_TMP/v.json"
post_bg "$victim" "$T_TMP/v.json" "$T_TMP/v.out"
wait_metric ferry_write_batches_queued 10 || fail "the victim's batch is queued" "queued=$(metric ferry_write_batches_queued)"
expect_eq "two users are active" "2" "$(metric ferry_write_users_active)"
release_lock
for p in "${BG[@]}"; do wait "$p" 2>/dev/null || true; done
expect_eq "every flood batch and the victim's answered 200" "200 200 200 200 200 200 200 200 200 200 200" \
  "$(cat "$T_TMP"/a{1,2,3,4,5,6,7,8,9,10}.out "$T_TMP/v.out" | sed 's/\(...\)/\1 /g' | xargs)"
expect_eq "all 10,001 rows are in" "10001" "$(sql "SELECT count(*) FROM items")"
# the order batches committed in: by the first sequence number of each batch's rows
order=$(sql "SELECT string_agg(label, ' ' ORDER BY s) FROM (SELECT label, min(seq) s FROM items GROUP BY label) x")
before=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "v") { print i - 1; exit } }' <<<"$order")
[ -n "$before" ] && [ "$before" -le 1 ] &&
  pass "the victim's op committed after at most one flood batch (order: $order)" ||
  fail "the victim's op waits for at most one flood batch" "order: $order"

# ---- a user past max_batches_per_user: 429 ----
hold_lock
BG=()
for i in $(seq 1 14); do
  batch_json "m$i" 1 1 many >"$T_TMP/m$i.json"
  post_bg "$many" "$T_TMP/m$i.json" "$T_TMP/m$i.out"
done
for ((i = 0; i < 600; i++)); do [ "$(cat "$T_TMP"/m*.out 2>/dev/null | grep -o 429 | wc -l)" -ge 2 ] && break; sleep 0.1; done
expect_eq "12 batches admitted (1 running, 11 queued)" "11" "$(metric ferry_write_batches_queued)"
release_lock
for p in "${BG[@]}"; do wait "$p" 2>/dev/null || true; done
codes=$(cat "$T_TMP"/m*.out | sed 's/\(...\)/\1\n/g' | sort | uniq -c | awk '{printf "%s:%s ", $2, $1}')
expect_eq "12 applied, 2 answered 429" "200:12 429:2 " "$codes"
f429=$(grep -l '^429' "$T_TMP"/m*.out | head -1)
expect_match "429 carries Retry-After" '[Rr]etry-[Aa]fter: [0-9]+' "$(cat "$f429.h")"
expect_match "and the error shape" '^\{"error":\{"code":"too_many_requests","description":"this user has too many write batches in progress' "$(cat "$f429.b")"
expect_eq "the 429 batches were not applied" "12" "$(sql "SELECT count(*) FROM items WHERE owner = 'many'")"
expect_match "429s counted" 'ferry_write_batches_total\{status="429"\} 2' "$(curl -s "$W_URL/metrics")"

# ---- more ops than max_ops_per_batch: 413 ----
batch_json big 1 1001 flood >"$T_TMP/big.json"
r=$(curl -s -w ' %{http_code}' -X POST -H "Authorization: Bearer $flood" --data-binary @"$T_TMP/big.json" "$W_URL/api/write")
expect_eq "1,001 ops: 413 with the error shape" \
  '{"error":{"code":"payload_too_large","description":"the batch has 1001 operations, more than 1000 (write_back.max_ops_per_batch); nothing was applied: send smaller batches"}} 413' "$r"
expect_eq "nothing of it applied" "0" "$(sql "SELECT count(*) FROM items WHERE label = 'big'")"

# ---- write checkpoints: distinct keys, one length rule ----
bobx=$(write_token "bob/x")
bob=$(write_token bob)
wcp() { curl -s "$W_URL/write-checkpoint2.json?client_id=$2" -H "Authorization: Bearer $1"; }
expect_eq "bob/x + y: 1" '{"data":{"write_checkpoint":"1"}}' "$(wcp "$bobx" y)"
expect_eq "bob/x + y again: 2" '{"data":{"write_checkpoint":"2"}}' "$(wcp "$bobx" y)"
expect_eq "bob + x/y has its own: 1" '{"data":{"write_checkpoint":"1"}}' "$(wcp "$bob" x%2Fy)"
expect_eq "bob/x + y still counts on: 3" '{"data":{"write_checkpoint":"3"}}' "$(wcp "$bobx" y)"
long=$(head -c 201 /dev/zero | tr '\0' c)
expect_match "a 201-byte client_id: 400 on write checkpoints" '"code":"bad_request".*200 bytes' "$(wcp "$bob" "$long")"
expect_eq "a 200-byte one is fine" '{"data":{"write_checkpoint":"1"}}' "$(wcp "$bob" "${long:1}")"
expect_match "400 on the sync stream" '^\{"error":\{"code":"bad_request","description":"\\"client_id\\" is longer than 200 bytes"\}\} 400$' \
  "$(curl -s -m 3 -w ' %{http_code}' -X POST -H "Authorization: Bearer $bob" -d "{\"client_id\":\"$long\"}" "$W_URL/sync/stream")"
expect_match "400 on write-back" '"client_id\\" is longer than 200 bytes"\}\} 400$' \
  "$(curl -s -w ' %{http_code}' -X POST -H "Authorization: Bearer $bob" -d "{\"client_id\":\"$long\",\"batch\":[]}" "$W_URL/api/write")"
expect_match "400 on checkpoint requests" '"code":"bad_request","description":"expected \{\\"client_id\\": \\"...\\" \(at most 200 bytes\).* 400$' \
  "$(curl -s -w ' %{http_code}' -X POST -H "Authorization: Bearer $bob" -d "{\"client_id\":\"$long\",\"checkpoint_request_id\":\"1\"}" "$W_URL/sync/checkpoint-request")"
cr() { curl -s -X POST "$W_URL/sync/checkpoint-request" -H "Authorization: Bearer $1" -d "{\"client_id\":\"$2\",\"checkpoint_request_id\":\"$3\"}"; }
expect_eq "a 200-byte one is fine there too" '{"data":{"checkpoint_request_id":"1"}}' "$(cr "$bob" "${long:1}" 1)"
long_sub=$(write_token "$(head -c 400 /dev/zero | tr '\0' /)") # 1,200 bytes once its '/' are encoded
expect_match "a token subject too long for the key: 400 on write checkpoints" '^\{"error":\{"code":"bad_request","description":"the token.s subject is too long"\}\} 400$' \
  "$(curl -s -w ' %{http_code}' "$W_URL/write-checkpoint2.json?client_id=c" -H "Authorization: Bearer $long_sub")"
expect_match "and on checkpoint requests" '^\{"error":\{"code":"bad_request","description":"the token.s subject is too long"\}\} 400$' \
  "$(curl -s -w ' %{http_code}' -X POST "$W_URL/sync/checkpoint-request" -H "Authorization: Bearer $long_sub" -d '{"client_id":"c","checkpoint_request_id":"1"}')"

# ---- two users with one client_id: nothing of one is the other's ----
alice=$(write_token alice)
expect_eq "alice's client \"shared\": write checkpoint 1" '{"data":{"write_checkpoint":"1"}}' "$(wcp "$alice" shared)"
expect_eq "and 2" '{"data":{"write_checkpoint":"2"}}' "$(wcp "$alice" shared)"
expect_eq "bob's client \"shared\" counts on its own: 1" '{"data":{"write_checkpoint":"1"}}' "$(wcp "$bob" shared)"
expect_eq "alice's goes on from hers: 3" '{"data":{"write_checkpoint":"3"}}' "$(wcp "$alice" shared)"
expect_eq "a checkpoint request of alice's above hers: stored" '{"data":{"checkpoint_request_id":"50"}}' "$(cr "$alice" shared 50)"
expect_eq "bob's request 5 is not stale against alice's 50" '{"data":{"checkpoint_request_id":"5"}}' "$(cr "$bob" shared 5)"
expect_eq "alice's request 7 is stale against her own 50" '{"data":{"checkpoint_request_id":"50"}}' "$(cr "$alice" shared 7)"
# the write log: bob's op ids 1..5 under client "shared" are not alice's
shared_ops() { # OWNER FROM TO
  local i s=''
  for ((i = $2; i <= $3; i++)); do s+="{\"op_id\":$i,\"op\":\"PUT\",\"type\":\"items\",\"id\":\"$1-s$i\",\"data\":{\"owner\":\"$1\",\"label\":\"shared\"}},"; done
  echo "{\"client_id\":\"shared\",\"batch\":[${s%,}]}"
}
r=$(write_post "$bob" "$(shared_ops bob 1 5)")
expect_eq "bob's ops 1-5 on client \"shared\" apply" "5" "$(grep -o '"status":"applied"' <<<"$r" | wc -l)"
r=$(write_post "$alice" "$(shared_ops alice 1 3)")
expect_eq "alice's ops 1-3 on client \"shared\" apply, not duplicates of bob's" "3" "$(grep -o '"status":"applied"' <<<"$r" | wc -l)"
r=$(write_post "$bob" "$(shared_ops bob 5 6)")
expect_match "bob's own op 5 again is a duplicate (so the check above can fail)" '"op_id":5,"status":"duplicate".*"op_id":6,"status":"applied"' "$r"
r=$(write_post "$alice" "$(shared_ops alice 3 4)")
expect_match "alice's 3 is a duplicate of hers, her 4 applies (bob's 6 is not hers)" '"op_id":3,"status":"duplicate".*"op_id":4,"status":"applied"' "$r"
expect_eq "Postgres: alice's 4 and bob's 6 rows" "alice:4 bob:6" \
  "$(sql "SELECT string_agg(owner || ':' || n, ' ' ORDER BY owner) FROM (SELECT owner, count(*) n FROM items WHERE label = 'shared' GROUP BY owner) x")"

# ---- statement_timeout: a batch blocked longer than it is rolled back and answered 503 ----
stop_pid "$FERRY_PID"
sed -i 's/^  statement_timeout: 300/  statement_timeout: 1/' "$W_CFG"
start_ferry "$W_CFG" || exit 1
wait_ready "$W_PORT" 30 || { fail "ferry becomes ready again" "$(tail -5 "$FERRY_LOG")"; exit 1; }
hold_lock
batch_json t 1 3 victim >"$T_TMP/t.json"
r=$(curl -s -m 60 -D "$T_TMP/t.h" -w ' %{http_code}' -X POST -H "Authorization: Bearer $victim" --data-binary @"$T_TMP/t.json" "$W_URL/api/write")
lock_still_held=$(sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sec91_holder'")
release_lock
expect_match "blocked past the timeout: 503 with the error shape" '^\{"error":\{"code":"unavailable",.* 503$' "$r"
expect_eq "answered while the lock was still held" "1" "$lock_still_held"
expect_match "with Retry-After" '[Rr]etry-[Aa]fter: [0-9]+' "$(cat "$T_TMP/t.h")"
expect_match "the log names the timeout" 'msg="batch rolled back" error=".*statement timeout' "$(cat "$FERRY_LOG")"
expect_eq "nothing of it applied" "0" "$(sql "SELECT count(*) FROM items WHERE label = 't'")"
r=$(curl -s -w ' %{http_code}' -X POST -H "Authorization: Bearer $victim" --data-binary @"$T_TMP/t.json" "$W_URL/api/write")
expect_match "the retry applies" '"op_id":3,"status":"applied".* 200$' "$r"

# ---- batch_timeout: many ops, each under statement_timeout, together over the batch's time ----
stop_pid "$FERRY_PID"
sed -i 's/^  statement_timeout: 1$/  statement_timeout: 2\n  batch_timeout: 3/' "$W_CFG"
sed -i "s|^  pool_size: 1|&\n  timeout: 60|" "$W_CFG" # the worker's own deadline stays out of it
start_ferry "$W_CFG" || exit 1
wait_ready "$W_PORT" 30 || { fail "ferry becomes ready with batch_timeout" "$(tail -5 "$FERRY_LOG")"; exit 1; }
slow_ops() { # FIRST N [PREFIX_OP]: N inserts into "slow" (0.5 s each), op ids from FIRST
  local i s=${3:+$3,}
  for ((i = $1; i < $1 + $2; i++)); do s+="{\"op_id\":$i,\"op\":\"PUT\",\"type\":\"slow\",\"id\":\"s$i\",\"data\":{\"owner\":\"victim\"}},"; done
  echo "{\"client_id\":\"slow\",\"batch\":[${s%,}]}"
}
calls() { sql "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM slow_calls"; }
r=$(write_post "$victim" "$(slow_ops 1 2)")
expect_match "2 slow ops (1 s) fit in batch_timeout (3 s): applied" '^200 .*"op_id":2,"status":"applied"' "$r"
before=$(calls)
r=$(curl -s -m 60 -D "$T_TMP/bt.h" -w ' %{http_code}' -X POST -H "Authorization: Bearer $victim" --data-binary "$(slow_ops 3 12)" "$W_URL/api/write")
ran=$(( $(calls) - before ))
expect_match "12 slow ops (6 s): 503 with the error shape" \
  '^\{"error":\{"code":"unavailable","description":"the batch took longer than write_back.batch_timeout \(3 s\); nothing was applied.* 503$' "$r"
expect_match "with Retry-After" '[Rr]etry-[Aa]fter: [0-9]+' "$(cat "$T_TMP/bt.h")"
[ "$ran" -lt 12 ] && pass "stopped before all ops ran ($ran of 12 checks ran)" || fail "stopped before all ops ran" "$ran of 12 checks ran"
expect_eq "nothing of it applied" "2" "$(sql "SELECT count(*) FROM slow")"
expect_match "the log names the batch timeout (pipelined path)" \
  'msg="batch rolled back" error="write_back.batch_timeout passed" batch_timeout_s=3 ops_started=[0-9]+ ops=12 path=pipelined' "$(cat "$FERRY_LOG")"
# a first op the rule does not allow sends the batch down the careful path, op by op
before=$(calls)
r=$(curl -s -m 60 -w ' %{http_code}' -X POST -H "Authorization: Bearer $victim" \
  --data-binary "$(slow_ops 20 12 '{"op_id":19,"op":"DELETE","type":"slow","id":"s1"}')" "$W_URL/api/write")
ran=$(( $(calls) - before ))
expect_match "the same on the careful path: 503" '"description":"the batch took longer than write_back.batch_timeout \(3 s\).* 503$' "$r"
[ "$ran" -lt 12 ] && pass "careful path: stopped between ops ($ran of 12 checks ran)" || fail "careful path stops between ops" "$ran of 12 checks ran"
expect_match "the log says careful" 'error="write_back.batch_timeout passed" batch_timeout_s=3 ops_started=[0-9]+ ops=13 path=careful' "$(cat "$FERRY_LOG")"
expect_eq "nothing of it applied either" "2" "$(sql "SELECT count(*) FROM slow")"
r=$(write_post "$victim" "$(slow_ops 40 1)")
expect_match "the connection serves the next batch" '^200 .*"op_id":40,"status":"applied"' "$r"
write_finish
