#!/usr/bin/env bash
# storms.sh -- client storms and abuse: ferry stays up, its memory bounded, everyone served
#
#   storm        N clients (build/ferry-load churn) sync, close and all reconnect at once, twice:
#                every client back and validated (checksums) each time, those refused over
#                limits.max_connections after the Retry-After they got; the time, the refusals
#                and ferry's RSS are figures
#   excess       with limits.max_connections M, M+X clients: X get 503 with Retry-After, the
#                M others stream
#   slow readers streams of a large bucket whose clients never read: ferry's memory per such
#                stream stays bounded (backpressure: one chunk each, not the bucket)
#   slow headers, slow body   requests sent one byte at a time: the server closes them (h2o's
#                request timeout) while serving everyone else
#   big header   a 1 MB header: refused, ferry up
#   keep-alive   100,000 tiny requests on one connection (10,000 in the short version)
# A raw client and a libferry replica stay connected throughout; at the end, the oracle.
# Figures: times, ferry's RSS at each step and its peak (VmHWM).
source "$(dirname "$0")/../lib/testlib.sh"
source "$T_ROOT/tests/chaos/chaos_lib.sh"

if long; then storm=10000 excess_m=2000 slow=500 trickle=200 keep=100000; else storm=500 excess_m=200 slow=40 trickle=20 keep=10000; fi
pgenv=$("$T_ROOT/tests/lib/pg.sh" start storms) || { fail "own postgres starts" "pg.sh failed"; exit 1; }
own_pgtmp=$(echo "$pgenv" | sed -n 's/^PGTMP=//p')
own_uri=$(echo "$pgenv" | sed -n 's/^FERRY_PG_URI=//p')
trap 't_cleanup; "$T_ROOT/tests/lib/pg.sh" stop "$own_pgtmp"' EXIT
psql -q "$own_uri" -c "CREATE DATABASE app" || exit 1
CHAOS_DB=${own_uri%/*}/app
psql -q -v ON_ERROR_STOP=1 "$CHAOS_DB" <<'SQL' || exit 1
CREATE TABLE items (id int PRIMARY KEY, owner text, body text);
CREATE PUBLICATION ferry FOR ALL TABLES;
-- user "big" has 20,000 rows of about 1 KB (20 MB of ops); the others a few rows each
INSERT INTO items SELECT i, 'big', repeat(md5(i::text), 32) FROM generate_series(1, 20000) i;
INSERT INTO items SELECT i, 'u' || (i % 1000), 'row ' || i FROM generate_series(20001, 23000) i;
SQL
CHAOS_PORT=$(free_port)
CHAOS_CFG=$T_TMP/ferry.yaml
CHAOS_RULES=$T_TMP/sync-rules.yaml
cat >"$CHAOS_RULES" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner, body FROM items WHERE owner = bucket.owner
YAML
config() { # config MAX_CONNECTIONS
  SLOT_PREFIX=storms replication_config "$CHAOS_CFG" "$CHAOS_PORT" "$CHAOS_DB"
  printf 'limits:\n  max_connections: %s\n' "$1" >>"$CHAOS_CFG"
}
config $((storm + 1000))
base=http://127.0.0.1:$CHAOS_PORT
start_ferry "$CHAOS_CFG" || exit 1
wait_ready "$CHAOS_PORT" 60 || { fail "ready" "$(curl -s "$base/probes/readiness")"; exit 1; }
rss() { awk '$1 == "VmRSS:" { print int($2 / 1024) }' "/proc/$FERRY_PID/status"; }
hwm() { awk '$1 == "VmHWM:" { print int($2 / 1024) }' "/proc/$FERRY_PID/status"; }
alive() { # liveness answers 200 within 30 s (a connection limit just reached frees up slowly)
  local i
  for ((i = 0; i < 60; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$base/probes/liveness")" = 200 ] && return 0
    sleep 0.5
  done
  return 1
}
raw_start r1 u1
sdk_start s2 u2 "items:owner,body"
figure rss_at_start_mb "$(rss)" MB
load=(--url "$base" --secret test-secret-test-secret-test-secret --kid test --aud ferry --quiet)

# a light writer, so checkpoints keep coming during the storms
(i=30000; while [ ! -e "$T_TMP/stop" ]; do i=$((i + 1)); psql -q "$CHAOS_DB" -c "INSERT INTO items VALUES ($i, 'u$((i % 1000))', 'live $i')" >/dev/null 2>&1; sleep 0.2; done) &
T_PIDS+=("$!")
wpid=$!

# ---- storm: everyone reconnects at once ----
procs=1; [ "$storm" -gt 5000 ] && procs=2
# clients refused over limits.max_connections (the closed streams of the previous wave count until
# ferry notices them, within a second) connect again after the Retry-After ferry sends (5 s)
"$(dirname "$FERRY_BIN")/ferry-load" churn "${load[@]}" --clients "$storm" --users 1000 --procs "$procs" \
  --ramp "$storm" --cycles 2 --retry-503 5000 --timeout 600 --ferry-pid "$FERRY_PID" \
  --json "$T_TMP/storm.json" >"$T_TMP/storm.txt" 2>&1
rc=$?
expect_eq "a storm of $storm clients reconnecting at once: every client back and consistent" 0 "$rc"
[ $rc -eq 0 ] || sed 's/^/    /' "$T_TMP/storm.txt" | tail -15
for c in 0 1; do
  s=$(jq -r ".churn[$c].seconds // empty" "$T_TMP/storm.json" 2>/dev/null)
  [ -n "$s" ] && figure "storm_${storm}_cycle$((c + 1))_all_back_s" "$s" s
done
figure storm_checksum_checks "$(jq -r '.checksums.ok // empty' "$T_TMP/storm.json")" count
figure storm_refused_with_503_then_back "$(jq -r '.streams.refused_retried // empty' "$T_TMP/storm.json")" count
figure storm_ferry_rss_peak_mb "$(jq -r '(.ferry_rss_kb.peak_sampled // 0) / 1024 | floor' "$T_TMP/storm.json")" MB
figure rss_after_storm_mb "$(rss)" MB
alive && pass "ferry up after the storm" || fail "ferry up after the storm" "no liveness"

# ---- slow readers: streams of 20 MB that are never read ----
before=$(rss)
tok_big=$(mint big)
python3 "$CHAOS_DIR/abuse.py" slowreaders 127.0.0.1 "$CHAOS_PORT" "$slow" "$tok_big" 8 >"$T_TMP/slow.txt" 2>&1 &
sp=$!
T_PIDS+=("$sp")
peak=$before
for ((i = 0; i < 80; i++)); do r=$(rss); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.1; done
alive && pass "ferry answers while $slow slow readers hold big streams" || fail "ferry answers during slow readers" "no liveness"
wait "$sp"
grown=$((peak - before))
figure slow_readers "$slow" count
figure slow_readers_rss_growth_mb "$grown" MB
# one chunk (about 1 MiB) and its buffers per stream, not the 20 MB bucket (a sanitizer build,
# FERRY_BUILD=build/san, about doubles every allocation with its redzones and quarantine)
per=3
[[ "$FERRY_BIN" == */san/* ]] && per=6
[ "$grown" -le $((slow * per + 64)) ] && pass "memory per slow reader stays bounded ($grown MB for $slow)" ||
  fail "memory per slow reader stays bounded" "$grown MB for $slow streams"
metric() { fcurl -s "$base/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
for ((i = 0; i < 600; i++)); do [ "$(metric ferry_streams_open)" -le 2 ] 2>/dev/null && break; sleep 0.1; done
n=$(metric ferry_streams_open)
[ "$n" -le 2 ] && pass "the slow readers' streams are released (the two test clients remain)" ||
  fail "the slow readers' streams are released" "$n streams open"

# ---- one byte at a time ----
out=$(python3 "$CHAOS_DIR/abuse.py" slowheaders 127.0.0.1 "$CHAOS_PORT" "$trickle" 500 &
      sleep 2; alive && echo "alive-during" ; wait)
expect_match "ferry serves others while headers trickle in" 'alive-during' "$out"
expect_match "the server closes every connection sending headers a byte at a time" "closed $trickle of $trickle" "$out"
figure slow_headers_closed_after_s "$(echo "$out" | sed -n 's/.*after \([0-9.]*\) s.*/\1/p')" s
out=$(python3 "$CHAOS_DIR/abuse.py" slowbody 127.0.0.1 "$CHAOS_PORT" "$trickle" 500 "$(mint u3)")
expect_match "the server closes every connection sending its body a byte at a time" "closed $trickle of $trickle" "$out"
figure slow_body_closed_after_s "$(echo "$out" | sed -n 's/.*after \([0-9.]*\) s.*/\1/p')" s

# ---- a 1 MB header ----
out=$(python3 "$CHAOS_DIR/abuse.py" bigheader 127.0.0.1 "$CHAOS_PORT" 1048576)
expect_match "a 1 MB header is refused" '^(HTTP/1.1 4[0-9][0-9]|closed)' "$out"
figure big_header_answer "\"$out\"" text
alive && pass "ferry up after a 1 MB header" || fail "ferry up after a 1 MB header" "no liveness"

# ---- tiny requests on one keep-alive connection ----
before=$(rss)
out=$(python3 "$CHAOS_DIR/abuse.py" keepalive 127.0.0.1 "$CHAOS_PORT" "$keep")
expect_match "$keep requests on one keep-alive connection are all answered" "^ok $keep of $keep" "$out"
secs=$(echo "$out" | sed -n 's/.* in \([0-9.]*\) s/\1/p')
figure keepalive_requests "$keep" count
figure keepalive_requests_per_s "$(awk -v n="$keep" -v s="$secs" 'BEGIN { printf "%d", n / (s > 0 ? s : 1) }')" req/s
figure keepalive_rss_growth_mb $(($(rss) - before)) MB

# ---- excess connections: 503 with Retry-After ----
touch "$T_TMP/stop"; wait "$wpid"; rm -f "$T_TMP/stop"
figure rss_peak_mb "$(hwm)" MB # VmHWM: the peak of the whole run so far
stop_pid "$FERRY_PID" 10
config "$excess_m"
start_ferry "$CHAOS_CFG" || exit 1
wait_ready "$CHAOS_PORT" 60 || fail "ready again" "$(curl -s "$base/probes/readiness")"
extra=100
probe_tok=$(mint u5) # before the connections are taken: nothing slow between the 503 and the probe
# the load holds its connections 15 s: on a loaded machine the probe below must still find them
"$(dirname "$FERRY_BIN")/ferry-load" idle "${load[@]}" --clients $((excess_m + extra)) --users 1000 \
  --hold 15 --timeout 300 --json "$T_TMP/excess.json" >"$T_TMP/excess.txt" 2>&1 &
lp=$!
T_PIDS+=("$lp")
# every connection the limit allows is taken (the load's and the two test clients'): then even
# a probe is refused
for ((i = 0; i < 600; i++)); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/probes/liveness")" = 503 ] && break
  sleep 0.1
done
hdr=$(curl -s -i -X POST "$base/sync/stream" -H "Authorization: Token $probe_tok" -d '{}' --max-time 5 | tr -d '\r')
expect_match "over limits.max_connections a client gets 503 with Retry-After" '503 Service Unavailable.*Retry-After: [0-9]+' "$(echo $hdr)"
wait "$lp"
failed=$(jq -r '.streams.failed // 0' "$T_TMP/excess.json" 2>/dev/null)
[ "${failed:-0}" -ge 1 ] && pass "the clients over the limit were refused ($failed of $((excess_m + extra)))" ||
  fail "the clients over the limit were refused" "$(tail -5 "$T_TMP/excess.txt")"
figure excess_clients_refused "$failed" count
alive && pass "ferry up at the end" || fail "ferry up at the end" "no liveness"

figure abusive_requests $((slow + 2 * trickle + 1 + keep + extra)) count # slow readers, trickles, big header, keep-alive, excess
figure storm_connections $((storm * 3)) count
oracle_ok "$CHAOS_CFG" "after the storms" 60
clients_ok "after the storms" 90
stop_pid "$FERRY_PID" 10
expect_eq "ferry stops cleanly" 0 "$STOP_RC"
