#!/usr/bin/env bash
# 50_write_auth.sh -- POST /api/write: the authorization matrix of the write rules
#
# Allowed writes are applied; each forbidden one (someone else's row, an update that changes the
# owner, a row one does not own, a column not listed, a table without write rules, an operation
# not allowed) is rejected with its code, the rest of the batch still applied, and nothing of the
# rejected ones reaches Postgres. Also: 400 for malformed bodies, 401 without a token, 413 for an
# oversized body, per-batch log line and /metrics counters, and readiness held back by a write
# rule Postgres rejects (reported with its file position).
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"

write_setup write50 "
CREATE TABLE todos (id text PRIMARY KEY, description text NOT NULL, owner text NOT NULL,
                    done boolean NOT NULL DEFAULT false, secret text DEFAULT 'none');
CREATE TABLE audit (id text PRIMARY KEY, note text);
CREATE TABLE logs (id text PRIMARY KEY, message text);
CREATE TABLE lists (id text PRIMARY KEY, owner text NOT NULL);
CREATE TABLE items (id text PRIMARY KEY, list_id text NOT NULL, label text);
INSERT INTO lists VALUES ('bobs', 'bob');
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO todos (id, description, owner) VALUES ('bob-1', 'bob''s', 'bob'), ('alice-0', 'mine', 'alice');
INSERT INTO logs VALUES ('l0', 'first');
" "
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, description, done FROM todos WHERE owner = bucket.owner
write_rules:
  todos:
    operations: [insert, update, delete]
    columns: [id, description, owner, done]
    check: \"new.owner = request.user_id()\"
    check_old: \"old.owner = request.user_id()\"
  logs:
    operations: [insert]
    columns: [id, message]
  lists:
    operations: [insert, update, delete]
    columns: [id, owner]
    check: \"new.owner = request.user_id()\"
    check_old: \"old.owner = request.user_id()\"
  items:
    operations: [insert, update, delete]
    columns: [id, list_id, label]
    check: \"new.list_id IN (SELECT id FROM lists WHERE owner = request.user_id())\"
    check_old: \"old.list_id IN (SELECT id FROM lists WHERE owner = request.user_id())\"
"
alice=$(write_token alice)

r=$(write_post "$alice" '{"client_id":"c1","batch":[
 {"op_id":1,"op":"PUT","type":"todos","id":"a1","data":{"description":"own insert","owner":"alice"}},
 {"op_id":2,"op":"PUT","type":"todos","id":"x1","data":{"description":"for bob","owner":"bob"}},
 {"op_id":3,"op":"PATCH","type":"todos","id":"alice-0","data":{"owner":"bob"}},
 {"op_id":4,"op":"PATCH","type":"todos","id":"bob-1","data":{"description":"hijacked"}},
 {"op_id":5,"op":"DELETE","type":"todos","id":"bob-1"},
 {"op_id":6,"op":"PUT","type":"todos","id":"a2","data":{"description":"x","owner":"alice","secret":"s"}},
 {"op_id":7,"op":"PUT","type":"audit","id":"au1","data":{"note":"n"}},
 {"op_id":8,"op":"DELETE","type":"logs","id":"l0"},
 {"op_id":9,"op":"PATCH","type":"logs","id":"l0","data":{"message":"changed"}},
 {"op_id":10,"op":"PATCH","type":"todos","id":"alice-0","data":{"done":true}},
 {"op_id":"11","op":"PUT","type":"logs","id":"l1","data":{"message":"hello"}},
 {"op_id":12,"op":"DELETE","type":"todos","id":"a1"},
 {"op_id":13,"op":"MERGE","type":"todos","id":"a3"}
]}')
expect_match "batch answers 200" '^200 \{"results":\[' "$r"
expect_match "own insert applied" '"op_id":1,"status":"applied"' "$r"
expect_match "insert of someone else's row: check_failed" '"op_id":2,"status":"rejected","code":"check_failed"' "$r"
expect_match "update that changes the owner: check_failed" '"op_id":3,"status":"rejected","code":"check_failed"' "$r"
expect_match "update of a row one does not own: check_old_failed" '"op_id":4,"status":"rejected","code":"check_old_failed"' "$r"
expect_match "delete of someone else's row: check_old_failed" '"op_id":5,"status":"rejected","code":"check_old_failed"' "$r"
expect_match "column not listed: column_not_allowed" '"op_id":6,"status":"rejected","code":"column_not_allowed","message":"column \\"secret\\" of table \\"todos\\" is not writable"' "$r"
expect_match "table without write rules: table_not_writable" '"op_id":7,"status":"rejected","code":"table_not_writable"' "$r"
expect_match "delete not allowed: operation_not_allowed" '"op_id":8,"status":"rejected","code":"operation_not_allowed"' "$r"
expect_match "update not allowed: operation_not_allowed" '"op_id":9,"status":"rejected","code":"operation_not_allowed"' "$r"
expect_match "own update applied" '"op_id":10,"status":"applied"' "$r"
expect_match "op_id as a decimal string" '"op_id":11,"status":"applied"' "$r"
expect_match "own delete applied" '"op_id":12,"status":"applied"' "$r"
expect_match "unknown op kind: invalid_op" '"op_id":13,"status":"rejected","code":"invalid_op"' "$r"

expect_eq "nothing of the rejected ops in todos" \
  "alice-0|mine|alice|t|none;bob-1|bob's|bob|f|none" \
  "$(sql "SELECT string_agg(concat_ws('|', id, description, owner, done, secret), ';' ORDER BY id) FROM todos")"
expect_eq "no audit row" "0" "$(sql "SELECT count(*) FROM audit")"
expect_eq "logs: l0 untouched, l1 inserted" "l0|first;l1|hello" \
  "$(sql "SELECT string_agg(id || '|' || message, ';' ORDER BY id) FROM logs")"
expect_eq "write log records the last op id" "alice|c1|13" \
  "$(sql "SELECT user_id || '|' || client_id || '|' || last_op_id FROM ferry_write_log")"

# bob may change his own row; a PATCH of a missing row is reported like one check_old refuses
# (todos has check_old: the answer must not tell whether someone else's id exists)
bob=$(write_token bob)
r=$(write_post "$bob" '{"client_id":"b","batch":[{"op_id":1,"op":"PATCH","type":"todos","id":"bob-1","data":{"done":1}},
 {"op_id":2,"op":"PATCH","type":"todos","id":"nope","data":{"done":true}}]}')
expect_match "bob updates his row" '^200 .*"op_id":1,"status":"applied"' "$r"
expect_match "PATCH of a missing row: check_old_failed, as for a hidden row" '"op_id":2,"status":"rejected","code":"check_old_failed"' "$r"
expect_eq "bob's row done" "t" "$(sql "SELECT done FROM todos WHERE id = 'bob-1'")"

# a bad value rejects only its op (savepoint retry), the others apply
r=$(write_post "$alice" '{"client_id":"c2","batch":[
 {"op_id":1,"op":"PUT","type":"todos","id":"v1","data":{"description":"ok 1","owner":"alice"}},
 {"op_id":2,"op":"PATCH","type":"todos","id":"v1","data":{"done":"maybe"}},
 {"op_id":3,"op":"PUT","type":"todos","id":"v2","data":{"owner":"alice"}},
 {"op_id":4,"op":"PUT","type":"todos","id":"v3","data":{"description":"ok 3","owner":"alice","done":true}}]}')
expect_match "bad boolean: invalid_value" '"op_id":2,"status":"rejected","code":"invalid_value"' "$r"
expect_match "missing NOT NULL column: integrity_violation" '"op_id":3,"status":"rejected","code":"integrity_violation"' "$r"
expect_match "ops around them applied" '"op_id":1,"status":"applied".*"op_id":4,"status":"applied"' "$r"
expect_eq "v1 and v3 stored, v2 not" "v1|false;v3|true" "$(sql "SELECT string_agg(id || '|' || done, ';' ORDER BY id) FROM todos WHERE id LIKE 'v%'")"

# a check that reads another table sees the earlier ops of the same batch (a list and its
# items in one batch: the pipelined path keeps op order), and still rejects other users' lists
r=$(write_post "$alice" '{"client_id":"c4","batch":[
 {"op_id":1,"op":"PUT","type":"lists","id":"L1","data":{"owner":"alice"}},
 {"op_id":2,"op":"PUT","type":"items","id":"I1","data":{"list_id":"L1","label":"first"}},
 {"op_id":3,"op":"PUT","type":"items","id":"I2","data":{"list_id":"L1","label":"second"}},
 {"op_id":4,"op":"PATCH","type":"items","id":"I1","data":{"label":"first!"}},
 {"op_id":5,"op":"DELETE","type":"items","id":"I2"}]}')
expect_eq "list and items in one batch all applied" \
  '200 {"results":[{"op_id":1,"status":"applied"},{"op_id":2,"status":"applied"},{"op_id":3,"status":"applied"},{"op_id":4,"status":"applied"},{"op_id":5,"status":"applied"}]}' "$r"
expect_eq "their rows" "I1|L1|first!" "$(sql "SELECT string_agg(concat_ws('|', id, list_id, label), ';') FROM items")"
r=$(write_post "$alice" '{"client_id":"c4","batch":[
 {"op_id":6,"op":"PUT","type":"items","id":"I3","data":{"list_id":"L1","label":"ok"}},
 {"op_id":7,"op":"PUT","type":"items","id":"I4","data":{"list_id":"bobs","label":"into bob'"'"'s list"}},
 {"op_id":8,"op":"PATCH","type":"items","id":"I1","data":{"list_id":"bobs"}}]}')
expect_match "item into someone else's list rejected, moving one there too" \
  '"op_id":6,"status":"applied"\},\{"op_id":7,"status":"rejected","code":"check_failed".*"op_id":8,"status":"rejected","code":"check_failed"' "$r"
expect_eq "only the allowed item added" "I1|L1;I3|L1" "$(sql "SELECT string_agg(id || '|' || list_id, ';' ORDER BY id) FROM items")"
expect_match "a normal batch takes the pipelined path, one with rejections the careful one" \
  'client="?c4"? status=200 ops=5 applied=5 .*path=pipelined.*client="?c4"? status=200 ops=3 applied=1 .*path=careful' "$(grep 'msg="batch"' "$FERRY_LOG" | tr '\n' ' ')"
expect_match "PATCH and DELETE of every table have their one-statement form (lock, checks, write)" \
  'msg="write rules prepared" tables=4 constraints=0 .*one_statement_writes=8' "$(cat "$FERRY_LOG")"

# forbidden writes alone in their batch (nothing else would send the batch the careful way):
# the pipelined path must notice them itself
n=20
for op in '"op":"PATCH","type":"todos","id":"bob-1","data":{"description":"alone"}' \
          '"op":"DELETE","type":"todos","id":"bob-1"' \
          '"op":"PATCH","type":"todos","id":"alice-0","data":{"owner":"bob"}' \
          '"op":"PUT","type":"todos","id":"bob-1","data":{"description":"put over"}' \
          '"op":"PUT","type":"todos","id":"new-for-bob","data":{"description":"x","owner":"bob"}' \
          '"op":"PATCH","type":"items","id":"I1","data":{"list_id":"bobs"}'; do
  n=$((n + 1))
  r=$(write_post "$alice" "{\"client_id\":\"c5\",\"batch\":[{\"op_id\":$n,$op}]}")
  expect_match "forbidden single op $n rejected" "\"op_id\":$n,\"status\":\"rejected\",\"code\":\"check(_old)?_failed\"" "$r"
done
expect_eq "bob's row and alice's owner unchanged" "alice-0|alice;bob-1|bob's|bob" \
  "$(sql "SELECT string_agg(concat_ws('|', id, CASE WHEN id = 'bob-1' THEN description END, owner), ';' ORDER BY id) FROM todos WHERE id IN ('alice-0', 'bob-1', 'new-for-bob')")"
expect_eq "I1 still in L1" "L1" "$(sql "SELECT list_id FROM items WHERE id = 'I1'")"
expect_match "every check also prepared in its self-reading form" 'msg="write rules prepared" tables=4 constraints=0 self_reading_checks=6' "$(cat "$FERRY_LOG")"

# malformed requests: 400 with a message, nothing applied
r=$(write_post "$alice" 'not json')
expect_match "400 for a body that is not JSON" '^400 \{"error":\{"code":"bad_request","description":"the body is not valid JSON' "$r"
r=$(write_post "$alice" '{"batch":[]}')
expect_match "400 without client_id" '^400 .*client_id' "$r"
r=$(write_post "$alice" '{"client_id":"c3","batch":{}}')
expect_match "400 when batch is not an array" '^400 .*batch' "$r"
r=$(write_post "$alice" '{"client_id":"c3","batch":[{"op_id":1,"op":"PUT","type":"todos","id":"m1","data":{"description":"d","owner":"alice"}},{"op":"PUT","type":"todos","id":"m2"}]}')
expect_match "400 for an op without op_id, naming it" '^400 .*batch\[1\]\.op_id' "$r"
expect_eq "nothing of the malformed batch applied" "0" "$(sql "SELECT count(*) FROM todos WHERE id = 'm1'")"

# 401 without or with a bad token
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST --data-binary '{"client_id":"c","batch":[]}' "$W_URL/api/write")
expect_eq "401 without a token" "401" "$code"
r=$(write_post "not.a.token" '{"client_id":"c","batch":[]}')
expect_match "401 with a bad token, error shape" '^401 \{"error":\{"code":' "$r"

# 413 above http.max_request_body (default 1 MiB)
big=$(head -c 1200000 /dev/zero | tr '\0' 'x')
r=$(write_post "$alice" "{\"client_id\":\"c\",\"batch\":[],\"pad\":\"$big\"}")
expect_match "413 for an oversized body" '^413 \{"error":' "$r"

log=$(grep 'mod=write msg="batch"' "$FERRY_LOG" | head -1)
expect_match "per-batch log line with counts" 'user="?alice"? client="?c1"? status=200 ops=13 applied=4 duplicate=0 rejected=9 stale=0 .*duration_ms=' "$log"
expect_eq "no row values in the info log" "" "$(grep -E 'own insert|hijacked' "$FERRY_LOG" | grep -v 'level=debug' | head -1)"
metrics=$(curl -s "$W_URL/metrics")
expect_match "metrics: ops by status" 'ferry_write_ops_total\{status="applied"\} [1-9]' "$metrics"
expect_match "metrics: latency histogram" 'ferry_write_batch_duration_seconds_count [1-9]' "$metrics"
expect_match "metrics: 400s counted" 'ferry_write_batches_total\{status="400"\} [1-9]' "$metrics"
write_finish

# a write rule that Postgres rejects keeps ferry from becoming ready, with its position
mkdir -p "$T_TMP/bad"
cat >"$T_TMP/bad/sync-rules.yaml" <<'YAML'
bucket_definitions:
  all:
    data:
      - SELECT id, message FROM logs
write_rules:
  logs:
    operations: [insert]
    columns: [id, message]
    check: "new.message = request.user_id() AND no_such_function(new.id)"
YAML
port2=$(free_port)
SLOT_PREFIX=bad50 replication_config "$T_TMP/bad/ferry.yaml" "$port2" "$W_DB"
start_ferry "$T_TMP/bad/ferry.yaml" || exit 1
ready=$(wait_match "http://127.0.0.1:$port2/probes/readiness" 'no_such_function' 60)
expect_match "readiness names the rejected rule with file:line:col" \
  '"write rules":\{"ready":false,"reason":"[^"]*sync-rules.yaml:9:13: \\"check\\" of table \\"logs\\" rejected by postgres: function no_such_function' "$ready"
expect_eq "readiness stays 503" "503" "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port2/probes/readiness")"
expect_match "the log says so" 'level=error mod=write msg="write rules not prepared"' "$(cat "$FERRY_LOG")"
write_finish
