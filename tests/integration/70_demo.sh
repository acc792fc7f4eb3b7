#!/usr/bin/env bash
# 70_demo.sh -- make demo's script: comes up, restarts cleanly, and demo-stop leaves nothing
source "$(dirname "$0")/../lib/testlib.sh"
export DEMO_VAR=$T_TMP/var DEMO_NONINTERACTIVE=1 DEMO_PORT=$(free_port)

out=$("$T_ROOT/deploy/demo.sh" start 2>&1); rc=$?
expect_eq "the demo starts" "0" "$rc"
expect_match "it tells how to stop it" 'stop it: +make demo-stop' "$out"
expect_match "it shows the endpoint" "endpoint: +http://127.0.0.1:$DEMO_PORT" "$out"
pid1=$(cat "$DEMO_VAR/ferry.pid" 2>/dev/null)
pg1=$(sed -n 's/^PGTMP=//p' "$DEMO_VAR/demo.env")
T_PIDS+=("$pid1")
expect_eq "ferry answers on the demo port" "200" "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$DEMO_PORT/probes/liveness")"
expect_match "postgres of the demo has wal_level=logical" "logical" "$(psql -Atc 'show wal_level' "$(sed -n 's/^FERRY_PG_URI=//p' "$DEMO_VAR/demo.env")")"

out=$("$T_ROOT/deploy/demo.sh" start 2>&1); rc=$?
expect_eq "running the demo again works" "0" "$rc"
expect_match "it stops the previous demo first" 'stopped ferry \(pid '"$pid1"'\)' "$out"
pid2=$(cat "$DEMO_VAR/ferry.pid")
pg2=$(sed -n 's/^PGTMP=//p' "$DEMO_VAR/demo.env")
T_PIDS+=("$pid2")
kill -0 "$pid1" 2>/dev/null && fail "the old ferry is gone" "pid $pid1 runs" || pass "the old ferry is gone"
[ -d "$pg1" ] && fail "the old postgres is gone" "$pg1 exists" || pass "the old postgres is gone"

out=$("$T_ROOT/deploy/demo.sh" stop 2>&1)
expect_match "demo-stop stops ferry and postgres" "stopped ferry.*stopped postgres" "$(echo $out)"
sleep 0.1
kill -0 "$pid2" 2>/dev/null && fail "no ferry is left" "pid $pid2 runs" || pass "no ferry is left"
[ -d "$pg2" ] && fail "no postgres directory is left" "$pg2" || pass "no postgres directory is left"
