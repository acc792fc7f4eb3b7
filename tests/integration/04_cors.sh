#!/usr/bin/env bash
# 04_cors.sh -- CORS over raw HTTP: preflights (allowed, disallowed and "*" origins) on every
# client route before authentication, CORS headers on errors (401, 404, 405, 413) and none on the
# operator routes; a WebSocket upgrade answered 400 with a warning; a wrong method logged; bad
# http.cors values refused with the key and the line
source "$(dirname "$0")/../lib/testlib.sh"

ROUTES="/sync/stream /sync/checkpoint-request /write-checkpoint2.json /api/write /probes/liveness /probes/readiness"

# cors_config FILE PORT [HTTP-KEYS...]: write_config's file with extra lines under http:
cors_config() {
  write_config "$1" "$2"
  local extra=${3:-}
  [ -n "$extra" ] && python3 - "$1" "$extra" <<'PY'
import sys
p, extra = sys.argv[1], sys.argv[2]
s = open(p).read().replace("  max_request_body: 65536\n", "  max_request_body: 65536\n" + extra + "\n", 1)
open(p, "w").write(s)
PY
  return 0
}

# hdrs METHOD URL [CURL-ARGS...]: status line and headers, lowercased names, no CR
hdrs() {
  local m=$1 u=$2; shift 2
  curl -s -o /dev/null -D - -X "$m" "$@" "$u" | tr -d '\r' | sed 's/^\([^:]*\):/\L\1:/'
}
hval() { sed -n "s/^$1: //p" | head -1; }

# ---- the default: every origin ("*"), as the PowerSync service answers ----
port=$(free_port)
cors_config "$T_TMP/any.yaml" "$port"
start_ferry "$T_TMP/any.yaml" || { fail "ferry starts" "no liveness"; exit 1; }
base=http://127.0.0.1:$port
pre=(-H 'Origin: http://app.test:5173' -H 'Access-Control-Request-Method: POST'
  -H 'Access-Control-Request-Headers: authorization,content-type,x-user-agent')
bad=0
for r in $ROUTES; do
  h=$(hdrs OPTIONS "$base$r" "${pre[@]}")
  st=$(echo "$h" | head -1 | cut -d' ' -f2)
  [ "$st" = 204 ] || { bad=1; echo "    $r: status $st"; }
  [ "$(echo "$h" | hval access-control-allow-origin)" = "*" ] || { bad=1; echo "    $r: no allow-origin *"; }
  [ "$(echo "$h" | hval access-control-allow-methods)" = "GET, POST" ] || { bad=1; echo "    $r: methods"; }
  [ "$(echo "$h" | hval access-control-max-age)" = 3600 ] || { bad=1; echo "    $r: max-age"; }
  ah=$(echo "$h" | hval access-control-allow-headers)
  for want in authorization content-type x-user-agent user-agent; do
    [[ ", $ah," == *", $want,"* ]] || { bad=1; echo "    $r: allow-headers lacks $want ($ah)"; }
  done
  echo "$h" | grep -qi '^vary:.*origin' && { bad=1; echo "    $r: Vary: Origin with *"; }
done
expect_eq "preflight on every client route: 204, * , GET, POST, the SDK's headers, max-age 3600, before auth" 0 "$bad"

h=$(hdrs POST "$base/sync/stream" -H 'Origin: http://app.test:5173')
expect_match "401 of the stream carries the CORS header" $'^HTTP/1.1 401.*\naccess-control-allow-origin: \\*' "$(echo "$h" | tr '\n' '\n')"
tok=$("$FERRY_BIN" token --config "$T_TMP/any.yaml" --sub u1)
h=$(hdrs POST "$base/sync/stream" -H 'Origin: http://app.test:5173' -H "Authorization: Token $tok" --data '{}')
expect_match "503 (no Postgres behind this ferry) carries it" $'^HTTP/1.1 503.*\naccess-control-allow-origin: \\*' "$h"
h=$(hdrs GET "$base/no/such" -H 'Origin: http://app.test:5173')
expect_eq "404 carries it" "*" "$(echo "$h" | hval access-control-allow-origin)"
h=$(hdrs GET "$base/api/write" -H 'Origin: http://app.test:5173')
expect_eq "405 carries it" "*" "$(echo "$h" | hval access-control-allow-origin)"
head -c 70000 /dev/zero >"$T_TMP/big.bin"
h=$(hdrs POST "$base/api/write" -H 'Origin: http://app.test:5173' --data-binary @"$T_TMP/big.bin")
expect_match "h2o's own 413 carries it" '^HTTP/1.1 413' "$h"
expect_eq "  (the header)" "*" "$(echo "$h" | hval access-control-allow-origin)"
h=$(hdrs GET "$base/metrics" -H 'Origin: http://app.test:5173')
expect_eq "/metrics on the client listener carries none (a page must not read it)" "" "$(echo "$h" | hval access-control-allow-origin)"
h=$(hdrs OPTIONS "$base/metrics" "${pre[@]}")
expect_match "and has no preflight (405)" '^HTTP/1.1 405' "$h"
h=$(hdrs GET "http://127.0.0.1:$((port + 1))/probes/liveness" -H 'Origin: http://app.test:5173')
expect_eq "the admin listener sends no CORS header" "" "$(echo "$h" | hval access-control-allow-origin)"
h=$(hdrs OPTIONS "$base/api/write")
expect_match "a plain OPTIONS (no Origin) is 204 with Allow" $'^HTTP/1.1 204.*\nallow: POST' "$h"

# WebSocket: 400 with a JSON error saying what to do, one warning naming route and user agent
out=$(curl -s -w ' %{http_code}' -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
  -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' -H 'x-user-agent: powersync-js/1.0 "web"' "$base/sync/stream")
expect_match "a WebSocket upgrade is a JSON 400 that names HTTP streaming" \
  '^\{"error":\{"code":"websocket_not_supported","description":".*SyncStreamConnectionMethod.HTTP"\}\} 400$' "$out"
for i in 1 2 3; do
  curl -s -o /dev/null -H 'Connection: Upgrade' -H 'Upgrade: websocket' "$base/api/write"
done
log=$(cat "$FERRY_LOG")
expect_match "it is logged as a warning with the route and the quoted x-user-agent" \
  'level=warn mod=http msg="WebSocket upgrade refused[^"]*" route=/sync/stream x_user_agent="powersync-js/1.0 \\"web\\""' "$log"
expect_eq "rate-limited: one line for four upgrades" 1 "$(grep -c 'WebSocket upgrade refused' "$FERRY_LOG")"
expect_match "a wrong method is logged at info with the route" \
  'level=info mod=http msg="method not allowed on this route" route=/api/write method="GET" allowed="POST"' "$log"
stop_pid "$FERRY_PID"

# ---- a list of origins, extra headers ----
port=$(free_port)
cors_config "$T_TMP/list.yaml" "$port" '  cors:
    allowed_origins: ["http://app.test:5173", "https://App.Example.com"]
    allowed_headers: [X-Tenant]'
start_ferry "$T_TMP/list.yaml" || { fail "ferry starts (list)" "no liveness"; exit 1; }
base=http://127.0.0.1:$port
bad=0
for r in $ROUTES; do
  h=$(hdrs OPTIONS "$base$r" "${pre[@]}")
  [[ "$h" == "HTTP/1.1 204"* ]] || { bad=1; echo "    $r: not 204"; }
  [ "$(echo "$h" | hval access-control-allow-origin)" = "http://app.test:5173" ] || { bad=1; echo "    $r: origin not echoed"; }
  echo "$h" | grep -qi '^vary: origin' || { bad=1; echo "    $r: no Vary: Origin"; }
  [[ "$(echo "$h" | hval access-control-allow-headers)" == *", x-tenant" ]] || { bad=1; echo "    $r: no x-tenant"; }
done
expect_eq "allowed origin: the origin echoed, Vary: Origin, the configured header added, on every route" 0 "$bad"
h=$(hdrs OPTIONS "$base/sync/stream" -H 'Origin: https://app.example.com' -H 'Access-Control-Request-Method: POST')
expect_eq "origins compare without case" "https://app.example.com" "$(echo "$h" | hval access-control-allow-origin)"
for i in 1 2 3; do
  h=$(hdrs OPTIONS "$base/sync/stream" -H 'Origin: http://evil.test' -H 'Access-Control-Request-Method: POST')
done
expect_match "a disallowed origin's preflight is 403" '^HTTP/1.1 403' "$h"
expect_eq "  with no allow-origin" "" "$(echo "$h" | hval access-control-allow-origin)"
expect_eq "  and no allow-methods" "" "$(echo "$h" | hval access-control-allow-methods)"
expect_match "  but Vary: Origin" $'\nvary: Origin' "$h"
expect_match "it is logged, naming the origin and the route" \
  'level=warn mod=http msg="CORS preflight from an origin that is not allowed" route=/sync/stream origin="http://evil.test"' "$(cat "$FERRY_LOG")"
expect_eq "rate-limited: one line for three preflights" 1 "$(grep -c 'origin that is not allowed' "$FERRY_LOG")"
h=$(hdrs POST "$base/sync/stream" -H 'Origin: http://evil.test')
expect_eq "a request from a disallowed origin gets no allow-origin" "" "$(echo "$h" | hval access-control-allow-origin)"
h=$(hdrs POST "$base/sync/stream" -H 'Origin: http://app.test:5173')
expect_eq "its 401 from an allowed origin echoes it" "http://app.test:5173" "$(echo "$h" | hval access-control-allow-origin)"
stop_pid "$FERRY_PID"

# ---- [] allows no origin ----
port=$(free_port)
cors_config "$T_TMP/none.yaml" "$port" '  cors:
    allowed_origins: []'
start_ferry "$T_TMP/none.yaml" || { fail "ferry starts (none)" "no liveness"; exit 1; }
h=$(hdrs OPTIONS "http://127.0.0.1:$port/sync/stream" "${pre[@]}")
expect_match "allowed_origins: [] refuses every preflight" '^HTTP/1.1 403' "$h"
stop_pid "$FERRY_PID"

# ---- bad values: the key, the file and the line ----
cors_config "$T_TMP/bad1.yaml" 1 '  cors:
    allowed_origins: ["http://app.test/"]'
out=$("$FERRY_BIN" config check --config "$T_TMP/bad1.yaml" 2>&1)
expect_match "an origin with a path is refused with file:line and the key" \
  'bad1.yaml:7:23: "http.cors.allowed_origins" entries must be "\*" or an origin .*got "http://app.test/"' "$out"
cors_config "$T_TMP/bad2.yaml" 1 '  cors:
    allowed_headers: ["x tenant"]'
out=$("$FERRY_BIN" config check --config "$T_TMP/bad2.yaml" 2>&1)
expect_match "a header name with a space is refused" '"http.cors.allowed_headers" entries must be a header name' "$out"
cors_config "$T_TMP/bad3.yaml" 1 '  compression:
    enabled: maybe'
out=$("$FERRY_BIN" config check --config "$T_TMP/bad3.yaml" 2>&1)
expect_match "http.compression.enabled must be a boolean" 'bad3.yaml:7:14: "http.compression.enabled" must be true or false \(got "maybe"\)' "$out"
