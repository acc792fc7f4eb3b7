#!/usr/bin/env bash
# 02_pg_helper.sh -- the throwaway Postgres helper starts, replicates, stops, leaves nothing
source "$(dirname "$0")/../lib/testlib.sh"

env_out=$("$T_ROOT/tests/lib/pg.sh" start helpertest) || { fail "pg.sh start" "failed"; exit 1; }
eval "$env_out"
expect_match "it prints a connection URI" '^postgresql://postgres@127\.0\.0\.1:[0-9]+/postgres$' "$FERRY_PG_URI"
expect_match "it lives under /tmp" '^/tmp/ferry-pg-helpertest\.' "$PGTMP"
expect_eq "wal_level is logical" "logical" "$(psql -Atc 'SHOW wal_level' "$FERRY_PG_URI")"
out=$(psql -Atc 'IDENTIFY_SYSTEM' "${FERRY_PG_URI}?replication=database" 2>&1)
expect_match "a replication=database connection works" '^[0-9]+\|1\|[0-9A-F]+/[0-9A-F]+\|postgres$' "$out"
pid=$(head -1 "$PGTMP/data/postmaster.pid")
"$T_ROOT/tests/lib/pg.sh" stop "$PGTMP"
sleep 0.2
if kill -0 "$pid" 2>/dev/null && ! grep -q zombie "/proc/$pid/status" 2>/dev/null; then
  fail "no postgres process is left" "pid $pid still runs"
else
  pass "no postgres process is left"
fi
[ -e "$PGTMP" ] && fail "the directory is removed" "$PGTMP exists" || pass "the directory is removed"
"$T_ROOT/tests/lib/pg.sh" stop /etc >/dev/null 2>&1
expect_eq "stop refuses a directory it did not make" "1" "$?"

# two clusters at once do not collide
a=$("$T_ROOT/tests/lib/pg.sh" start a) && b=$("$T_ROOT/tests/lib/pg.sh" start b)
pa=$(echo "$a" | sed -n 's/^PGPORT=//p'); pb=$(echo "$b" | sed -n 's/^PGPORT=//p')
[ -n "$pa" ] && [ -n "$pb" ] && [ "$pa" != "$pb" ] && pass "two clusters run at once on different ports" || fail "two clusters" "$pa $pb"
"$T_ROOT/tests/lib/pg.sh" stop "$(echo "$a" | sed -n 's/^PGTMP=//p')"
"$T_ROOT/tests/lib/pg.sh" stop "$(echo "$b" | sed -n 's/^PGTMP=//p')"
