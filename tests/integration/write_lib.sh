# write_lib.sh -- helpers for the write-back tests (5x_write_*.sh); source after testlib.sh
#
#   write_setup NAME SCHEMA_SQL RULES_YAML [URI]
#                            create database NAME (or use URI), load SCHEMA_SQL, write the rules,
#                            start ferry and wait until ready; sets W_DB, W_CFG, W_PORT, W_URL
#                            (W_EXTRA_CONFIG, when set, is appended to the generated ferry.yaml;
#                            W_POSTGRES_CONFIG, indented lines, goes under its postgres: key)
#   write_token SUB          a development token for SUB
#   write_post TOKEN BODY    POST BODY to /api/write; prints "STATUS BODY"
#   sql QUERY                one value from the test database (psql -At)

write_setup() {
  local name=$1 schema=$2 rules=$3
  if [ -z "${4:-}" ]; then # a re-run against the same Postgres starts from a fresh database
    psql -q "$FERRY_PG_URI" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$name'" \
         -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null 2>&1
  fi
  W_DB=${4:-$(new_db "$name")}
  psql -q -v ON_ERROR_STOP=1 "$W_DB" <<<"$schema" >/dev/null || { fail "schema loads" "psql failed"; exit 1; }
  printf '%s\n' "$rules" >"$T_TMP/sync-rules.yaml"
  W_PORT=$(free_port)
  W_CFG=$T_TMP/ferry.yaml
  SLOT_PREFIX=${SLOT_PREFIX:-w$RANDOM} replication_config "$W_CFG" "$W_PORT" "$W_DB"
  [ -n "${W_EXTRA_CONFIG:-}" ] && printf '%s\n' "$W_EXTRA_CONFIG" >>"$W_CFG"
  if [ -n "${W_POSTGRES_CONFIG:-}" ]; then
    printf '%s\n' "$W_POSTGRES_CONFIG" >"$T_TMP/pg-extra.yaml"
    sed -i "/^postgres:\$/r $T_TMP/pg-extra.yaml" "$W_CFG"
  fi
  W_URL=http://127.0.0.1:$W_PORT
  start_ferry "$W_CFG" || exit 1
  if ! wait_ready "$W_PORT" 60; then
    fail "ferry becomes ready" "$(curl -s "$W_URL/probes/readiness")"
    sed 's/^/    /' "$FERRY_LOG" | tail -20
    exit 1
  fi
}

write_token() { "$FERRY_BIN" token --config "$W_CFG" --sub "$1"; }

write_post() {
  local out
  out=$(curl -s -w '\n%{http_code}' -X POST -H "Authorization: Bearer $1" \
             -H 'Content-Type: application/json' --data-binary @- "$W_URL/api/write" <<<"$2")
  echo "${out##*$'\n'} ${out%$'\n'*}"
}

sql() { psql -At -v ON_ERROR_STOP=1 "$W_DB" -c "$1"; }

# write_finish: stop ferry; it must exit 0 with no sanitizer report in its log
write_finish() {
  stop_pid "$FERRY_PID"
  expect_eq "ferry exits 0 on SIGTERM" "0" "$STOP_RC"
  expect_eq "no sanitizer report" "" "$(grep -E 'Sanitizer|runtime error' "$FERRY_LOG" | head -3)"
}
