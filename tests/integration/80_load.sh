#!/usr/bin/env bash
# 80_load.sh -- build/ferry-load against a real ferry: a short run of each scenario (tiny data,
# seconds) asserting only that the harness measured something consistent (every op and row
# delivered, checksums matched, latencies positive, JSON well-formed), never a timing
source "$(dirname "$0")/../lib/testlib.sh"
LOAD_BIN=${LOAD_BIN:-$(dirname "$FERRY_BIN")/ferry-load}
[ -x "$LOAD_BIN" ] || { fail "ferry-load is built" "$LOAD_BIN is missing"; exit 1; }

db=$(new_db load80)
psql -q "$db" <<'SQL'
CREATE TABLE items (id text PRIMARY KEY, body text);
CREATE TABLE ferry_load_ticks (id text PRIMARY KEY, owner text, ts bigint);
CREATE TABLE sdk_notes (id text PRIMARY KEY, owner text, ts bigint);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO items SELECT 'i' || i, repeat('x', 40) || i FROM generate_series(1, 3000) i;
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  everything:
    data:
      - SELECT id, body FROM items
  ticks:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner, ts FROM ferry_load_ticks WHERE owner = bucket.owner
      - SELECT id, owner, ts FROM sdk_notes WHERE owner = bucket.owner
write_rules:
  ferry_load_ticks:
    operations: [insert, update]
    columns: [id, owner, ts]
    check: "new.owner = request.user_id()"
  sdk_notes:
    operations: [insert]
    columns: [id, owner, ts]
    check: "new.owner = request.user_id()"
YAML
port=$(free_port)
replication_config "$T_TMP/ferry.yaml" "$port" "$db"
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 || { fail "ready" "not ready"; exit 1; }
url=http://127.0.0.1:$port
secret=test-secret-test-secret-test-secret
common=(--url "$url" --secret "$secret" --kid test --aud ferry --timeout 30 --quiet)

# json_get FILE EXPR: evaluate a Python expression over the parsed JSON (j); "bad" if unparsable
json_get() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null || echo bad; }

# initial: 6 clients over 2 processes, each gets the 3,000-op bucket; the first stream is saved
"$LOAD_BIN" initial "${common[@]}" --clients 6 --procs 2 --json "$T_TMP/initial.json" \
  --save "$T_TMP/stream.raw" --ferry-pid "$FERRY_PID" >"$T_TMP/initial.txt" 2>&1
rc=$?
expect_eq "initial: exits 0 (consistent)" 0 "$rc"
expect_eq "initial: the JSON is well-formed and says consistent" True "$(json_get "$T_TMP/initial.json" 'j["consistent"]')"
expect_eq "initial: every client got every op (6 x 3,000)" 18000 "$(json_get "$T_TMP/initial.json" 'j["received"]["ops"]')"
expect_eq "initial: zero checksum failures, 12 buckets checked (2 per client)" "0 12" "$(json_get "$T_TMP/initial.json" 'str(j["checksums"]["failures"]) + " " + str(j["checksums"]["ok"])')"
expect_eq "initial: time to first complete is positive for all 6" "6 True" \
  "$(json_get "$T_TMP/initial.json" 'str(j["time_to_first_complete_ms"]["count"]) + " " + str(j["time_to_first_complete_ms"]["min"] > 0)')"
expect_eq "initial: ops/s and ferry RSS are measured" True \
  "$(json_get "$T_TMP/initial.json" 'j["initial"]["ops_per_s"] > 0 and j["ferry_rss_kb"]["peak_sampled"] > 0')"
expect_match "initial: the table names the throughput" 'initial sync throughput +[0-9]+ ops/s' "$(cat "$T_TMP/initial.txt")"

# the limit: the saved stream replayed from a loopback socket parses to the same ops
"$LOAD_BIN" initial "${common[@]}" --cat "$T_TMP/stream.raw" --json "$T_TMP/cat.json" >"$T_TMP/cat.txt" 2>&1
expect_eq "initial --cat: the saved stream replays with the same 3,000 ops and checksums" "0 3000 0 2" \
  "$?$(json_get "$T_TMP/cat.json" '" " + str(j["received"]["ops"]) + " " + str(j["checksums"]["failures"]) + " " + str(j["checksums"]["ok"])')"

# fanout: 8 streams over 2 processes, 40 commits at 20/s; every row reaches its owner's stream
"$LOAD_BIN" fanout "${common[@]}" --clients 8 --procs 2 --pg "$db" --rate 20 --seconds 2 \
  --json "$T_TMP/fanout.json" --plot "$T_TMP/fanout" >"$T_TMP/fanout.txt" 2>&1
rc=$?
expect_eq "fanout: exits 0 (consistent)" 0 "$rc"
expect_eq "fanout: 40 commits, 40 deliveries expected and received" "40 40 40" \
  "$(json_get "$T_TMP/fanout.json" '" ".join(str(j["fanout"][k]) for k in ("commits", "expected_deliveries", "deliveries"))')"
expect_eq "fanout: latencies are positive and ordered (min <= p50 <= p99 <= max)" True \
  "$(json_get "$T_TMP/fanout.json" 'j["latency_ms"]["count"] == 40 and 0 < j["latency_ms"]["min"] <= j["latency_ms"]["p50"] <= j["latency_ms"]["p99"] <= j["latency_ms"]["max"]')"
expect_eq "fanout: zero checksum failures after the live diffs" 0 "$(json_get "$T_TMP/fanout.json" 'j["checksums"]["failures"]')"
if command -v gnuplot >/dev/null; then
  [ -s "$T_TMP/fanout.svg" ] && [ -s "$T_TMP/fanout.png" ] && pass "fanout: plots written (SVG and PNG)" ||
    fail "fanout: plots written" "$(ls "$T_TMP")"
fi

# idle: 20 streams held, RSS sampled before and after
"$LOAD_BIN" idle "${common[@]}" --clients 20 --procs 2 --hold 0.5 --ferry-pid "$FERRY_PID" \
  --json "$T_TMP/idle.json" >"$T_TMP/idle.txt" 2>&1
expect_eq "idle: 20 streams up, none closed, consistent" "0 20 0 True" \
  "$?$(json_get "$T_TMP/idle.json" '" " + str(j["streams"]["established"]) + " " + str(j["streams"]["closed_by_server"]) + " " + str(j["consistent"])')"
expect_eq "idle: ferry RSS before and after are measured" True \
  "$(json_get "$T_TMP/idle.json" 'j["ferry_rss_kb"]["before"] > 0 and j["ferry_rss_kb"]["after"] > 0')"

# churn: 10 streams sync, close and all reconnect at once, 3 times
"$LOAD_BIN" churn "${common[@]}" --clients 10 --procs 2 --cycles 3 --ferry-pid "$FERRY_PID" \
  --json "$T_TMP/churn.json" >"$T_TMP/churn.txt" 2>&1
expect_eq "churn: exits 0; 30 syncs in 3 cycles, each with every op (3,000 items + the 40 fanout rows of users u0-u7), no checksum failure" "0 30 3 90120 0" \
  "$? $(json_get "$T_TMP/churn.json" '" ".join(str(x) for x in (j["streams"]["established"], len(j["churn"]), j["received"]["ops"], j["checksums"]["failures"]))')"
expect_eq "churn: every cycle has a positive duration and an RSS sample" True \
  "$(json_get "$T_TMP/churn.json" 'all(c["seconds"] > 0 and c["ferry_rss_kb"] > 0 for c in j["churn"])')"

# write (users w0-w3, apart from the users above): 2 writers post 20-op batches for 1 s, then 5
# write-to-own-checkpoint rounds; every op applied, every written row delivered to its user's
# streams, every round's write checkpoint reached its stream
"$LOAD_BIN" write "${common[@]}" --user-prefix w --clients 4 --procs 2 --writers 2 --batch 20 \
  --seconds 1 --rounds 5 --ferry-pid "$FERRY_PID" --json "$T_TMP/write.json" --plot "$T_TMP/write" \
  >"$T_TMP/write.txt" 2>&1
rc=$?
expect_eq "write: exits 0 (consistent)" 0 "$rc"
expect_eq "write: the writers' ops were all applied (and some were sent), no HTTP error" True \
  "$(json_get "$T_TMP/write.json" 'j["write"]["ops"] > 0 and j["write"]["applied"] == j["write"]["ops"] and j["write"]["http_errors"] == 0 and j["write"]["requests"] * 20 == j["write"]["ops"]')"
expect_eq "write: every written row reached the streams of its user (writers' rows + 5 rounds)" True \
  "$(json_get "$T_TMP/write.json" 'j["fanout"]["deliveries"] == j["fanout"]["expected_deliveries"] == j["write"]["applied"] + 5 and j["latency_ms"]["min"] > 0')"
expect_eq "write: 5 of 5 rounds saw their write checkpoint on their stream, positive and ordered" True \
  "$(json_get "$T_TMP/write.json" 'j["write"]["rounds_ok"] == 5 and j["write_to_own_checkpoint_ms"]["count"] == 5 and 0 < j["write_to_own_checkpoint_ms"]["min"] <= j["write_to_own_checkpoint_ms"]["p50"] <= j["write_to_own_checkpoint_ms"]["max"]')"
expect_eq "write: the own-checkpoint time includes the POST and the GET" True \
  "$(json_get "$T_TMP/write.json" 'j["write_to_own_checkpoint_ms"]["min"] >= j["write_single_post_ms"]["min"] > 0 and j["write_checkpoint_get_ms"]["count"] == 5')"
expect_eq "write: zero checksum failures, no stream closed" "0 0" \
  "$(json_get "$T_TMP/write.json" 'str(j["checksums"]["failures"]) + " " + str(j["streams"]["closed_by_server"])')"

# soak (users s0-s3): 3 s of 10 commits/s and 5 writes/s with 4 streams up; RSS and errors
# sampled every second, every row delivered
"$LOAD_BIN" soak "${common[@]}" --user-prefix s --clients 4 --procs 2 --pg "$db" --rate 10 \
  --write-rate 5 --seconds 3 --ferry-pid "$FERRY_PID" --json "$T_TMP/soak.json" --plot "$T_TMP/soak" \
  >"$T_TMP/soak.txt" 2>&1
rc=$?
expect_eq "soak: exits 0 (consistent)" 0 "$rc"
expect_eq "soak: commits and writes happened without errors, each delivered to its user's stream" True \
  "$(json_get "$T_TMP/soak.json" 'j["soak"]["commits"] > 0 and j["soak"]["writes"] > 0 and j["soak"]["commit_errors"] == 0 and j["soak"]["write_errors"] == 0 and j["soak"]["deliveries"] == j["soak"]["expected_deliveries"] == j["soak"]["commits"] + j["soak"]["writes"]')"
expect_eq "soak: an RSS sample and an error count for every second, zero errors and checksum failures" True \
  "$(json_get "$T_TMP/soak.json" 'len(j["series"]) >= 3 and all(s["ferry_rss_kb"] > 0 and s["errors"] == 0 for s in j["series"]) and j["soak"]["errors"] == 0 and j["checksums"]["failures"] == 0')"
if command -v gnuplot >/dev/null; then
  [ -s "$T_TMP/soak.svg" ] && [ -s "$T_TMP/soak.png" ] && pass "soak: plots written (SVG and PNG)" ||
    fail "soak: plots written" "$(ls "$T_TMP")"
fi

# sdk (ferry-load sdk = build/ferry-load-sdk): 6 libferry clients of 3 users (k0-k2), each its own
# SQLite file: all synced with the 3,000 items (the k users own no ticks yet), no checksum
# failure; then 2 local writes each (libferry reserves ferry_* names: its table is sdk_notes), uploaded and caught up (write checkpoint applied)
"$LOAD_BIN" sdk --url "$url" --secret "$secret" --kid test --aud ferry --timeout 60 --quiet \
  --user-prefix k --clients 6 --users 3 --schema 'items:body;sdk_notes:owner,ts:int' \
  --expect-rows 3000 --writes 2 --write-table sdk_notes --json "$T_TMP/sdk.json" \
  >"$T_TMP/sdk.txt" 2>&1
rc=$?
expect_eq "sdk: exits 0 (consistent)" 0 "$rc"
expect_eq "sdk: 6 of 6 clients synced, 3,000 rows in each SQLite file, no checksum failure" "6 18000 3000 3000 0" \
  "$(json_get "$T_TMP/sdk.json" '" ".join(str(x) for x in (j["synced"], j["rows"]["total"], j["rows"]["per_client_min"], j["rows"]["per_client_max"], j["checksum_failures"]))')"
expect_eq "sdk: time to first sync positive for all 6; all 6 caught up after their writes, none rejected" True \
  "$(json_get "$T_TMP/sdk.json" 'j["time_to_first_sync_ms"]["count"] == 6 and j["time_to_first_sync_ms"]["min"] > 0 and j["writes"]["clients_caught_up"] == 6 and j["writes"]["rejected"] == 0 and j["write_to_synced_ms"]["min"] > 0')"
expect_eq "sdk: the 12 written rows reached Postgres" 12 "$(psql -tAq "$db" -c "SELECT count(*) FROM sdk_notes WHERE owner LIKE 'k%'")"

# a wrong secret: every stream fails with 401 and the run says inconsistent (exit 3)
"$LOAD_BIN" initial --url "$url" --secret wrong-secret-wrong-secret-wrong --kid test --aud ferry \
  --clients 3 --timeout 10 --quiet --json "$T_TMP/bad.json" >"$T_TMP/bad.txt" 2>&1
expect_eq "a rejected token: exit 3, 3 HTTP errors, last status 401" "3 3 401" \
  "$?$(json_get "$T_TMP/bad.json" '" " + str(j["streams"]["http_errors"]) + " " + str(j["streams"]["last_status"])')"
# loopback only unless asked
out=$("$LOAD_BIN" idle --url http://192.0.2.1:80 --secret x 2>&1)
expect_match "a non-loopback URL needs --allow-remote" 'not a loopback address; pass --allow-remote' "$out"
cat "$T_TMP/initial.txt" "$T_TMP/fanout.txt" "$T_TMP/idle.txt" "$T_TMP/write.txt" "$T_TMP/soak.txt" "$T_TMP/sdk.txt" | sed "s/^/    /"
stop_pid "$FERRY_PID" 5
