#!/usr/bin/env bash
# pg.sh -- a throwaway PostgreSQL 15 cluster for tests and the demo
#
#   tests/lib/pg.sh start [NAME]   start a cluster in a new /tmp/ferry-pg-NAME.XXXXXX directory on a
#                                  free port; prints shell assignments (eval them):
#                                  PGTMP=… PGPORT=… PGHOST=… FERRY_PG_URI=…
#   tests/lib/pg.sh stop PGTMP     stop that cluster and remove its directory
#
# wal_level=logical, enough slots and WAL senders, unix socket inside the temp directory, trust
# auth on loopback only. As root the server runs as the postgres user (root cannot run initdb).
# The directory is never inside the checkout: its parents may not be traversable by postgres.
#
# In a network namespace a test made (tests/lib/netns.sh): PG_NETNS=NAME runs the server there,
# PG_LISTEN=ADDR makes it listen on ADDR too (FERRY_PG_URI then names ADDR), and PG_HBA_NET=CIDR
# trusts clients from CIDR (for queries and replication). PG_OPTS adds server options ("-c k=v").
# The server's command line is kept in $PGTMP/pg_ctl.opts, so a test can restart it the same way.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

as_pg() {
  local pre=()
  [ -n "${PG_NETNS:-}" ] && pre=(ip netns exec "$PG_NETNS")
  if [ "$(id -u)" -eq 0 ]; then "${pre[@]}" runuser -u postgres -- "$@"; else "${pre[@]}" "$@"; fi
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  local name=${1:-test}
  [ -x "$PGBIN/initdb" ] || { echo "pg.sh: $PGBIN/initdb not found (install postgresql-15)" >&2; exit 1; }
  local dir
  dir=$(mktemp -d "/tmp/ferry-pg-$name.XXXXXX")
  chmod 755 "$dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$dir"; fi
  if ! as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
       >"$dir/initdb.log" 2>&1; then
    echo "pg.sh: initdb failed:" >&2; cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1
  fi
  if [ -n "${PG_HBA_NET:-}" ]; then
    printf 'host all all %s trust\nhost replication all %s trust\n' "$PG_HBA_NET" "$PG_HBA_NET" \
      >>"$dir/data/pg_hba.conf"
  fi
  local port tries=0 listen=127.0.0.1${PG_LISTEN:+,$PG_LISTEN} opts
  while :; do
    port=$(( 10000 + (RANDOM * 32768 + RANDOM) % 22000 ))  # below the ephemeral range (32768+)
    opts="-c port=$port -c listen_addresses=$listen -c unix_socket_directories=$dir \
             -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=200 ${PG_OPTS:-}"
    if ! port_in_use "$port" && as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
         -o "$opts" start >"$dir/pg_ctl.log" 2>&1; then
      echo "$opts" >"$dir/pg_ctl.opts"
      break
    fi
    tries=$((tries + 1))
    if [ $tries -ge 5 ]; then
      echo "pg.sh: could not start postgres:" >&2; cat "$dir/server.log" "$dir/pg_ctl.log" >&2 2>/dev/null
      rm -rf "$dir"; exit 1
    fi
  done
  echo "$port" >"$dir/port"
  echo "PGTMP=$dir"
  echo "PGPORT=$port"
  echo "PGHOST=$dir"
  echo "FERRY_PG_URI=postgresql://postgres@${PG_LISTEN:-127.0.0.1}:$port/postgres"
}

stop() {
  local dir=${1:?usage: pg.sh stop PGTMP}
  case "$dir" in /tmp/ferry-pg-*) ;; *) echo "pg.sh: refusing to remove $dir" >&2; exit 1 ;; esac
  [ -d "$dir" ] || exit 0
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    # pg_ctl waits for the postmaster; make sure nothing of this cluster is left
    local pid
    pid=$(head -1 "$dir/data/postmaster.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: pg.sh start [NAME] | stop PGTMP" >&2; exit 2 ;;
esac
