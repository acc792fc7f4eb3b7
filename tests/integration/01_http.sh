#!/usr/bin/env bash
# 01_http.sh -- the HTTP skeleton: probes, metrics, JSON errors, limits, graceful stop, port clash
source "$(dirname "$0")/../lib/testlib.sh"

port=$(free_port)
write_config "$T_TMP/ferry.yaml" "$port"
start_ferry "$T_TMP/ferry.yaml" || { fail "ferry starts" "no liveness"; exit 1; }
base=http://127.0.0.1:$port

out=$(curl -s -w ' %{http_code} %{content_type}' "$base/probes/liveness")
expect_match "liveness answers 200 JSON" '^\{"alive":true.*\} 200 application/json$' "$out"
out=$(curl -s -w ' %{http_code}' "$base/probes/readiness")
expect_match "readiness answers with its checks" '^\{"ready":(true|false),"checks":\{.*\}\} (200|503)$' "$out"

out=$(curl -s -w ' %{http_code} %{content_type}' "$base/no/such/route")
expect_eq "unknown route is a JSON 404" \
  '{"error":{"code":"not_found","description":"no route for GET /no/such/route"}} 404 application/json' "$out"
out=$(curl -s -w ' %{http_code}' "$base/probes/liveness/extra")
expect_match "a longer path under a route is 404 too" '"not_found".* 404$' "$out"
out=$(curl -s -w ' %{http_code}' -X DELETE "$base/probes/liveness")
expect_match "a wrong method is a JSON 405" '^\{"error":\{"code":"method_not_allowed".* 405$' "$out"

head -c 70000 /dev/zero >"$T_TMP/big.bin"
out=$(curl -s -w ' %{http_code} %{content_type}' -X POST --data-binary @"$T_TMP/big.bin" "$base/probes/liveness")
expect_eq "a body over http.max_request_body is a JSON 413" \
  '{"error":{"code":"payload_too_large","description":"the request body is too large"}} 413 application/json' "$out"
out=$(head -c 70000 /dev/zero | curl -s -w ' %{http_code}' -X POST -H 'Transfer-Encoding: chunked' --data-binary @- "$base/probes/liveness")
expect_match "a chunked body over the limit is 413 too" '"payload_too_large".* 413$' "$out"

metrics=$(curl -s "$base/metrics")
expect_match "metrics has build info" 'ferry_build_info\{version="[0-9.]+",revision="[^"]+"\} 1' "$metrics"
expect_match "metrics has uptime" 'ferry_uptime_seconds [0-9.]+' "$metrics"
expect_match "metrics has open connections" 'ferry_http_open_connections [1-9]' "$metrics"
expect_match "metrics counts requests by route and status" \
  'ferry_http_requests_total\{route="liveness",status="200"\} [1-9]' "$metrics"
expect_match "metrics counts 404s" 'ferry_http_requests_total\{route="not_found",status="404"\} 2' "$metrics"
expect_match "metrics counts 413s" 'ferry_http_requests_total\{route="other",status="413"\} 2' "$metrics"
expect_match "the log has the open-files limits" 'msg="open-files limit" soft_before=[0-9]+ soft=[0-9]+ hard=[0-9]+' "$(cat "$FERRY_LOG")"

# a second ferry on the same port fails clearly, and the first keeps serving
out=$("$FERRY_BIN" serve --config "$T_TMP/ferry.yaml" 2>&1); rc=$?
expect_eq "a second ferry on the same port exits 1" "1" "$rc"
expect_match "it says the address is in use" "could not listen on 127.0.0.1:$port: the address is already in use" "$out"
expect_eq "the first ferry still serves" "200" "$(curl -s -o /dev/null -w '%{http_code}' "$base/probes/liveness")"

# SIGTERM with an idle keep-alive connection and a half-sent request open: exit 0 within 5 s
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /probes/liveness HTTP/1.1\r\nHost: t\r\n\r\n' >&3
read -r -t 2 status_line <&3
expect_match "keep-alive request answered" '^HTTP/1.1 200' "$status_line"
exec 4<>"/dev/tcp/127.0.0.1/$port"
printf 'POST /probes/liveness HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nhalf' >&4
sleep 0.2
t0=$(date +%s%N)
stop_pid "$FERRY_PID" 5
t1=$(date +%s%N)
exec 3>&- 4>&-
expect_eq "SIGTERM exits 0 with idle and half-sent connections open" "0" "$STOP_RC"
ms=$(( (t1 - t0) / 1000000 ))
[ "$ms" -lt 5000 ] && pass "it stops within 5 s (${ms} ms)" || fail "stops within 5 s" "${ms} ms"
expect_match "it logs the shutdown" 'msg="stopped"' "$(cat "$FERRY_LOG")"
