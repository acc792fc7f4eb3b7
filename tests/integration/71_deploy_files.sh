#!/usr/bin/env bash
# 71_deploy_files.sh -- the files in deploy/ work as documented, so the docs cannot rot:
# ferry.example.yaml parses, the example and demo rules compile, postgres/setup.sql prepares a
# fresh database (twice: it is idempotent) so that ferry, running as the role it creates, becomes
# ready with sync-rules.example.yaml and applies a write; the systemd unit verifies (when
# systemd-analyze exists); the Dockerfile and compose file use the make targets the tests use.
source "$(dirname "$0")/../lib/testlib.sh"
D=$T_ROOT/deploy

out=$("$FERRY_BIN" config check --config "$D/ferry.example.yaml" 2>&1)
expect_match "ferry config check accepts deploy/ferry.example.yaml" 'ferry.example.yaml: ok' "$out"
keys=$("$FERRY_BIN" config keys | grep -v '^auth.keys\[\]' | sed 's/.*\.//' | sort -u)
missing=$(for k in $keys; do grep -qE "^ *$k:" "$D/ferry.example.yaml" || echo "$k"; done | tr '\n' ' ')
expect_eq "ferry.example.yaml shows every config key" "" "$missing"

for f in sync-rules.example.yaml demo/sync-rules.yaml; do
  out=$("$FERRY_BIN" rules check "$D/$f" 2>&1)
  expect_match "ferry rules check $f" ': ok \(.*0 warnings\)' "$out"
done
cat "$D/demo/sync-rules.yaml" "$D/demo/write-rules.yaml" >"$T_TMP/demo-rules.yaml"
out=$("$FERRY_BIN" rules check "$T_TMP/demo-rules.yaml" 2>&1)
expect_match "the demo's sync rules with its write rules (what the demo loads)" ': ok \(.*2 write rules, 1 constraint, 0 warnings\)' "$out"

# postgres/setup.sql on a fresh database holding the demo's tables (without their publication)
db=$(new_db deploy71)
grep -v 'CREATE PUBLICATION' "$D/demo/schema.sql" | psql -q -v ON_ERROR_STOP=1 "$db" >/dev/null
for run in 1 2; do
  out=$(psql -qX -v ON_ERROR_STOP=1 -v ferry_password=demo-password "$db" -f "$D/postgres/setup.sql" 2>&1); rc=$?
  expect_eq "setup.sql applies (run $run)" "0" "$rc"
  [ "$rc" = 0 ] || echo "$out" | sed 's/^/    /'
done
q() { psql -qAtX "$db" -c "$1"; }
expect_eq "the ferry role may log in and replicate, and is no superuser" "t t f" "$(q "SELECT rolcanlogin, rolreplication, rolsuper FROM pg_roles WHERE rolname = 'ferry'" | tr '|' ' ')"
expect_eq "the publication covers every table" "t" "$(q "SELECT puballtables FROM pg_publication WHERE pubname = 'ferry'")"
expect_eq "ferry's tables exist" "2" "$(q "SELECT count(*) FROM pg_tables WHERE tablename IN ('ferry_write_log', 'ferry_violations')")"
expect_eq "ferry may read and write the application's tables" "t t" "$(q "SELECT has_table_privilege('ferry', 'todos', 'SELECT'), has_table_privilege('ferry', 'bookings', 'INSERT')" | tr '|' ' ')"

# ferry as that role, with the example rules: ready, and write-back works through the grants
port=$(free_port)
mkdir -p "$T_TMP/srv"
cp "$D/sync-rules.example.yaml" "$T_TMP/srv/sync-rules.yaml"
ferry_uri=$(sed -E 's#^(postgres(ql)?://)[^@/]*@#\1ferry:demo-password@#' <<<"$db")
SLOT_PREFIX=t71 replication_config "$T_TMP/srv/ferry.yaml" "$port" "$ferry_uri"
start_ferry "$T_TMP/srv/ferry.yaml" || exit 1
if wait_ready "$port" 60; then pass "ferry, as the role setup.sql made, becomes ready with the example rules"; else
  fail "ferry becomes ready as the ferry role" "$(curl -s "http://127.0.0.1:$port/probes/readiness")"
  tail -15 "$FERRY_LOG" | sed 's/^/    /'
fi
tok=$("$FERRY_BIN" token --config "$T_TMP/srv/ferry.yaml" --sub bob)
out=$(curl -s -X POST "http://127.0.0.1:$port/api/write" -H "Authorization: Bearer $tok" -H 'content-type: application/json' \
  -d '{"client_id":"c71","batch":[{"op_id":1,"op":"PUT","type":"bookings","id":"bk71","data":{"room_id":"r-lab","org_id":"acme","booked_by":"bob","starts_at":"2030-01-07 09:30+00","ends_at":"2030-01-07 10:30+00"}}]}')
expect_match "a write through the example write rules is applied" '"status":"applied"' "$out"
expect_eq "and its double booking is recorded for bob" "bob no_double_booking" "$(q "SELECT user_id || ' ' || constraint_name FROM ferry_violations WHERE row_id = 'bk71'")"
stop_pid "$FERRY_PID"
q "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 't71%'" >/dev/null

# the systemd unit
if command -v systemd-analyze >/dev/null; then
  sed "s#/usr/local/bin/ferry#$FERRY_BIN#g" "$D/ferry.service" >"$T_TMP/ferry.service"
  out=$(systemd-analyze verify "$T_TMP/ferry.service" 2>&1); rc=$?
  expect_eq "systemd-analyze verify deploy/ferry.service" "0 " "$rc $out"
else
  pass "systemd-analyze is not installed: the unit is not verified"
fi
expect_match "the unit runs ferry as its own user, not root" $'\nUser=ferry\n' "$(cat "$D/ferry.service")"

# the container files (no container engine here): they build with the tested make targets
expect_match "the Dockerfile builds Debian 12 with make deps and make" 'FROM debian:12.*deploy/deps\.sh.*make ' "$(tr '\n' ' ' <"$D/Dockerfile")"
expect_match "the Dockerfile runs as a non-root user" $'\nUSER ferry' "$(cat "$D/Dockerfile")"
expect_match "the compose file sets wal_level=logical" 'wal_level=logical' "$(cat "$D/docker-compose.yml")"

# several instances: the HAProxy configuration is valid, the compose file has its shape, and
# instances.sql makes a storage database ferry can use
if command -v haproxy >/dev/null; then
  out=$(haproxy -c -f "$D/haproxy.cfg" 2>&1)
  expect_match "haproxy -c accepts deploy/haproxy.cfg" 'Configuration file is valid' "$out"
else
  fail "haproxy is installed" "deploy/deps.sh installs it"
fi
expect_match "it checks readiness and balances round robin" 'balance roundrobin.*option httpchk GET /probes/readiness' "$(tr '\n' ' ' <"$D/haproxy.cfg")"
expect_match "the instances compose file runs three ferry services behind haproxy with haproxy.cfg" \
  'ferry1:.*ferry2:.*ferry3:.*haproxy:.*haproxy.cfg' "$(tr '\n' ' ' <"$D/docker-compose.instances.yml")"
for run in 1 2; do
  psql -qX -v ON_ERROR_STOP=1 "$db" -f "$D/postgres/instances.sql" >/dev/null 2>&1
  expect_eq "instances.sql applies (run $run)" "ferry" "$(q "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'ferry_storage'")"
done
st_uri=$(sed -E 's#^(postgres(ql)?://)[^@/]*@#\1ferry:demo-password@#; s#/[^/]*$#/ferry_storage#' <<<"$db")
port=$(free_port)
mkdir -p "$T_TMP/inst"
cp "$D/sync-rules.example.yaml" "$T_TMP/inst/sync-rules.yaml"
SLOT_PREFIX=t71i replication_config "$T_TMP/inst/ferry.yaml" "$port" "$ferry_uri"
sed -i '/^storage:/,/^auth:/{/^storage:/!{/^auth:/!d}}' "$T_TMP/inst/ferry.yaml"
sed -i "s#^storage:#storage:\n  kind: postgres\n  uri: \"$st_uri\"#" "$T_TMP/inst/ferry.yaml"
start_ferry "$T_TMP/inst/ferry.yaml" || exit 1
wait_ready "$port" 30 && pass "ferry, as the ferry role, keeps its storage in ferry_storage" || fail "ready with storage in ferry_storage" "$(curl -s "http://127.0.0.1:$port/probes/readiness")"
stop_pid "$FERRY_PID"
q "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 't71i%'" >/dev/null
psql -q "${db%/*}/postgres" -c "DROP DATABASE ferry_storage" >/dev/null 2>&1
