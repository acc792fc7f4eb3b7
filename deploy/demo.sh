#!/usr/bin/env bash
# demo.sh -- `make demo` / `make demo-stop`: a throwaway Postgres and ferry, and what works
#
#   deploy/demo.sh start   stop any previous demo, start Postgres (wal_level=logical) in /tmp and
#                          `ferry serve` in the background (setsid), then walk through: two users'
#                          clients sync their own data, a psql change arrives live, an offline
#                          write lands later, an unauthorized write is rejected, two offline
#                          bookings of one room land and the violation reaches its writer, the
#                          official PowerSync Node client syncs (when node and npm exist);
#                          last, it starts the web demo (deploy/demo/web: @powersync/web in a
#                          browser, its own origin, on 127.0.0.1) and prints its URL
#   deploy/demo.sh stop    stop exactly what the demo started (by the PIDs it recorded)
#
# State lives in $DEMO_VAR (default ./var): demo.env, ferry.pid, web.pid (the web demo's server),
# clients.pid (background client processes), ferry.log, web.log, ferry.yaml, sync-rules.yaml, the clients' SQLite files (*.db).
# DEMO_NONINTERACTIVE=1 never pauses for the user (tests use it). DEMO_PORT picks the port
# (default 8080, or a free one when 8080 is taken), DEMO_WEB_PORT the web demo's (default 5173).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
var=${DEMO_VAR:-$root/var}
ferry=${FERRY_BIN:-$root/build/ferry}
todo_bin=${FERRY_TODO_BIN:-$(dirname "$ferry")/ferry-todo}
node_dir=$root/tests/conformance/node   # the PowerSync client installed for the conformance tests
interactive=1
[ "${DEMO_NONINTERACTIVE:-0}" = "1" ] || [ ! -t 0 ] && interactive=0

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pause() { if [ $interactive = 1 ]; then read -r -p "   (press Enter to continue) " _ || true; fi; }
indent() { sed 's/^/   /'; }
cmd() { printf '   \033[2m$ %s\033[0m\n' "$*"; }  # show the command a step runs

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stop_pid PID NAME: TERM, then KILL after 5 s, when PID still runs NAME
stop_pid() {
  local pid=$1 name=$2
  kill -0 "$pid" 2>/dev/null && grep -q "$name" "/proc/$pid/cmdline" 2>/dev/null || return 1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  return 0
}

stop() {
  local stopped=0 pid name
  if [ -f "$var/clients.pid" ]; then
    while read -r pid name; do
      if stop_pid "$pid" "$name"; then echo "demo: stopped $name (pid $pid)"; stopped=1; fi
    done <"$var/clients.pid"
    rm -f "$var/clients.pid"
  fi
  if [ -f "$var/web.pid" ]; then
    pid=$(cat "$var/web.pid")
    if stop_pid "$pid" server.mjs; then echo "demo: stopped the web demo (pid $pid)"; stopped=1; fi
    rm -f "$var/web.pid"
  fi
  if [ -f "$var/ferry.pid" ]; then
    pid=$(cat "$var/ferry.pid")
    if stop_pid "$pid" ferry; then echo "demo: stopped ferry (pid $pid)"; stopped=1; fi
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

# background PID NAME: remember a client process, so demo-stop ends it if the demo did not
background() { echo "$1 $2" >>"$var/clients.pid"; }

# todo USER ARGS...: the libferry example app (clientsdk/examples/todo.c), one replica per user
todo() {
  local user=$1; shift
  "$todo_bin" --db "$var/$user.db" --endpoint "${TODO_ENDPOINT:-$base}" --token "${tokens[$user]}" "$@"
}

# summarize FILE: one short line per sync-stream line (NDJSON)
summarize() {
  sed -E 's/("data":\[).*(\],"next_after")/\1…\2/; s/"checksum":[0-9]+,//g' "$1" | cut -c1-150 | indent
}

# the objects of type TYPE in a sync-stream file, one "id: data" line each
stream_objects() {
  jq -r --arg t "$2" 'select(.data) | .data.data[] | select(.object_type == $t and .op == "PUT")
                     | "\(.object_id): \(.data)"' "$1" 2>/dev/null | cut -c1-160 | indent
}

start() {
  [ -x "$ferry" ] || { echo "demo: $ferry is missing; run make first" >&2; exit 1; }
  [ -x "$todo_bin" ] || { echo "demo: $todo_bin is missing; run make first" >&2; exit 1; }
  mkdir -p "$var"
  if [ -f "$var/ferry.pid" ] || [ -f "$var/demo.env" ] || [ -f "$var/clients.pid" ] || [ -f "$var/web.pid" ]; then
    say "Stopping the previous demo"
    stop
  fi

  # the storage and the clients' replicas of an earlier demo belong to its (now gone) database
  rm -f "$var"/ferry-storage.db* "$var"/alice.db* "$var"/bob.db* "$var"/*.ndjson
  rm -rf "$var/powersync"

  say "Starting a throwaway PostgreSQL 15 (wal_level=logical)"
  local pgenv; pgenv=$("$root/tests/lib/pg.sh" start demo)
  echo "$pgenv" >"$var/demo.env"
  eval "$pgenv"
  psql -q "$FERRY_PG_URI" -c "CREATE DATABASE app" >/dev/null
  local app_uri=${FERRY_PG_URI%/*}/app
  psql -q -v ON_ERROR_STOP=1 "$app_uri" -f "$root/deploy/demo/schema.sql" >/dev/null
  cat "$root/deploy/demo/sync-rules.yaml" "$root/deploy/demo/write-rules.yaml" >"$var/sync-rules.yaml"
  echo "   postgres is at $app_uri (data in $PGTMP)"
  echo "   demo schema: orgs, members, lists, todos, rooms, bookings, announcements (deploy/demo/schema.sql)"
  echo "   users: alice and bob are members of acme, carol of globex"
  sql() { psql -qAtX "$app_uri" -c "$1"; }

  local port=${DEMO_PORT:-8080}
  if port_in_use "$port"; then
    while port_in_use "$port"; do port=$(( 10000 + RANDOM % 22000 )); done
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
  base=http://127.0.0.1:$port
  local ok=0
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null "$base/probes/liveness"; then ok=1; break; fi
    sleep 0.05
  done
  if [ $ok = 0 ]; then
    echo "demo: ferry did not start; its log:" >&2; cat "$var/ferry.log" >&2; stop; exit 1
  fi
  echo "   ferry $("$ferry" version | cut -d' ' -f2-) runs as pid $(cat "$var/ferry.pid")"
  echo "   sync rules: $var/sync-rules.yaml (deploy/demo/sync-rules.yaml + write-rules.yaml)"
  for _ in $(seq 1 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/probes/readiness")" = 200 ] && break
    sleep 0.1
  done
  cmd "curl $base/probes/readiness"
  curl -s "$base/probes/readiness" | cut -c1-200 | indent
  echo
  pause

  say "Replication: Postgres rows in bucket storage"
  cmd "ferry debug dump   (each bucket's rows, as clients will receive them; first lines)"
  "$ferry" debug dump --config "$var/ferry.yaml" | head -12 | cut -c1-150 | indent
  pause

  declare -gA tokens
  local u
  for u in alice bob; do tokens[$u]=$("$ferry" token --config "$var/ferry.yaml" --sub "$u"); done

  say "1. Two users, two apps: each syncs only their own data"
  echo "   build/ferry-todo is a small todo app on libferry (clientsdk/examples/todo.c), one SQLite file each"
  for u in alice bob; do
    cmd "ferry-todo --db $u.db --endpoint $base --token \$${u^^}_TOKEN sync --wait"
    todo "$u" sync --wait | indent
  done
  for u in alice bob; do
    echo "   $u's lists:  $(todo "$u" lists | cut -f1 | tr '\n' ' ')   todos: $(todo "$u" list | cut -f1 | tr '\n' ' ')"
  done
  echo "   (l-alice is alice's own, l-bob bob's, l-acme their organisation's; globex's list went to neither)"
  pause

  say "2. A change made with psql arrives live"
  echo "   alice keeps a sync stream open (the PowerSync protocol: POST /sync/stream, NDJSON)"
  cmd "curl -N -X POST $base/sync/stream -H 'Authorization: Token …' -d '{\"client_id\":\"demo\"}'"
  local stream_out=$var/alice-stream.ndjson
  timeout 20 curl -sN -X POST "$base/sync/stream" -H "Authorization: Token ${tokens[alice]}" \
    -H 'content-type: application/json' -d '{"buckets":[],"client_id":"demo"}' >"$stream_out" &
  local curl_pid=$!
  background "$curl_pid" curl
  for _ in $(seq 1 100); do grep -q checkpoint_complete "$stream_out" 2>/dev/null && break; sleep 0.05; done
  summarize "$stream_out"
  local before; before=$(wc -l <"$stream_out")
  cmd "psql -c \"INSERT INTO todos (id, list_id, description, created_by) VALUES ('t7', 'l-alice', 'Water the plants', 'alice')\""
  sql "INSERT INTO todos (id, list_id, description, created_by) VALUES ('t7', 'l-alice', 'Water the plants', 'alice')"
  for _ in $(seq 1 100); do grep -q 'Water the plants' "$stream_out" && break; sleep 0.05; done
  sleep 0.3
  echo "   on the open stream:"
  tail -n +"$((before + 1))" "$stream_out" >"$stream_out.new"
  summarize "$stream_out.new"
  stream_objects "$stream_out.new" todos | sed 's/^   /   live: /'
  kill "$curl_pid" 2>/dev/null || true; wait "$curl_pid" 2>/dev/null || true
  cmd "ferry-todo --db alice.db … sync --wait && ferry-todo --db alice.db list"
  todo alice sync --wait >/dev/null
  todo alice list | grep t7 | indent
  pause

  say "3. Offline: alice writes without a connection; the write lands when she is back"
  local dead; dead=$(( port + 1 )); while port_in_use "$dead"; do dead=$(( 10000 + RANDOM % 22000 )); done
  cmd "ferry-todo --db alice.db add 'Buy stamps (written offline)'"
  local offline_id; offline_id=$(todo alice add 'Buy stamps (written offline)')
  echo "   $offline_id"
  cmd "ferry-todo --db alice.db --endpoint http://127.0.0.1:$dead … sync   (nothing listens there)"
  TODO_ENDPOINT=http://127.0.0.1:$dead todo alice sync 2>&1 | cut -c1-160 | indent
  echo "   in Postgres: $(sql "SELECT count(*) FROM todos WHERE id = '$offline_id'") rows"
  cmd "ferry-todo --db alice.db --endpoint $base … sync --wait   (back online)"
  todo alice sync --wait | indent
  echo "   in Postgres: $(sql "SELECT description || ' (created_by ' || created_by || ')' FROM todos WHERE id = '$offline_id'")"
  pause

  say "4. An unauthorized write is rejected and the app is told"
  echo "   bob adds a todo to alice's private list; the write rules only let users write their own"
  echo "   lists and their organisations' (deploy/demo/write-rules.yaml)"
  cmd "ferry-todo --db bob.db add 'sneaky' --list l-alice && ferry-todo --db bob.db … sync --wait"
  local bad; bad=$(todo bob add 'sneaky' --list l-alice)
  todo bob sync --wait 2>&1 | indent
  echo "   bob's replica: $(sqlite3 "$var/bob.db" "SELECT count(*) FROM todos WHERE id = '$bad'") rows with that id; Postgres: $(sql "SELECT count(*) FROM todos WHERE id = '$bad'")"
  pause

  say "5. Two offline bookings of one room both land; the violation reaches its writer"
  echo "   alice and bob both booked the Boardroom for 8 January 2030 while offline; when they are back"
  echo "   their apps upload the queued writes (what an SDK's uploadData sends to POST /api/write):"
  local who at id
  for who in alice:10:00:bk-alice bob:10:30:bk-bob; do
    IFS=: read -r u h m id <<<"$who"; at="2030-01-08 $h:$m+00"
    cmd "curl -X POST $base/api/write … {\"op\":\"PUT\",\"type\":\"bookings\",\"id\":\"$id\",… \"starts_at\":\"$at\"…}   ($u)"
    curl -s -X POST "$base/api/write" -H "Authorization: Bearer ${tokens[$u]}" -H 'content-type: application/json' \
      -d "{\"client_id\":\"$u-phone\",\"batch\":[{\"op_id\":1,\"op\":\"PUT\",\"type\":\"bookings\",\"id\":\"$id\",
           \"data\":{\"room_id\":\"r-board\",\"org_id\":\"acme\",\"booked_by\":\"$u\",
                     \"starts_at\":\"$at\",\"ends_at\":\"2030-01-08 $((10#$h + 1)):$m+00\"}}]}" | indent
    echo
  done
  echo "   in Postgres: $(sql "SELECT string_agg(id || ' ' || to_char(starts_at AT TIME ZONE 'UTC', 'HH24:MI') || '-' || to_char(ends_at AT TIME ZONE 'UTC', 'HH24:MI'), ', ' ORDER BY id) FROM bookings WHERE room_id = 'r-board'")"
  echo "   ferry_violations: $(sql "SELECT string_agg(user_id || ': ' || row_id || ' ' || message || ' ' || conflicting_ids::text, '; ') FROM ferry_violations")"
  echo "   bob's next sync brings him his violation (bucket my_violations):"
  cmd "curl -N -X POST $base/sync/stream -H 'Authorization: Token …(bob)' | grep ferry_violations"
  local bob_out=$var/bob-stream.ndjson
  for _ in $(seq 1 50); do
    timeout 2 curl -sN -X POST "$base/sync/stream" -H "Authorization: Token ${tokens[bob]}" \
      -H 'content-type: application/json' -d '{"buckets":[],"client_id":"demo-bob"}' >"$bob_out" || true
    grep -q ferry_violations "$bob_out" && break
  done
  jq -r 'select(.data) | .data.data[] | select(.object_type == "ferry_violations" and .op == "PUT")
         | .data | (if type == "string" then fromjson else . end)
         | "   violation for bob: \(.table_name) \(.row_id): \(.message) (conflicts with \(.conflicting_ids))"' "$bob_out"
  pause

  say "6. The official PowerSync Node client syncs the same data"
  if command -v node >/dev/null && command -v npm >/dev/null; then
    if [ ! -f "$node_dir/.installed" ] || [ "$node_dir/package-lock.json" -nt "$node_dir/.installed" ] ||
       [ ! -d "$node_dir/node_modules/@powersync/node" ]; then
      echo "   installing @powersync/node into tests/conformance/node (npm ci; builds better-sqlite3, about 2 minutes)"
      (cd "$node_dir" && npm_config_nodedir=/usr npm ci --no-fund --no-audit --foreground-scripts 2>&1 |
         grep --line-buffered -E '^(added|npm (warn|error)|  (CXX|CC|SOLINK|COPY))' | indent) &&
        [ -d "$node_dir/node_modules/@powersync/node" ] && touch "$node_dir/.installed" ||
        echo "   npm ci failed; skipping this step"
    fi
    if [ -d "$node_dir/node_modules/@powersync/node" ]; then
      mkdir -p "$var/powersync"
      cp "$root/deploy/demo/powersync-client.mjs" "$var/powersync/"
      ln -sfn "$node_dir/node_modules" "$var/powersync/node_modules"
      cmd "node deploy/demo/powersync-client.mjs   (as alice; connector with uploadData -> /api/write)"
      FERRY_ENDPOINT=$base FERRY_TOKEN=${tokens[alice]} DEMO_DIR=$var/powersync \
        timeout 90 node "$var/powersync/powersync-client.mjs" &
      local node_pid=$!
      background "$node_pid" node
      wait "$node_pid" || echo "   the PowerSync client failed (exit $?)"
      cmd "ferry-todo --db alice.db … sync --wait && ferry-todo --db alice.db list   (libferry sees it too)"
      todo alice sync --wait >/dev/null && todo alice list | grep 'PowerSync' | indent
    fi
  else
    echo "   node and npm are not installed: skipped (apt-get install nodejs npm, then make demo again)"
  fi
  pause

  say "Which buckets a user gets"
  cmd "ferry rules explain sync-rules.yaml --token \$(ferry token --sub bob) --db …"
  "$ferry" rules explain "$var/sync-rules.yaml" --token "${tokens[bob]}" --db "$app_uri" --rule-version 1 2>&1 | indent
  pause

  say "Errors have one JSON shape; metrics are Prometheus text"
  cmd "curl $base/nowhere"
  echo "   $(curl -s "$base/nowhere")"
  cmd "curl -s $base/metrics | grep -E '^ferry_(write_ops|write_violations|replication_lag)'"
  curl -s "$base/metrics" | grep -E '^ferry_(write_ops_total|write_violations_total|replication_lag)' | indent || true

  rm -f "$var/clients.pid"
  local web_url=
  say "The web app: @powersync/web in a browser, served from its own origin"
  if command -v node >/dev/null && command -v npm >/dev/null &&
     "$root/deploy/demo/web/build.sh" >"$var/web-build.log" 2>&1; then
    local wport=${DEMO_WEB_PORT:-5173}
    while port_in_use "$wport"; do wport=$(( 10000 + RANDOM % 22000 )); done
    FERRY_ENDPOINT=$base DEMO_SECRET=$secret DEMO_KID=dev DEMO_AUDIENCE=ferry \
      DEMO_USERS=alice,bob,carol DEMO_WEB_PORT=$wport \
      setsid node "$root/deploy/demo/web/server.mjs" >"$var/web.log" 2>&1 </dev/null &
    echo $! >"$var/web.pid"
    for _ in $(seq 1 100); do
      web_url=$(sed -n 's/^web demo: //p' "$var/web.log"); [ -n "$web_url" ] && break; sleep 0.05
    done
    if [ -n "$web_url" ]; then
      echo "   $web_url   (open it in a browser; switch users at the top right)"
      echo "   another origin than ferry's ($base): ferry answers CORS (http.cors)"
      echo "   tokens: minted by the demo's own server on 127.0.0.1 (demo only; ferry has no token endpoint)"
    else
      echo "   the web demo did not start; its log: $var/web.log"
    fi
  else
    echo "   skipped: node and npm are needed to build it (log: $var/web-build.log)"
  fi
  say "The demo is running"
  cat <<TXT
   web app:   ${web_url:-(not started)}
   endpoint:  $base
   token:     ${tokens[alice]}
              (user alice, 1 hour; another: build/ferry token --config $var/ferry.yaml --sub bob)
   connect:   build/ferry-todo --db my.db --endpoint $base --token <token> sync --wait
              or any PowerSync SDK: endpoint and token from fetchCredentials(), uploads to
              $base/api/write (README.md, "Quickstart")
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
