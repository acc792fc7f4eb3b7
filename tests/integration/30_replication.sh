#!/usr/bin/env bash
# 30_replication.sh -- snapshot and streaming into bucket storage equal the rules over SQL
#
# Tens of thousands of rows over three tables with the three kinds of bucket (global, by a
# request value, by a table lookup); then every kind of change. After each step storage
# (`ferry debug dump`) must equal the oracle (`ferry debug oracle`: the rules evaluated over a
# fresh SELECT), and every bucket checksum must equal the wrapping sum of its ops.
# storage: both
source "$(dirname "$0")/../lib/testlib.sh"

db=$(new_db repl30)
psql -q "$db" <<'SQL'
CREATE TABLE lists (id text PRIMARY KEY, name text, owner_id text);
CREATE TABLE todos (id text PRIMARY KEY, list_id text, description text, done boolean,
                    n int, price numeric, created timestamptz, tags text[], meta jsonb, big text);
CREATE TABLE notes (a int, b text, body text, PRIMARY KEY (a, b));
-- every value longer than a toast pointer goes out of line: short ones too
CREATE TABLE docs (a int, b text, short text, long text, n int, PRIMARY KEY (a, b));
ALTER TABLE docs ALTER COLUMN short SET STORAGE EXTERNAL, ALTER COLUMN long SET STORAGE EXTERNAL;
ALTER TABLE docs SET (toast_tuple_target = 128);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO lists SELECT 'l'||i, 'List '||i, 'u'||(i%7) FROM generate_series(1,500) i;
INSERT INTO todos SELECT 't'||i, 'l'||(i%500+1), 'Todo '||i, i%2=0, i, i/3.0,
       '2026-01-01 00:00:00+00'::timestamptz + i * interval '1 minute', ARRAY['x','y'],
       jsonb_build_object('k', i), NULL FROM generate_series(1,30000) i;
INSERT INTO notes SELECT i, 'k'||(i%3), 'note '||i FROM generate_series(1,3000) i;
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  global:
    data:
      - SELECT * FROM lists
      - SELECT a || '-' || b AS id, body FROM notes
      - SELECT a || '-' || b AS id, short, long, n FROM docs
  by_owner:
    parameters: SELECT request.user_id() AS owner_id
    data:
      - SELECT id, name FROM lists WHERE owner_id = bucket.owner_id
  list_todos:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT id, description, done, n, price, created, tags, meta FROM todos WHERE list_id = bucket.list_id
YAML
port=$(free_port)
replication_config "$T_TMP/ferry.yaml" "$port" "$db"
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 && pass "readiness turns 200 after the snapshot" || fail "ready" "$(curl -s "http://127.0.0.1:$port/probes/readiness")"
converged "$T_TMP/ferry.yaml" 60 && pass "snapshot of 33,500 rows equals the oracle" || fail "snapshot equals the oracle" "$(head -5 "$T_TMP/converge.diff")"
checksums_ok "$T_TMP/ferry.yaml" && pass "bucket checksums equal the sum of their ops" || fail "checksums after snapshot" "mismatch"
rows=$(wc -l <"$T_TMP/dump.txt")
[ "$rows" -gt 30000 ] && pass "storage holds the rows ($rows)" || fail "storage holds the rows" "$rows"
metrics=$(curl -s "http://127.0.0.1:$port/metrics")
expect_match "metrics report snapshot progress" 'ferry_snapshot_rows_total 33500' "$metrics"

step() { # step NAME SQL
  psql -q "$db" -c "$2" || { fail "$1" "psql failed"; return; }
  if converged "$T_TMP/ferry.yaml" 60; then pass "$1"; else fail "$1" "$(head -5 "$T_TMP/converge.diff")"; fi
}
step "insert streams in" "INSERT INTO todos (id, list_id, description) VALUES ('new1', 'l1', 'fresh')"
step "update in place" "UPDATE todos SET description = 'changed', done = true WHERE id = 't5'"
step "update moving between buckets" "UPDATE todos SET list_id = 'l2' WHERE id = 't6'"
step "parameter row change moves a list to another user" "UPDATE lists SET owner_id = 'u99' WHERE id = 'l3'"
step "key change is delete + insert" "UPDATE todos SET id = 't7-renamed' WHERE id = 't7'"
step "composite key change" "UPDATE notes SET b = 'zz' WHERE a = 1"
step "delete" "DELETE FROM todos WHERE id IN ('t8', 't9')"
step "multi-table transaction" "BEGIN; INSERT INTO lists VALUES ('lx', 'X', 'u1'); INSERT INTO todos (id, list_id, description) VALUES ('tx', 'lx', 'in x'); UPDATE lists SET name = 'renamed' WHERE id = 'l1'; COMMIT"
step "large TOASTed value stored" "UPDATE todos SET big = repeat('abcdefghij', 50000) WHERE id = 't10'"
step "update leaving the TOASTed column unchanged" "UPDATE todos SET description = 'toast kept' WHERE id = 't10'"
step "short and long values stored out of line" "INSERT INTO docs VALUES (1, 'x', repeat('s', 150), repeat('L', 5000), 0), (2, 'y', repeat('t', 150), 'plain', 0)"
toast=$(psql -tAq "$db" -c "SELECT reltoastrelid::regclass FROM pg_class WHERE relname = 'docs'")
external=$(psql -tAq "$db" -c "SELECT string_agg(n::text, ',' ORDER BY n) FROM (SELECT sum(length(chunk_data)) AS n FROM $toast GROUP BY chunk_id) t")
expect_eq "row 1's short value is out of line as well as its long one" "150,5000" "$external"
step "update leaving short and long out-of-line values unchanged (composite key)" "UPDATE docs SET n = n + 1"
step "many rows in one statement" "UPDATE todos SET done = NOT done WHERE n % 10 = 0"
step "truncate removes every row of the table" "TRUNCATE notes"
step "rows come back after truncate" "INSERT INTO notes VALUES (1, 'a', 'again')"
checksums_ok "$T_TMP/ferry.yaml" && pass "checksums still equal the sum of ops after every change" || fail "checksums after changes" "mismatch"
expect_eq "no errors in the log" "" "$(grep 'level=error' "$FERRY_LOG" | head -3)"

# a source problem is reported with the SQL that fixes it, and ferry keeps retrying
db2=$(new_db repl30b)
psql -q "$db2" -c "CREATE TABLE lists (id text PRIMARY KEY, name text, owner_id text); CREATE TABLE todos (id text PRIMARY KEY, list_id text); CREATE TABLE notes (a int, b text, body text)"
port2=$(free_port)
mkdir -p "$T_TMP/b" && cp "$T_TMP/sync-rules.yaml" "$T_TMP/b/"
SLOT_PREFIX=other replication_config "$T_TMP/b/ferry.yaml" "$port2" "$db2"
start_ferry "$T_TMP/b/ferry.yaml" || exit 1
wait_match "http://127.0.0.1:$port2/probes/readiness" 'publication \\"ferry\\" does not exist' 60 >/dev/null
ready=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$port2/probes/readiness")
expect_match "readiness is 503 naming the missing publication and its fix" \
  'publication \\"ferry\\" does not exist; fix: CREATE PUBLICATION ferry FOR ALL TABLES;.* 503$' "$ready"
expect_match "the log says what is wrong and how to fix it" 'fix="CREATE PUBLICATION ferry FOR ALL TABLES;"' "$(cat "$FERRY_LOG")"
psql -q "$db2" -c "CREATE PUBLICATION ferry FOR TABLE lists"
body=$(wait_match "http://127.0.0.1:$port2/probes/readiness" 'table \\"public.(todos|notes)\\" is not in publication \\"ferry\\"; fix: ALTER PUBLICATION ferry ADD TABLE' 60) &&
  pass "after the fix it names the next problem (a table not in the publication)" || fail "next problem named" "$body"
psql -q "$db2" -c "ALTER PUBLICATION ferry ADD TABLE todos, notes"
body=$(wait_match "http://127.0.0.1:$port2/probes/readiness" 'table \\"public.notes\\" has no primary key or replica identity.*REPLICA IDENTITY FULL' 60) &&
  pass "a table without replica identity is named with its fix" || fail "replica identity named" "$body"
psql -q "$db2" -c "ALTER TABLE notes REPLICA IDENTITY FULL; INSERT INTO notes VALUES (1, 'a', 'no key')"
wait_ready "$port2" 60 && pass "once the source is fixed ferry becomes ready without a restart" || fail "ready after the fix" "$(curl -s "http://127.0.0.1:$port2/probes/readiness")"
converged "$T_TMP/b/ferry.yaml" 60 && pass "a REPLICA IDENTITY FULL table without a key replicates" || fail "FULL identity table" "$(head -3 "$T_TMP/converge.diff")"
psql -q "$db2" -c "UPDATE notes SET body = 'changed' WHERE a = 1; INSERT INTO notes VALUES (2, 'b', 'two'); DELETE FROM notes WHERE a = 2"
converged "$T_TMP/b/ferry.yaml" 60 && pass "its updates and deletes replicate" || fail "FULL identity changes" "$(head -3 "$T_TMP/converge.diff")"
