# testlib.sh -- helpers for integration tests (source it; bash only)
#
# Each test script records one result line per check in $T_RESULTS ("pass NAME" / "fail NAME"),
# which tests/integration/run.sh counts. Processes started with start_ferry are stopped by PID
# when the script exits, whatever the outcome; temporary files live under $T_TMP, removed too
# (unless T_KEEP is set). T_NAME (default: the script's name) names the results and T_TMP.
#
#   pass NAME | fail NAME WHY      record a result
#   expect_eq NAME WANT GOT        pass when equal, else fail showing both
#   expect_match NAME REGEX TEXT   pass when TEXT matches the extended REGEX
#   free_port                      print a loopback TCP port nobody listens on (nor on the next)
#   start_ferry CONFIG [ARGS]      start build/ferry serve in the background; sets FERRY_PID,
#                                  FERRY_LOG; waits until /probes/liveness answers
#   stop_pid PID [SECONDS]         SIGTERM, then SIGKILL after SECONDS (default 5); sets STOP_RC
#   new_db NAME                    create database NAME in the run's Postgres; prints its URI
#   stream_once URL TOKEN BODY     POST BODY to URL/sync/stream; print the lines up to the first
#                                  checkpoint_complete (at most 60 s: the machine may be loaded)
#   t_in_ns CMD...                 run CMD where ferry runs: in network namespace $FERRY_NETNS
#                                  when set (tests/lib/netns.sh), else here; start_ferry and the
#                                  helpers below that talk to ferry or its Postgres use it
#   t_bg CMD... &                  the same for a background process: it execs, so $! is CMD's
#                                  PID (stop_pid and the cleanup reach the process itself)
#   storage_yaml DB_URI            the storage: section for the backend under test (below)
#   storage_query SQL              run SQL on the storage of the last replication_config
#
# The storage backend: FERRY_TEST_STORAGE=sqlite (the default) or postgres. A script whose
# header has the line "# storage: both" is run once per backend by run.sh; with postgres its
# storage lives in a database of its own ("<db>_st", schema ferry) beside the source database.
#   drop_at_exit NAME              drop database NAME and its slots when the script ends

T_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FERRY_BIN=${FERRY_BIN:-$T_ROOT/build/ferry}
T_RESULTS=${T_RESULTS:-/dev/null}
T_NAME=${T_NAME:-$(basename "$0" .sh)}
FERRY_TEST_STORAGE=${FERRY_TEST_STORAGE:-sqlite}
[ "$FERRY_TEST_STORAGE" = sqlite ] || T_NAME="$T_NAME@$FERRY_TEST_STORAGE"
# T_TMPDIR: where the test's folder goes (default /tmp; make chaos keeps them under build/chaos/)
T_TMP=$(mktemp -d "${T_TMPDIR:-/tmp}/ferry-test-$T_NAME.XXXXXX")
T_PIDS=()
T_DROP_DBS=()

# t_mine PID: PID is still a process this script started (this shell is among its ancestors). A
# PID whose process ended may already belong to another program (pid_max can be 32,768, and
# other tests run beside this one): such a PID is never signalled.
t_mine() {
  local p=$1 i pp k v
  for ((i = 0; i < 16; i++)); do
    pp=
    [ -r "/proc/$p/status" ] || return 1
    # the builtin read, not a process per step: stop_pid asks this every 50 ms
    { while read -r k v; do [ "$k" = PPid: ] && { pp=$v; break; }; done <"/proc/$p/status"; } 2>/dev/null
    [ -n "$pp" ] || return 1
    [ "$pp" = "$$" ] && return 0
    [ "$pp" -le 1 ] && return 1
    p=$pp
  done
  return 1
}

t_cleanup() {
  local p d i
  for p in "${T_PIDS[@]}"; do
    if t_mine "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
    wait "$p" 2>/dev/null || true
  done
  for d in "${T_DROP_DBS[@]}"; do # slots are cluster-wide and few: give them back
    for ((i = 0; i < 50; i++)); do
      [ "$(psql -qAtX "$FERRY_PG_URI" -c "SELECT count(*) FROM pg_replication_slots WHERE database = '$d' AND active" 2>/dev/null)" = 0 ] && break
      sleep 0.1
    done
    psql -qX "$FERRY_PG_URI" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$d'" \
      -c "DROP DATABASE IF EXISTS \"$d\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
  [ -n "${T_KEEP:-}" ] || rm -rf "$T_TMP"
}
trap t_cleanup EXIT

pass() { echo "pass $T_NAME: $1" >>"$T_RESULTS"; echo "  ok   $1"; }
fail() { echo "fail $T_NAME: $1" >>"$T_RESULTS"; echo "  FAIL $1: $2"; }

expect_eq() {
  if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "want [$2] got [$3]"; fi
}

expect_match() {
  if [[ "$3" =~ $2 ]]; then pass "$1"; else fail "$1" "[$3] does not match /$2/"; fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

t_in_ns() {
  if [ -n "${FERRY_NETNS:-}" ]; then ip netns exec "$FERRY_NETNS" "$@"; else "$@"; fi
}

t_bg() {
  if [ -n "${FERRY_NETNS:-}" ]; then exec ip netns exec "$FERRY_NETNS" "$@"; else exec "$@"; fi
}

# free_port: a port nobody listens on, whose next port is free too (ferry's admin listener
# takes http.listen's port + 1 unless the config says otherwise)
free_port() {
  local p
  while :; do
    # below the ephemeral range (32768+), where outgoing connections could take it first
    p=$(( 10000 + (RANDOM * 32768 + RANDOM) % 22000 ))
    port_in_use "$p" || port_in_use "$((p + 1))" || { echo "$p"; return; }
  done
}

# wait_http URL [SECONDS]: wait until URL answers any HTTP status
wait_http() {
  local url=$1 secs=${2:-10} i
  for ((i = 0; i < secs * 20; i++)); do
    t_in_ns curl -s -o /dev/null "$url" && return 0
    sleep 0.05
  done
  return 1
}

start_ferry() {
  local cfg=$1; shift
  FERRY_LOG=$T_TMP/ferry.$RANDOM.log
  t_bg "$FERRY_BIN" serve --config "$cfg" "$@" >"$FERRY_LOG" 2>&1 &
  FERRY_PID=$!
  T_PIDS+=("$FERRY_PID")
  local listen
  listen=$(sed -n 's/^ *listen: *"\{0,1\}\([^"]*\)"\{0,1\}.*/\1/p' "$cfg" | head -1)
  if ! wait_http "http://$listen/probes/liveness" 10; then
    echo "  ferry did not come up; log:"; sed 's/^/    /' "$FERRY_LOG"
    return 1
  fi
}

stop_pid() {
  local pid=$1 secs=${2:-5} i
  t_mine "$pid" && kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < secs * 20; i++)); do
    t_mine "$pid" || break
    sleep 0.05
  done
  if t_mine "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null
    STOP_RC=timeout
    return 1
  fi
  wait "$pid" 2>/dev/null
  STOP_RC=$?
}

new_db() {
  local name=$1
  [ "$FERRY_TEST_STORAGE" = sqlite ] || name="${1}_$FERRY_TEST_STORAGE" # a run per backend
  psql -q "$FERRY_PG_URI" -c "CREATE DATABASE \"$name\"" >/dev/null
  echo "${FERRY_PG_URI%/*}/$name"
}

# drop_at_exit NAME: drop database NAME and its replication slots when the script ends (after
# its processes are stopped); call it in the script itself, not in $(...)
drop_at_exit() { T_DROP_DBS+=("$1"); }

# write_config FILE PORT [EXTRA YAML]: a minimal valid ferry.yaml, with a sync-rules.yaml beside
# it (unless one exists) and storage in the same folder
write_config() {
  local dir; dir=$(dirname "$1")
  [ -f "$dir/sync-rules.yaml" ] || cat >"$dir/sync-rules.yaml" <<'YAML'
bucket_definitions:
  global:
    data:
      - SELECT id, name FROM lists
YAML
  cat >"$1" <<YAML
log_level: debug
http:
  listen: "127.0.0.1:$2"
  threads: 2
  max_request_body: 65536
postgres:
  uri: "${FERRY_PG_URI:-postgresql://postgres@127.0.0.1:1/none}"
auth:
  audience: [ferry]
  keys:
    - { kid: test, alg: HS256, secret: "test-secret-test-secret-test-secret" }
${3:-}
YAML
}

# converged CONFIG [SECONDS]: wait until `ferry debug dump` equals `ferry debug oracle` (storage
# holds exactly what the rules select from Postgres now); 0 when it does, 1 after SECONDS
# (default 60: the machine may be loaded) with the difference in $T_TMP/converge.diff
converged() {
  local cfg=$1 end=$((SECONDS + ${2:-60}))
  # a deadline in seconds, not a number of rounds: behind a slow link one round takes seconds
  while [ "$SECONDS" -lt "$end" ]; do
    t_in_ns "$FERRY_BIN" debug dump --config "$cfg" >"$T_TMP/dump.txt" 2>"$T_TMP/dump.err"
    t_in_ns "$FERRY_BIN" debug oracle --config "$cfg" >"$T_TMP/oracle.txt" 2>"$T_TMP/oracle.err"
    if [ -s "$T_TMP/oracle.txt" ] && cmp -s "$T_TMP/dump.txt" "$T_TMP/oracle.txt"; then return 0; fi
    sleep 0.2
  done
  diff "$T_TMP/dump.txt" "$T_TMP/oracle.txt" >"$T_TMP/converge.diff"
  return 1
}

# checksums_ok CONFIG: every bucket's stored checksum/count equals the sum/number of its ops
checksums_ok() {
  t_in_ns "$FERRY_BIN" debug dump --config "$1" --checksums |
    sed -E 's/.*"checksum":([0-9]+),"count":([0-9]+),"ops_checksum":([0-9]+),"ops":([0-9]+)\}$/\1 \2 \3 \4/' |
    awk 'NF != 4 || $1 != $3 || $2 != $4 { bad++ } END { exit bad > 0 }'
}

# storage_yaml DB_URI: the storage section for the backend under test, storage of the source
# database DB_URI (postgres: the database "<db>_st", created when missing)
storage_yaml() {
  if [ "$FERRY_TEST_STORAGE" = postgres ]; then
    psql -q "${1%/*}/postgres" -c "CREATE DATABASE \"${1##*/}_st\"" >/dev/null 2>&1 || true
    printf 'storage:\n  kind: postgres\n  uri: "%s"\n' "${1%/*}/${1##*/}_st"
  else
    printf 'storage:\n  path: storage.db\n'
  fi
}

# storage_query SQL: SQL on the storage the last replication_config/storage_yaml names (the
# SQLite file in $T_TMP, or schema ferry of $T_STORAGE_URI); prints rows as text, one a line
storage_query() {
  if [ "$FERRY_TEST_STORAGE" = postgres ]; then
    psql -tAq "$T_STORAGE_URI" -c "SET search_path = ferry" -c "$1"
  else
    sqlite3 "$T_TMP/storage.db" "$1"
  fi
}

# replication_config FILE PORT DB_URI: a ferry.yaml for replication tests (rules written separately);
# the slot prefix is unique per test script (slots are cluster-wide), or $SLOT_PREFIX
replication_config() {
  T_STORAGE_URI=
  [ "$FERRY_TEST_STORAGE" = postgres ] && T_STORAGE_URI=${3%/*}/${3##*/}_st
  cat >"$1" <<YAML
log_level: info
http:
  listen: "127.0.0.1:$2"
  threads: 2
postgres:
  uri: "$3"
replication:
  snapshot_chunk_rows: ${SNAPSHOT_CHUNK_ROWS:-1000}
  slot_prefix: ${SLOT_PREFIX:-t$(echo "$T_NAME" | tr -c 'a-z0-9\n' '_')}
$(storage_yaml "$3")
auth:
  audience: [ferry]
  keys:
    - { kid: test, alg: HS256, secret: "test-secret-test-secret-test-secret" }
YAML
}

# wait_ready PORT [SECONDS]: wait until /probes/readiness answers 200 (default 60 s)
wait_ready() {
  local i
  for ((i = 0; i < ${2:-60} * 20; i++)); do
    [ "$(t_in_ns curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/probes/readiness")" = 200 ] && return 0
    sleep 0.05
  done
  return 1
}

# wait_match URL REGEX [SECONDS]: poll URL until its body matches REGEX; prints the last body
wait_match() {
  local i body
  for ((i = 0; i < ${3:-10} * 10; i++)); do
    body=$(t_in_ns curl -s "$1")
    [[ "$body" =~ $2 ]] && { echo "$body"; return 0; }
    sleep 0.1
  done
  echo "$body"
  return 1
}

stream_once() {
  t_in_ns python3 - "$1" "$2" "$3" <<'PY'
import http.client, sys, time, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
c.request("POST", "/sync/stream", body=sys.argv[3],
          headers={"Authorization": "Token " + sys.argv[2], "content-type": "application/json"})
r = c.getresponse()
if r.status != 200:
    sys.stdout.write(r.read().decode(errors="replace") + " %d\n" % r.status)
    sys.exit(0)
t0 = time.monotonic()
while time.monotonic() - t0 < 60:
    line = r.readline()
    if not line:
        break
    sys.stdout.write(line.decode(errors="replace"))
    if b'"checkpoint_complete"' in line:
        break
PY
}
