#!/usr/bin/env bash
# 82_sdk_publish.sh -- libferry publishes rows exactly: real Postgres, real ferry, ferry-todo
#
# A first sync of a few thousand rows whose text needs JSON escapes (quotes, backslashes,
# newlines, tabs, non-ASCII) goes through the set-based publish (the JSON read once in C,
# json_extract for what that reader leaves); replicas must equal the SQL oracle. Then the app
# adds its own trigger on a synced table: publishing must keep triggers on (the trigger fires for
# the rows of a bucket that appears later and for updated rows) and must not queue server data
# for upload. Ops of one key arriving twice (rows updated between syncs) exercise the batched
# stores replacing stored ops.
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"
TODO=${FERRY_TODO_BIN:-$(dirname "$FERRY_BIN")/ferry-todo}
[ -x "$TODO" ] || { fail "ferry-todo is built" "$TODO missing (make build/ferry-todo)"; exit 1; }

write_setup sdk82 "$(cat "$T_ROOT/deploy/demo/schema.sql")" "$(cat "$T_ROOT/deploy/demo/sync-rules.yaml")"
A=$(write_token alice)
export FERRY_TODO_TIMEOUT=60
todo() { # todo CLIENT ARGS...
  local c=$1; shift
  "$TODO" --db "$T_TMP/$c.db" --endpoint "$W_URL" --token "$A" "$@"
}
oracle() { # the todos the rules give alice, as "id|description|completed"
  sql "SELECT id || '|' || description || '|' || completed::int FROM todos
       WHERE list_id IN (SELECT id FROM lists WHERE owner_id = 'alice' AND org_id IS NULL)
          OR org_id IN (SELECT org_id FROM members WHERE user_id = 'alice') ORDER BY id"
}
replica() { sqlite3 "$T_TMP/$1.db" "SELECT id || '|' || description || '|' || completed FROM todos ORDER BY id"; }
same() { # same NAME WANT GOT: like expect_eq, but shows only the first differing lines
  if [ "$2" = "$3" ]; then pass "$1"; else
    fail "$1" "$(diff <(echo "$2") <(echo "$3") | head -5 | tr '\n' ' ') ($(echo "$2" | wc -l) vs $(echo "$3" | wc -l) lines)"
  fi
}

sql "INSERT INTO todos (id, list_id, description, completed, created_by)
     SELECT 'e' || lpad(i::text, 5, '0'), 'l-alice',
            CASE i % 6 WHEN 0 THEN 'quote \" and back\\slash ' || i
                       WHEN 1 THEN E'line\nbreak\tand tab ' || i
                       WHEN 2 THEN 'non-ASCII é ü 漢字 😀 ' || i
                       WHEN 3 THEN '{\"looks\": [\"like\", \"json\"]} ' || i
                       WHEN 4 THEN '' ELSE 'plain ' || i END,
            i % 3 = 0, 'alice'
     FROM generate_series(1, 4000) i" >/dev/null
# wait until ferry has replicated them: a local write's write checkpoint comes after the insert
todo w0 sync --wait >/dev/null 2>&1
todo w0 edit t1 "Buy milk." >/dev/null
todo w0 sync --wait >/dev/null 2>&1

# 1. first sync: escapes and non-ASCII text come out as Postgres has them
todo c1 sync --wait >"$T_TMP/c1.sync" 2>&1 || fail "first sync of c1" "$(cat "$T_TMP/c1.sync")"
same "c1 equals the oracle after the first sync" "$(oracle)" "$(replica c1)"
expect_eq "c1 holds the 4000 rows with escapes" "4000" \
  "$(sqlite3 "$T_TMP/c1.db" "SELECT count(*) FROM todos WHERE id LIKE 'e%'")"
expect_match "c1 validated at once" 'checksum failures 0' "$(cat "$T_TMP/c1.sync")"

# 2. the app's own trigger on a synced table
sqlite3 "$T_TMP/c1.db" "CREATE TABLE app_log(id TEXT); CREATE TRIGGER app_todos AFTER INSERT ON todos BEGIN INSERT INTO app_log VALUES (NEW.id); END;"
sql "INSERT INTO members VALUES ('m82', 'globex', 'alice')" >/dev/null # a new bucket: globex's todos
sql "UPDATE todos SET description = description || ' (v2)', completed = NOT completed WHERE id IN ('e00007', 'e00008', 'e00009')" >/dev/null
sql "UPDATE todos SET description = description || ' (v3)' WHERE id = 'e00007'" >/dev/null
todo c1 edit t2 "Call the plumber today" >/dev/null # its write checkpoint follows the changes
todo c1 sync --wait >/dev/null 2>&1
out=$(todo c1 sync --wait 2>&1) || fail "second sync of c1" "$out" # a new connection: new buckets
same "c1 equals the oracle after a new bucket and updates" "$(oracle)" "$(replica c1)"
expect_eq "the app's trigger fired for the new bucket's row" "1" \
  "$(sqlite3 "$T_TMP/c1.db" "SELECT count(*) FROM app_log WHERE id = 't6'")"
expect_eq "the app's trigger fired for the updated rows" "3" \
  "$(sqlite3 "$T_TMP/c1.db" "SELECT count(DISTINCT id) FROM app_log WHERE id IN ('e00007', 'e00008', 'e00009')")"
expect_eq "server data is not queued for upload" "0" "$(sqlite3 "$T_TMP/c1.db" "SELECT count(*) FROM ferry_crud")"

# 3. a fresh client gets everything in one first sync (several buckets, no app trigger)
todo c2 sync --wait >"$T_TMP/c2.sync" 2>&1 || fail "first sync of c2" "$(cat "$T_TMP/c2.sync")"
same "c2 equals the oracle" "$(oracle)" "$(replica c2)"
expect_eq "the oplog keeps an op's type, id and subkey" "1" \
  "$(sqlite3 "$T_TMP/c2.db" "SELECT count(*) FROM ferry_oplog WHERE row_id = 'e00001' AND row_type || '/' || row_id || '/' || subkey LIKE 'todos/e00001/%'")"
# Ferry's subkeys ("public.todos/<id>") are stored as their prefix's number, and read back whole
expect_eq "the subkey is stored as its prefix's number and reads back whole" \
  "blob public.todos/e00001" \
  "$(sqlite3 "$T_TMP/c2.db" "SELECT typeof(subkey), (SELECT prefix FROM ferry_subkeys WHERE id = CAST(subkey AS TEXT)) || '/' || row_id FROM ferry_oplog WHERE row_id = 'e00001' AND row_type = 'todos'" | tr '|' ' ')"

write_finish
