#!/usr/bin/env bash
# run.sh -- conformance tests: the official PowerSync Node client against a real ferry
#
# Installs @powersync/node, @powersync/common and better-sqlite3 (tests/lib/npm.sh: once, behind a
# stamp; better-sqlite3 builds from source against the machine's Node headers), starts a
# throwaway Postgres with schema.sql and a ferry with sync-rules.yaml, runs every
# node/*.test.mjs (or those whose name starts with $1), and ends with "N passed, N failed". Uses
# the machine's Node; never installs it.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
FERRY_BIN=${FERRY_BIN:-$root/build/ferry}
"$root/tests/lib/npm.sh" || { echo "conformance: the npm packages are missing"; echo "0 passed, 1 failed"; exit 1; }

tmp=$(mktemp -d /tmp/ferry-conformance.XXXXXX)
pgenv=$("$root/tests/lib/pg.sh" start conformance) || { echo "0 passed, 1 failed"; exit 1; }
eval "$pgenv"
pid=
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
  [ -f "$tmp/ferry.pid" ] && kill -9 "$(cat "$tmp/ferry.pid")" 2>/dev/null
  "$root/tests/lib/pg.sh" stop "$PGTMP"
  [ -n "${CONFORMANCE_KEEP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
passed=0; failed=0
# every test file runs against each storage backend (FERRY_TEST_BACKENDS limits the list)
for backend in ${FERRY_TEST_BACKENDS:-sqlite postgres}; do
for t in "$here"/node/[0-9][0-9]_*.test.mjs; do
  name=$(basename "$t" .test.mjs)
  [ -n "${1:-}" ] && [[ "$name" != $1* ]] && continue
  echo "== conformance $name ($backend storage)"
  # a fresh database, storage and ferry per test file
  db=conf_${name}_$backend; db=${db//-/_}
  psql -q "$FERRY_PG_URI" -c "CREATE DATABASE $db" >/dev/null
  uri=${FERRY_PG_URI%/*}/$db
  if [ "$backend" = postgres ]; then
    psql -q "$FERRY_PG_URI" -c "CREATE DATABASE ${db}_st" >/dev/null
    storage=$(printf 'storage:\n  kind: postgres\n  uri: "%s_st"' "$uri")
  else
    storage=$(printf 'storage:\n  path: storage.db')
  fi
  psql -q -v ON_ERROR_STOP=1 "$uri" -f "$here/schema.sql" >/dev/null
  dir=$tmp/$name-$backend; mkdir -p "$dir"
  # a test may bring its own rules file (NN_name.sync-rules.yaml), else the shared one
  rules=$here/sync-rules.yaml
  [ -f "$here/node/$name.sync-rules.yaml" ] && rules=$here/node/$name.sync-rules.yaml
  cp "$rules" "$dir/sync-rules.yaml"
  port=$(( 10000 + (RANDOM * 32768 + RANDOM) % 22000 ))  # below the ephemeral range (32768+)
  cat >"$dir/ferry.yaml" <<YAML
log_level: info
http:
  listen: "127.0.0.1:$port"
  threads: 2
postgres:
  uri: "$uri"
replication:
  slot_prefix: conf_${name//[^a-z0-9]/_}_$backend
$storage
auth:
  audience: [ferry]
  keys:
    - { kid: conf, alg: HS256, secret: "conformance-secret-conformance-secret-0123" }
YAML
  cat >"$dir/ferryctl.sh" <<SH
#!/usr/bin/env bash
# start | stop | restart the ferry of this test
case "\$1" in
  start) "$FERRY_BIN" serve --config "$dir/ferry.yaml" >>"$dir/ferry.log" 2>&1 & echo \$! >"$tmp/ferry.pid"
         for i in \$(seq 1 200); do [ "\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/probes/readiness)" = 200 ] && exit 0; sleep 0.05; done; exit 1 ;;
  stop) kill -TERM "\$(cat "$tmp/ferry.pid")" 2>/dev/null; for i in \$(seq 1 100); do kill -0 "\$(cat "$tmp/ferry.pid")" 2>/dev/null || exit 0; sleep 0.05; done ;;
  restart) "\$0" stop; "\$0" start ;;
esac
SH
  chmod +x "$dir/ferryctl.sh"
  if ! "$dir/ferryctl.sh" start; then
    echo "  FAIL ferry did not become ready"; sed 's/^/    /' "$dir/ferry.log" | tail -20
    failed=$((failed + 1)); continue
  fi
  out=$(cd "$here/node" && FERRY_ENDPOINT=http://127.0.0.1:$port FERRY_BIN=$FERRY_BIN FERRY_CONFIG=$dir/ferry.yaml \
        FERRY_PG_URI=$uri FERRY_CTL=$dir/ferryctl.sh CONFORMANCE_TMP=$dir timeout 240 node "$t" 2>&1)
  rc=$?
  echo "$out" | grep -v '^RESULT '
  res=$(echo "$out" | sed -n 's/^RESULT //p' | tail -1)
  if [ -n "$res" ]; then
    passed=$((passed + ${res% *})); failed=$((failed + ${res#* }))
  fi
  if [ $rc -ne 0 ] && { [ -z "$res" ] || [ "${res#* }" = 0 ]; }; then
    echo "  FAIL $name exited $rc"; failed=$((failed + 1))
    echo "$out" | tail -5 | sed 's/^/    /'
  fi
  if grep -q 'level=error' "$dir/ferry.log"; then
    echo "  (ferry logged errors:)"; grep 'level=error' "$dir/ferry.log" | head -5 | sed 's/^/    /'
  fi
  "$dir/ferryctl.sh" stop
done
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
