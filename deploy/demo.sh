#!/usr/bin/env bash
# demo.sh -- `make demo` / `make demo-stop`: a throwaway Postgres and ferry, and what works
#
#   deploy/demo.sh start   stop any previous demo, start Postgres (wal_level=logical) in /tmp and
#                          `ferry serve` in the background (setsid), then show it working
#   deploy/demo.sh stop    stop exactly what the demo started (by the PIDs it recorded)
#
# State lives in $DEMO_VAR (default ./var): demo.env, ferry.pid, ferry.log, ferry.yaml.
# DEMO_NONINTERACTIVE=1 never pauses for the user (tests use it). DEMO_PORT picks the port
# (default 8080, or a free one when 8080 is taken).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
var=${DEMO_VAR:-$root/var}
ferry=${FERRY_BIN:-$root/build/ferry}
interactive=1
[ "${DEMO_NONINTERACTIVE:-0}" = "1" ] || [ ! -t 0 ] && interactive=0

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pause() { if [ $interactive = 1 ]; then read -r -p "   (press Enter to continue) " _ || true; fi; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop() {
  local stopped=0
  if [ -f "$var/ferry.pid" ]; then
    local pid; pid=$(cat "$var/ferry.pid")
    if kill -0 "$pid" 2>/dev/null && grep -q ferry "/proc/$pid/cmdline" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
      echo "demo: stopped ferry (pid $pid)"; stopped=1
    fi
    rm -f "$var/ferry.pid"
  fi
  if [ -f "$var/demo.env" ]; then
    local pgtmp; pgtmp=$(sed -n 's/^PGTMP=//p' "$var/demo.env")
    if [ -n "$pgtmp" ] && [ -d "$pgtmp" ]; then
      "$root/tests/lib/pg.sh" stop "$pgtmp"
      echo "demo: stopped postgres ($pgtmp)"; stopped=1
    fi
    rm -f "$var/demo.env"
  fi
  [ $stopped = 1 ] || echo "demo: nothing was running"
}

start() {
  [ -x "$ferry" ] || { echo "demo: $ferry is missing; run make first" >&2; exit 1; }
  mkdir -p "$var"
  if [ -f "$var/ferry.pid" ] || [ -f "$var/demo.env" ]; then
    say "Stopping the previous demo"
    stop
  fi

  # the storage of an earlier demo belongs to its (now gone) database
  rm -f "$var"/ferry-storage.db "$var"/ferry-storage.db-wal "$var"/ferry-storage.db-shm

  say "Starting a throwaway PostgreSQL 15 (wal_level=logical)"
  local pgenv; pgenv=$("$root/tests/lib/pg.sh" start demo)
  echo "$pgenv" >"$var/demo.env"
  eval "$pgenv"
  psql -q "$FERRY_PG_URI" -c "CREATE DATABASE app" >/dev/null
  local app_uri=${FERRY_PG_URI%/*}/app
  psql -q -v ON_ERROR_STOP=1 "$app_uri" -f "$root/deploy/demo/schema.sql" >/dev/null
  cp "$root/deploy/demo/sync-rules.yaml" "$var/sync-rules.yaml"
  echo "   postgres is at $app_uri (data in $PGTMP)"
  echo "   demo schema: orgs, members, lists, todos, announcements (deploy/demo/schema.sql)"

  local port=${DEMO_PORT:-8080}
  if port_in_use "$port"; then
    while port_in_use "$port"; do port=$(( 20000 + RANDOM % 30000 )); done
    echo "   port 8080 is taken; using $port"
  fi
  local secret
  secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  cat >"$var/ferry.yaml" <<YAML
# Written by make demo; see deploy/ferry.example.yaml for every key.
log_level: info
http:
  listen: "127.0.0.1:$port"
  threads: 2
postgres:
  uri: "$app_uri"
storage:
  path: ferry-storage.db
auth:
  audience: [ferry]
  keys:
    - { kid: dev, alg: HS256, secret: "$secret" }
sync_rules:
  path: sync-rules.yaml
YAML
  echo "PORT=$port" >>"$var/demo.env"

  say "Starting ferry (log: $var/ferry.log)"
  setsid "$ferry" serve --config "$var/ferry.yaml" >"$var/ferry.log" 2>&1 < /dev/null &
  echo $! >"$var/ferry.pid"
  local base=http://127.0.0.1:$port ok=0
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null "$base/probes/liveness"; then ok=1; break; fi
    sleep 0.05
  done
  if [ $ok = 0 ]; then
    echo "demo: ferry did not start; its log:" >&2; cat "$var/ferry.log" >&2; stop; exit 1
  fi
  echo "   ferry $("$ferry" version | cut -d' ' -f2-) runs as pid $(cat "$var/ferry.pid")"
  echo "   sync rules: $var/sync-rules.yaml (deploy/demo/sync-rules.yaml)"
  pause

  say "Liveness and readiness probes"
  echo "   \$ curl $base/probes/liveness"
  echo "   $(curl -s "$base/probes/liveness")"
  echo "   \$ curl $base/probes/readiness"
  echo "   $(curl -s "$base/probes/readiness")"
  pause

  say "Replication: Postgres rows in bucket storage"
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/probes/readiness")" = 200 ] && break
    sleep 0.1
  done
  echo "   \$ ferry debug dump   (each bucket's rows, as clients will receive them)"
  "$ferry" debug dump --config "$var/ferry.yaml" | sed 's/^/   /' | head -20
  pause

  say "A client syncs: alice opens the sync stream (the PowerSync protocol, NDJSON)"
  local token
  token=$("$ferry" token --config "$var/ferry.yaml" --sub alice)
  echo "   \$ curl -N -X POST $base/sync/stream -H 'Authorization: Token …' -d '{\"client_id\":\"demo\"}'"
  local stream_out=$var/demo-stream.ndjson
  timeout 4 curl -sN -X POST "$base/sync/stream" -H "Authorization: Token $token" \
    -H 'content-type: application/json' -d '{"buckets":[],"client_id":"demo"}' >"$stream_out" &
  local curl_pid=$!
  sleep 1
  summarize() { # one short line per NDJSON line
    sed -E 's/("data":\[).*(\],"next_after")/\1…\2/; s/"checksum":[0-9]+,//g' "$1" | cut -c1-150 | sed 's/^/   /'
  }
  summarize "$stream_out"
  pause

  say "A change made with psql arrives live on the open stream"
  echo "   \$ psql -c \"UPDATE todos SET completed = true WHERE id = 't1'\""
  local before
  before=$(wc -l <"$stream_out")
  psql -q "$app_uri" -c "UPDATE todos SET completed = true WHERE id = 't1'"
  wait "$curl_pid" 2>/dev/null || true
  tail -n +"$((before + 1))" "$stream_out" >"$stream_out.new"
  summarize "$stream_out.new"
  rm -f "$stream_out" "$stream_out.new"
  pause

  say "Which buckets a user gets"
  echo "   \$ ferry rules explain sync-rules.yaml --token \$(ferry token --sub alice) --db …"
  "$ferry" rules explain "$var/sync-rules.yaml" --token "$token" --db "$app_uri" --rule-version 1 2>&1 | sed 's/^/   /'
  pause

  say "Errors always have one JSON shape"
  echo "   \$ curl $base/nowhere"
  echo "   $(curl -s "$base/nowhere")"
  pause

  say "Prometheus metrics"
  echo "   \$ curl $base/metrics"
  curl -s "$base/metrics" | grep -v '^#' | sed 's/^/   /'

  say "The demo is running"
  cat <<TXT
   endpoint:  $base
   token:     $token   (user alice, 1 hour; more: build/ferry token --config $var/ferry.yaml --sub bob)
   config:    $var/ferry.yaml
   ferry log: $var/ferry.log
   postgres:  psql $app_uri
   stop it:   make demo-stop
TXT
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: deploy/demo.sh start|stop" >&2; exit 2 ;;
esac
