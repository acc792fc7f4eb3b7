#!/usr/bin/env bash
# run.sh -- the web demo in a real browser: Debian's chromium, headless, driven by playwright-core
#
# Builds deploy/demo/web (npm ci behind a stamp, esbuild), starts a throwaway Postgres with the
# demo's schema, a ferry, and the demo's static server on another port (another origin), then
# runs web_demo.mjs: first sync equal to the SQL oracle, a psql insert rendered live, an offline
# todo landing after ferry is back, no CORS error where the SDK runs (its SharedWorker, through
# CDP), a screenshot under $FERRY_BUILD. Then the negative control: the same run against a ferry
# with http.cors.allowed_origins: [] must fail, and with CORS errors seen. Ends with
# "N passed, N failed".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
FERRY_BIN=${FERRY_BIN:-$root/build/ferry}
build=$root/${FERRY_BUILD:-build}
web=$root/deploy/demo/web
t0=$(date +%s)
passed=0; failed=0
pass() { passed=$((passed + 1)); echo "  ok   $1"; }
fail() { failed=$((failed + 1)); echo "  FAIL $1: $2"; }
finish() { echo "browser test took $(( $(date +%s) - t0 )) s"; echo "$passed passed, $failed failed"; [ "$failed" = 0 ]; exit $?; }

chromium=$(command -v chromium || true)
[ -n "$chromium" ] || { fail "chromium is installed" "deploy/deps.sh installs it"; finish; }
"$web/build.sh" >/dev/null || { fail "the web demo builds" "deploy/demo/web/build.sh failed"; finish; }

tmp=$(mktemp -d /tmp/ferry-browser.XXXXXX)
pgenv=$("$root/tests/lib/pg.sh" start browser) || { fail "postgres starts" "pg.sh failed"; finish; }
eval "$pgenv"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  [ -f "$tmp/ferry.pid" ] && kill "$(cat "$tmp/ferry.pid")" 2>/dev/null
  sleep 0.2
  "$root/tests/lib/pg.sh" stop "$PGTMP"
  [ -n "${BROWSER_KEEP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
free_port() {
  local p
  while :; do
    p=$(( 10000 + (RANDOM * 32768 + RANDOM) % 22000 ))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/$((p + 1))") 2>/dev/null || { echo "$p"; return; }
  done
}

# run NAME CORS-YAML: a fresh database, ferry and demo server; web_demo.mjs's output in $tmp/NAME.out
run() {
  local name=$1 cors=$2 first_sync=${3:-60000}
  local db=browser_$name dir=$tmp/$name port wport secret
  mkdir -p "$dir"
  psql -q "$FERRY_PG_URI" -c "CREATE DATABASE $db" >/dev/null
  local uri=${FERRY_PG_URI%/*}/$db
  psql -q -v ON_ERROR_STOP=1 "$uri" -f "$root/deploy/demo/schema.sql" >/dev/null
  cat "$root/deploy/demo/sync-rules.yaml" "$root/deploy/demo/write-rules.yaml" >"$dir/sync-rules.yaml"
  port=$(free_port); secret=browser-test-secret-browser-test-secret
  cat >"$dir/ferry.yaml" <<YAML
log_level: info
http:
  listen: "127.0.0.1:$port"
  threads: 2
$cors
postgres:
  uri: "$uri"
replication:
  slot_prefix: browser_$name
storage:
  path: storage.db
auth:
  audience: [ferry]
  keys:
    - { kid: dev, alg: HS256, secret: "$secret" }
YAML
  cat >"$dir/ferryctl.sh" <<SH
#!/usr/bin/env bash
case "\$1" in
  start) "$FERRY_BIN" serve --config "$dir/ferry.yaml" >>"$dir/ferry.log" 2>&1 & echo \$! >"$tmp/ferry.pid"
         for i in \$(seq 1 600); do [ "\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/probes/readiness)" = 200 ] && exit 0; sleep 0.1; done; exit 1 ;;
  stop) p=\$(cat "$tmp/ferry.pid"); kill -TERM "\$p" 2>/dev/null; for i in \$(seq 1 100); do kill -0 "\$p" 2>/dev/null || exit 0; sleep 0.05; done ;;
esac
SH
  chmod +x "$dir/ferryctl.sh"
  "$dir/ferryctl.sh" start || { echo "  ferry did not become ready"; tail -5 "$dir/ferry.log"; return 1; }
  FERRY_ENDPOINT=http://127.0.0.1:$port DEMO_SECRET=$secret DEMO_KID=dev DEMO_WEB_PORT=0 \
    node "$web/server.mjs" >"$dir/web.log" 2>&1 &
  pids+=($!)
  local url=
  for _ in $(seq 1 100); do url=$(sed -n 's/^web demo: //p' "$dir/web.log"); [ -n "$url" ] && break; sleep 0.1; done
  [ -n "$url" ] || { echo "  the demo server did not start"; cat "$dir/web.log"; return 1; }
  CHROMIUM=$chromium PAGE_URL=$url FERRY_ENDPOINT=http://127.0.0.1:$port PG_URI=$uri \
    FERRYCTL=$dir/ferryctl.sh SCREENSHOT=$build/web-demo-$name.png FIRST_SYNC_MS=$first_sync \
    DEMO_MODULES=$web/node_modules node "$here/web_demo.mjs" >"$tmp/$name.out" 2>&1
  local rc=$?
  "$dir/ferryctl.sh" stop
  kill "${pids[-1]}" 2>/dev/null
  return $rc
}

echo "== browser: the web demo, served from another origin than ferry"
run allowed "" 60000
rc=$?
sed -n 's/^ok /  ok   /p; s/^FAIL /  FAIL /p; s/^# /    # /p' "$tmp/allowed.out"
passed=$((passed + $(grep -c '^ok ' "$tmp/allowed.out")))
failed=$((failed + $(grep -c '^FAIL ' "$tmp/allowed.out")))
[ $rc = 0 ] || [ "$(grep -c '^FAIL ' "$tmp/allowed.out")" -gt 0 ] || fail "the browser run" "exited $rc: $(tail -3 "$tmp/allowed.out")"
grep -q 'msg="stream ended".* encoding=zstd ' "$tmp/allowed/ferry.log" &&
  pass "Chromium's streams were zstd-compressed (ferry's log)" ||
  fail "Chromium's streams were zstd-compressed" "$(grep 'stream ended' "$tmp/allowed/ferry.log" | head -2)"

echo "== browser: negative control, http.cors.allowed_origins: []"
run refused "  cors:
    allowed_origins: []" 15000
rc=$?
n=$(sed -n 's/^cors_errors=//p' "$tmp/refused.out")
[ $rc != 0 ] && pass "the same run fails when ferry allows no origin" || fail "the negative control fails" "it passed"
[ "${n:-0}" -gt 0 ] && pass "and the test saw the CORS errors in the SDK's worker ($n)" ||
  fail "the negative control saw CORS errors" "$(tail -5 "$tmp/refused.out")"
finish
