#!/usr/bin/env bash
# 20_token_cli.sh -- `ferry token`: tokens an independent verifier accepts, and its refusals
#
# The HMAC is recomputed with the openssl command line and the claims decoded with Node.js, so
# the check does not rest on our own JWT code. No Postgres and no running ferry are needed.
source "$(dirname "$0")/../lib/testlib.sh"

secret="test-secret-test-secret-test-secret"
cfg=$T_TMP/ferry.yaml
write_config "$cfg" "$(free_port)"

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
# claim TOKEN PART EXPR: evaluate a JS expression over the decoded part (h = header, p = payload)
claim() {
  node -e 'const [t, part, expr] = process.argv.slice(1); const s = t.split(".");
    const h = JSON.parse(Buffer.from(s[0], "base64url")), p = JSON.parse(Buffer.from(s[1], "base64url"));
    console.log(JSON.stringify(eval(expr)));' "$1" "$2" "$3"
}

tok=$("$FERRY_BIN" token --config "$cfg" --sub user-7 --claim 'regions=["eu","us"]' \
      --claim team=blue --claim level=3 2>"$T_TMP/err"); rc=$?
expect_eq "token exits 0" "0" "$rc"
expect_eq "token prints nothing on stderr" "" "$(cat "$T_TMP/err")"
expect_match "token is three base64url parts" '^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$' "$tok"

# the signature, recomputed by openssl
sig=$(printf '%s' "${tok%.*}" | openssl dgst -sha256 -mac HMAC -macopt "key:$secret" -binary | b64url)
expect_eq "HMAC-SHA256 signature verifies with openssl" "$sig" "${tok##*.}"
wrong=$(printf '%s' "${tok%.*}" | openssl dgst -sha256 -mac HMAC -macopt "key:other-secret" -binary | b64url)
[ "$wrong" != "${tok##*.}" ] && pass "the check can fail (another secret gives another MAC)" \
  || fail "the check can fail" "same MAC for another secret"

expect_eq "header alg, typ and kid" '["HS256","JWT","test"]' "$(claim "$tok" h '[h.alg, h.typ, h.kid]')"
expect_eq "sub and aud" '["user-7","ferry"]' "$(claim "$tok" p '[p.sub, p.aud]')"
expect_eq "exp is iat + 3600" '3600' "$(claim "$tok" p 'p.exp - p.iat')"
now=$(date +%s)
iat=$(claim "$tok" p 'p.iat')
[ $((iat - now)) -le 2 ] && [ $((now - iat)) -le 5 ] && pass "iat is now" || fail "iat is now" "iat $iat now $now"
expect_eq "JSON claim values stay JSON, others are strings" '[["eu","us"],"blue",3]' \
  "$(claim "$tok" p '[p.regions, p.team, p.level]')"

tok=$("$FERRY_BIN" token --config "$cfg" --sub u --ttl 60 --claim 'parameters={"org":"o1"}')
expect_eq "--ttl sets exp - iat" '60' "$(claim "$tok" p 'p.exp - p.iat')"
expect_eq "a parameters object claim" '{"org":"o1"}' "$(claim "$tok" p 'p.parameters')"

tok=$(FERRY_CONFIG=$cfg "$FERRY_BIN" token --sub env-user)
expect_eq "config from FERRY_CONFIG" '"env-user"' "$(claim "$tok" p 'p.sub')"

# two HMAC keys: --kid chooses; the issuer is set when configured
cat >"$T_TMP/two.yaml" <<YAML
postgres:
  uri: "postgresql://postgres@127.0.0.1:1/none"
auth:
  audience: [app-a, app-b]
  issuer: https://issuer.test
  keys:
    - { kid: one, alg: HS256, secret: "$secret" }
    - { kid: two, alg: HS512, secret_base64url: "$(printf '%s' "$secret$secret" | b64url)" }
YAML
tok=$("$FERRY_BIN" token --config "$T_TMP/two.yaml" --sub u --kid two)
expect_eq "--kid picks the key and its alg" '["HS512","two"]' "$(claim "$tok" h '[h.alg, h.kid]')"
sig=$(printf '%s' "${tok%.*}" | openssl dgst -sha512 -mac HMAC -macopt "key:$secret$secret" -binary | b64url)
expect_eq "HS512 signature with the base64url secret verifies with openssl" "$sig" "${tok##*.}"
expect_eq "aud is the first audience, iss the issuer" '["app-a","https://issuer.test"]' \
  "$(claim "$tok" p '[p.aud, p.iss]')"

# refusals
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T_TMP/ec.pem" 2>/dev/null
openssl pkey -in "$T_TMP/ec.pem" -pubout -out "$T_TMP/ec.pub.pem"
cat >"$T_TMP/pub.yaml" <<YAML
postgres:
  uri: "postgresql://postgres@127.0.0.1:1/none"
auth:
  keys:
    - { kid: ec, alg: ES256, pem_file: ec.pub.pem }
    - { jwks_uri: "http://127.0.0.1:1/jwks.json" }
YAML
out=$("$FERRY_BIN" token --config "$T_TMP/pub.yaml" --sub u 2>&1); rc=$?
expect_eq "no HMAC key: exit 1" "1" "$rc"
expect_match "no HMAC key: says so" 'no HMAC key in auth.keys' "$out"
out=$("$FERRY_BIN" token --config "$cfg" --sub u --kid nope 2>&1); rc=$?
expect_eq "unknown --kid: exit 1" "1" "$rc"
expect_match "unknown --kid: names it" 'no HMAC key with kid "nope"' "$out"
out=$("$FERRY_BIN" token --config "$cfg" 2>&1); rc=$?
expect_eq "missing --sub: exit 2" "2" "$rc"
out=$("$FERRY_BIN" token --config "$cfg" --sub u --ttl 100000 2>&1); rc=$?
expect_eq "--ttl above auth.max_lifetime: exit 2" "2" "$rc"
out=$("$FERRY_BIN" token --config "$cfg" --sub u --ttl -5 2>&1); rc=$?
expect_eq "negative --ttl: exit 2" "2" "$rc"
out=$(env -u FERRY_CONFIG "$FERRY_BIN" token --sub u 2>&1); rc=$?
expect_eq "no config: exit 2" "2" "$rc"
sed "s/secret: \"$secret\"/secret: \"short\"/" "$cfg" >"$T_TMP/short.yaml"
out=$("$FERRY_BIN" token --config "$T_TMP/short.yaml" --sub u 2>&1); rc=$?
expect_eq "short secret: exit 1" "1" "$rc"
expect_match "short secret: file:line:col and the rule" 'short.yaml:[0-9]+:[0-9]+: HS256 secret has 5 bytes, at least 32 are required' "$out"
