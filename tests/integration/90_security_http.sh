#!/usr/bin/env bash
# 90_security_http.sh -- the HTTP edge an attacker sees: protocol, framing, paths, tokens, logs
#
# Against a real ferry (with Postgres and replication behind it):
#   - HTTP/1.1 only: prior-knowledge HTTP/2 gets HTTP/1.1 400 (no SETTINGS frame), an
#     "Upgrade: h2c" request is served as HTTP/1.1 (no 101 Switching Protocols);
#   - ambiguous framing (two Content-Length; Content-Length with Transfer-Encoding) gets 400 and
#     the connection closes, so a request hidden in the body is never answered;
#   - encoded "/" or "\" in a path gets 400; path variants of the client routes never skip
#     authentication; the admin API wants its token;
#   - the JWT matrix that holds (alg none, wrong secret, HS256 signed with the RSA public key,
#     unknown or injected kid, jku, duplicate header keys, expired, not yet valid, wrong audience,
#     no sub) is 401 on every client route (/sync/stream, /api/write, /write-checkpoint2.json,
#     /sync/checkpoint-request), and a good token passes each (so the matrix can fail);
#   - the admin listener answers probes and metrics while clients hold every connection of
#     limits.max_connections, and serves no client route;
#   - a client_id built to forge a log line stays one quoted value on one line;
#   - tokens with unknown kids and bad admin tokens cost at most one log line per interval.
source "$(dirname "$0")/../lib/testlib.sh"
sectools() { python3 "$T_ROOT/tests/lib/sectools.py" "$@"; }

db=$(new_db sec90)
drop_at_exit sec90
psql -q -v ON_ERROR_STOP=1 "$db" <<'SQL' >/dev/null
CREATE TABLE lists (id text PRIMARY KEY, owner text NOT NULL, name text);
INSERT INTO lists VALUES ('l1', 'alice', 'one');
CREATE PUBLICATION ferry FOR ALL TABLES;
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, name FROM lists WHERE owner = bucket.owner
YAML
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$T_TMP/rsa.pem" 2>/dev/null
openssl pkey -in "$T_TMP/rsa.pem" -pubout -out "$T_TMP/rsa.pub.pem" 2>/dev/null
port=$(free_port)
admin=$(free_port)
replication_config "$T_TMP/ferry.yaml" "$port" "$db"
cat >>"$T_TMP/ferry.yaml" <<YAML
    - { kid: rsa-1, alg: RS256, pem_file: rsa.pub.pem }
limits:
  max_connections: 3
admin:
  token: "admin-token-admin-token-admin-token"
YAML
sed -i "s|^  threads: 2|&\n  admin_listen: \"127.0.0.1:$admin\"|" "$T_TMP/ferry.yaml"
started=$(date +%s)
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 30 || { fail "ferry becomes ready" "$(tail -5 "$FERRY_LOG")"; exit 1; }
base=http://127.0.0.1:$port
secret="test-secret-test-secret-test-secret"
now=$(date +%s)
good=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub alice)

# ---- HTTP/2 is off on the cleartext listener ----
out=$(printf 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\4\0\0\0\0\0' | sectools raw "$port")
expect_match "prior-knowledge HTTP/2 gets an HTTP/1.1 400" '^HTTP/1\.1 400 ' "$out"
[[ "$out" == *$'\x04\x00\x00\x00\x00'* ]] && fail "no HTTP/2 SETTINGS frame comes back" "one did" ||
  pass "no HTTP/2 SETTINGS frame comes back"
out=$(printf 'GET /probes/liveness HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: close\r\n\r\n' |
  sectools raw "$port")
expect_match "an h2c upgrade is answered as HTTP/1.1" '^HTTP/1\.1 200 OK' "$out"
[[ "$out" == *"101 Switching"* ]] && fail "no 101 Switching Protocols" "$out" || pass "no 101 Switching Protocols"

# ---- request smuggling: ambiguous framing ----
out=$(printf 'POST /probes/liveness HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 43\r\n\r\nhelloGET /probes/readiness HTTP/1.1\r\nHost: t\r\n\r\n' |
  sectools raw "$port")
expect_match "two Content-Length headers: 400 with the error shape" '^HTTP/1\.1 400 .*"code":"bad_request","description":"ambiguous request framing' "$(echo $out)"
expect_eq "the request hidden in the body is not answered" "1" "$(grep -c '^HTTP/1.1' <<<"$out")"
out=$(printf 'POST /probes/liveness HTTP/1.1\r\nHost: t\r\nContent-Length: 48\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /probes/readiness HTTP/1.1\r\nHost: t\r\n\r\n' |
  sectools raw "$port")
expect_match "Content-Length with chunked: 400" '^HTTP/1\.1 400 .*ambiguous request framing' "$(echo $out)"
expect_eq "and nothing after it is answered" "1" "$(grep -c '^HTTP/1.1' <<<"$out")"
expect_match "the 400 closes the connection" '[Cc]onnection: close' "$out"
out=$(printf 'POST /probes/liveness HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello' | sectools raw "$port")
expect_match "one Content-Length is fine (routed: POST is not allowed there)" '^HTTP/1\.1 405 ' "$out"

# ---- paths ----
for p in '/api%2Fadmin%2Fdiagnostics' '/api%2fadmin%2fdiagnostics' '/sync%2Fstream' '/probes%5Cliveness'; do
  expect_eq "encoded slash in $p: 400" "400" "$(curl -s -o /dev/null -w '%{http_code}' --path-as-is "$base$p")"
done
for p in /sync/stream/ //sync/stream /sync//stream /./sync/stream /sync/./stream /sync/x/../stream \
         /SYNC/STREAM '/sync/stream%00' '/%73ync/stream' '/sync/stream;x' '/sync/stream?x=1'; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --path-as-is -X POST -d '{}' "$base$p")
  [[ "$code" == 401 || "$code" == 404 || "$code" == 400 ]] && pass "POST $p without a token: $code" ||
    fail "POST $p without a token is refused" "got $code"
done
for p in /api/admin/diagnostics /./api/admin/diagnostics '/api/admin/%64iagnostics'; do
  expect_eq "GET $p without the admin token: 401" "401" \
    "$(curl -s -o /dev/null -w '%{http_code}' --path-as-is "$base$p")"
done

# ---- the JWT matrix: every forged token is 401 on every client route ----
pay() { printf '{"sub":"alice","aud":"ferry","iat":%s,"exp":%s%s}' "$now" "$((now + 600))" "${1:-}"; }
declare -A forged=(
  [alg_none]=$(sectools jwt '{"alg":"none","typ":"JWT"}' "$(pay)" x)
  [alg_none_kid]=$(sectools jwt '{"alg":"none","kid":"test"}' "$(pay)" x)
  [wrong_secret]=$(sectools jwt '{"alg":"HS256","kid":"test"}' "$(pay)" "another-secret-another-secret-another")
  [hs256_with_rsa_public_key]=$(sectools jwt '{"alg":"HS256","kid":"rsa-1"}' "$(pay)" "@$T_TMP/rsa.pub.pem")
  [unknown_kid]=$(sectools jwt '{"alg":"HS256","kid":"nope"}' "$(pay)" "$secret")
  [kid_path_injection]=$(sectools jwt '{"alg":"HS256","kid":"../../../../dev/null"}' "$(pay)" "")
  [jku_injection]=$(sectools jwt '{"alg":"HS256","kid":"evil","jku":"http://127.0.0.1:1/jwks.json"}' "$(pay)" "evil")
  [duplicate_alg]=$(sectools jwt '{"alg":"HS256","kid":"test","alg":"none"}' "$(pay)" x)
  [expired]=$(sectools jwt '{"alg":"HS256","kid":"test"}' "$(printf '{"sub":"alice","aud":"ferry","iat":%s,"exp":%s}' $((now - 7200)) $((now - 3600)))" "$secret")
  [not_yet_valid]=$(sectools jwt '{"alg":"HS256","kid":"test"}' "$(pay ",\"nbf\":$((now + 3600))")" "$secret")
  [wrong_audience]=$(sectools jwt '{"alg":"HS256","kid":"test"}' "$(printf '{"sub":"alice","aud":"other","iat":%s,"exp":%s}' "$now" $((now + 600)))" "$secret")
  [no_sub]=$(sectools jwt '{"alg":"HS256","kid":"test"}' "$(printf '{"aud":"ferry","iat":%s,"exp":%s}' "$now" $((now + 600)))" "$secret")
)
route_code() { # TOKEN ROUTE
  case $2 in
    stream) curl -s -o /dev/null -m 3 -w '%{http_code}' -X POST -H "Authorization: Bearer $1" -d '{"client_id":"c"}' "$base/sync/stream" ;;
    write) curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $1" -d '{"client_id":"c","batch":[]}' "$base/api/write" ;;
    wcp) curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" "$base/write-checkpoint2.json?client_id=c" ;;
    cr) curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $1" -d '{"client_id":"c","checkpoint_request_id":"1"}' "$base/sync/checkpoint-request" ;;
  esac
}
for name in "${!forged[@]}"; do
  for r in stream write wcp cr; do
    expect_eq "forged token ($name) on $r: 401" "401" "$(route_code "${forged[$name]}" $r)"
  done
done
good_self=$(sectools jwt '{"alg":"HS256","kid":"test"}' "$(pay)" "$secret")
expect_eq "a well-signed token passes (stream), so the matrix can fail" "200" "$(route_code "$good_self" stream)"
expect_eq "a well-signed token passes (write)" "200" "$(route_code "$good" write)"
expect_eq "a well-signed token passes (write checkpoint)" "200" "$(route_code "$good" wcp)"
expect_eq "a well-signed token passes (checkpoint request)" "200" "$(route_code "$good" cr)"

# ---- rate-limited lines: unknown kids and bad admin tokens ----
for ((i = 0; i < 30; i++)); do
  curl -s -o /dev/null -H "Authorization: Bearer ${forged[unknown_kid]}" "$base/write-checkpoint2.json?client_id=c"
  curl -s -o /dev/null -H "Authorization: Bearer wrong-admin-token-$i" "$base/api/admin/diagnostics"
done
# one line per 10 s at most: since ferry started, that is 1 + the 10-s windows begun since
most=$(( 2 + ($(date +%s) - started) / 10 ))
n_kid=$(grep -c 'level=info mod=auth msg="token rejected".*unknown' "$FERRY_LOG" || true)
n_admin=$(grep -c 'msg="rejected an admin request"' "$FERRY_LOG" || true)
[ "$n_kid" -ge 1 ] && [ "$n_kid" -le "$most" ] && pass "some 40 tokens with unknown kids: $n_kid info line(s) (at most $most)" ||
  fail "unknown kids are rate-limited" "$n_kid lines, at most $most"
[ "$n_admin" -ge 1 ] && [ "$n_admin" -le "$most" ] && pass "some 33 bad admin tokens: $n_admin warn line(s) (at most $most)" ||
  fail "bad admin tokens are rate-limited" "$n_admin lines, at most $most"
expect_match "the line carries the count of lines left out" 'msg="token rejected" .*suppressed=[0-9]+' "$(grep 'msg="token rejected"' "$FERRY_LOG" | tail -1)"

# ---- a forged log line ----
cid=$'x" level=error msg="forged"\nts=1999-01-01T00:00:00.000Z level=error mod=auth msg="forged line"\r\e[2J\e]0;owned\a'
body=$(python3 -c 'import json,sys; print(json.dumps({"client_id": sys.argv[1]}))' "$cid")
curl -s -o /dev/null -m 2 -X POST -H "Authorization: Bearer $good" -d "$body" "$base/sync/stream" || true
for ((i = 0; i < 40; i++)); do grep -q 'msg="stream ended"' "$FERRY_LOG" && break; sleep 0.1; done
expect_eq "every log line starts with ts=" "" "$(grep -av '^ts=' "$FERRY_LOG" | head -3)"
expect_eq "no forged line" "" "$(grep -a 'msg="forged line"' "$FERRY_LOG" | grep -v 'client=' | head -1)"
expect_eq "no control byte in the log" "0" "$(LC_ALL=C grep -c $'[\x01-\x08\x0b-\x1f\x7f]' "$FERRY_LOG" || true)"
expect_match "the client_id is one escaped value" \
  'msg="stream started" .*client="x\\" level=error msg=\\"forged\\"\\nts=1999-01-01T00:00:00\.000Z level=error mod=auth msg=\\"forged line\\"\\r\\x1b\[2J\\x1b\]0;owned\\x07"' \
  "$(grep -a 'msg="stream started"' "$FERRY_LOG")"

# ---- the admin listener while clients hold every connection ----
for i in 1 2 3; do
  curl -s -N -o "$T_TMP/hold$i" -X POST -H "Authorization: Bearer $good" -d "{\"client_id\":\"hold$i\"}" "$base/sync/stream" &
  T_PIDS+=($!)
done
for ((i = 0; i < 100; i++)); do
  [ "$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^ferry_http_open_connections / {print $2}')" = 3 ] && break
  sleep 0.1
done
expect_eq "clients hold max_connections (3)" "3" \
  "$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^ferry_http_open_connections / {print $2}')"
expect_match "a fourth client connection gets 503" '^503 ' "$(curl -s -o /dev/null -w '%{http_code} ' "$base/probes/readiness")"
expect_eq "readiness answers 200 on the admin listener" "200" \
  "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/probes/readiness")"
expect_eq "liveness too" "200" "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/probes/liveness")"
expect_match "and metrics" 'ferry_streams_open 3' "$(curl -s "http://127.0.0.1:$admin/metrics")"
expect_eq "no client route on the admin listener" "404" \
  "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $good" -d '{}' "http://127.0.0.1:$admin/sync/stream")"
expect_match "the log names both listeners" "msg=\"listening\" addr=127.0.0.1:$port admin_addr=127.0.0.1:$admin" "$(cat "$FERRY_LOG")"

stop_pid "$FERRY_PID"
expect_eq "ferry exits 0 on SIGTERM" "0" "$STOP_RC"
expect_eq "no sanitizer report" "" "$(grep -E 'Sanitizer|runtime error' "$FERRY_LOG" | head -3)"
