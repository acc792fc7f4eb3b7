#!/usr/bin/env bash
# 59_write_violations_lifecycle.sh -- violations that resolve and expire
#
# A double booking is flagged in ferry_violations and reaches the user's bucket. When a later
# write through write-back touches the violation's row (ben moves his booking) or one of its
# conflicting ids (ann moves hers), its constraint is checked again; it passes, so the violation
# gets resolved_at and, with sync rules that select open violations only, leaves the user's
# bucket (REMOVE). The background pass (write_back.recheck_interval) re-checks what write-back
# cannot see (a plain-SQL delete) and expires violations older than expire_after.
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"

W_EXTRA_CONFIG="write_back:
  recheck_interval: 1" write_setup write59 "
CREATE TABLE bookings (id text PRIMARY KEY, room_id text NOT NULL, starts_at timestamptz NOT NULL,
                       ends_at timestamptz NOT NULL, booked_by text NOT NULL);
CREATE TABLE holds (id text PRIMARY KEY, owner text NOT NULL);
CREATE PUBLICATION ferry FOR ALL TABLES;
" "
bucket_definitions:
  my_violations:
    parameters: SELECT request.user_id() AS user_id
    data:
      - SELECT id, row_id, conflicting_ids, message FROM ferry_violations
          WHERE user_id = bucket.user_id AND resolved_at IS NULL AND expired_at IS NULL
write_rules:
  bookings:
    operations: [insert, update, delete]
    columns: [id, room_id, starts_at, ends_at, booked_by]
    check: \"new.booked_by = request.user_id()\"
  holds:
    operations: [insert]
    columns: [id, owner]
    check: \"new.owner = request.user_id()\"
constraints:
  no_double_booking:
    table: bookings
    query: \"SELECT b.id FROM bookings b WHERE b.room_id = new.room_id AND b.id <> new.id
            AND b.starts_at < new.ends_at AND b.ends_at > new.starts_at\"
    message: \"overlaps another booking in the same room\"
    expire_after: 3600
  within_quota:
    table: holds
    query: \"SELECT h.id FROM holds h WHERE h.owner = new.owner AND h.id <> new.id
            AND (SELECT count(*) FROM holds x WHERE x.owner = new.owner) > (request.jwt() ->> 'quota')::int\"
    message: \"more holds than the token's quota\"
"
ann=$(write_token ann)
ben=$(write_token ben)
book() { # TOKEN CLIENT OPID ID ROOM START END USER
  write_post "$1" "{\"client_id\":\"$2\",\"batch\":[{\"op_id\":$3,\"op\":\"PUT\",\"type\":\"bookings\",\"id\":\"$4\",\"data\":{\"room_id\":\"$5\",\"starts_at\":\"2026-03-01T$6:00Z\",\"ends_at\":\"2026-03-01T$7:00Z\",\"booked_by\":\"$8\"}}]}"
}
state() { sql "SELECT CASE WHEN resolved_at IS NOT NULL THEN 'resolved' WHEN expired_at IS NOT NULL THEN 'expired' ELSE 'open' END FROM ferry_violations WHERE row_id = '$1'"; }
in_bucket() { "$FERRY_BIN" debug dump --config "$W_CFG" 2>/dev/null | grep '"type":"ferry_violations"' | grep -c "\"row_id\":\"$1\"" || true; }
wait_bucket() { # ROW WANT
  local i
  for ((i = 0; i < 300; i++)); do [ "$(in_bucket "$1")" = "$2" ] && return 0; sleep 0.1; done
  return 1
}

# 1. ben double-books room r1 and moves his booking: resolved by his own write
book "$ann" a 1 b1 r1 10:00 11:00 ann >/dev/null
r=$(book "$ben" b 1 b2 r1 10:30 12:00 ben)
expect_match "the double booking applies" '"op_id":1,"status":"applied"' "$r"
expect_eq "a violation is open for ben's booking" "open" "$(state b2)"
wait_bucket b2 1 && pass "the violation reaches ben's bucket" || fail "the violation reaches ben's bucket" "$(in_bucket b2)"
r=$(write_post "$ben" '{"client_id":"b","batch":[{"op_id":2,"op":"PATCH","type":"bookings","id":"b2","data":{"room_id":"r2"}}]}')
expect_match "ben moves his booking" '"op_id":2,"status":"applied"' "$r"
expect_eq "the move resolves it" "resolved" "$(state b2)"
wait_bucket b2 0 && pass "the resolved violation leaves ben's bucket" || fail "the resolved violation leaves ben's bucket" "$(in_bucket b2)"
stream=$(stream_once "$W_URL" "$ben" '{"client_id":"c"}')
vid=$(sql "SELECT id FROM ferry_violations WHERE row_id = 'b2'")
expect_match "ben's stream removes it from his replica" "\"op\":\"REMOVE\",\"checksum\":[0-9]+,\"object_type\":\"ferry_violations\",\"object_id\":\"$vid\"" "$stream"

# 2. resolved by a write to a conflicting id: ann moves the booking ben's overlaps
book "$ann" a 2 b3 r3 10:00 11:00 ann >/dev/null
book "$ben" b 3 b4 r3 10:30 12:00 ben >/dev/null
expect_eq "ben's second double booking is open" "open" "$(state b4)"
r=$(write_post "$ann" '{"client_id":"a","batch":[{"op_id":3,"op":"PATCH","type":"bookings","id":"b3","data":{"starts_at":"2026-03-01T08:00:00Z","ends_at":"2026-03-01T09:00:00Z"}}]}')
expect_match "ann moves the other booking" '"op_id":3,"status":"applied"' "$r"
expect_eq "a write to a conflicting id resolves it" "resolved" "$(state b4)"
# a write that does not fix it leaves it open
book "$ann" a 4 b5 r5 10:00 11:00 ann >/dev/null
book "$ben" b 4 b6 r5 10:30 12:00 ben >/dev/null
r=$(write_post "$ben" '{"client_id":"b","batch":[{"op_id":5,"op":"PATCH","type":"bookings","id":"b6","data":{"ends_at":"2026-03-01T13:00:00Z"}}]}')
expect_eq "a write that keeps the overlap leaves it open (one violation, not two)" "open" "$(state b6)"

# 3. the background pass: a plain-SQL delete resolves it
sql "DELETE FROM bookings WHERE id = 'b5'" >/dev/null
for ((i = 0; i < 300; i++)); do [ "$(state b6)" = resolved ] && break; sleep 0.1; done
expect_eq "the re-check after a plain-SQL delete resolves it" "resolved" "$(state b6)"

# 4. expire_after: an open violation older than it expires and leaves the bucket
book "$ann" a 5 b7 r7 10:00 11:00 ann >/dev/null
book "$ben" b 6 b8 r7 10:30 12:00 ben >/dev/null
wait_bucket b8 1 && pass "the third violation reaches ben's bucket" || fail "the third violation reaches ben's bucket" "$(in_bucket b8)"
sql "UPDATE ferry_violations SET created_at = now() - interval '2 hours' WHERE row_id = 'b8'" >/dev/null
for ((i = 0; i < 300; i++)); do [ "$(state b8)" = expired ] && break; sleep 0.1; done
expect_eq "it expires" "expired" "$(state b8)"
wait_bucket b8 0 && pass "the expired violation leaves ben's bucket" || fail "the expired violation leaves ben's bucket" "$(in_bucket b8)"
for ((i = 0; i < 100; i++)); do
  metrics=$(curl -s "$W_URL/metrics")
  [[ "$metrics" == *'ferry_write_violations_open 0'* ]] && break
  sleep 0.1
done
expect_match "metrics: resolved" 'ferry_write_violations_resolved_total 3' "$metrics"
expect_match "metrics: expired" 'ferry_write_violations_expired_total 1' "$metrics"
expect_match "metrics: none open" 'ferry_write_violations_open 0' "$metrics"
# 5. a constraint that reads the token: a re-check sees the claims of the write that raised it
# (before, request.jwt() was {} there, so the quota read as NULL and the background pass took
# the violation for resolved at once)
cara=$("$FERRY_BIN" token --config "$W_CFG" --sub cara --claim quota=1)
write_post "$cara" '{"client_id":"c","batch":[{"op_id":1,"op":"PUT","type":"holds","id":"h1","data":{"owner":"cara"}},{"op_id":2,"op":"PUT","type":"holds","id":"h2","data":{"owner":"cara"}}]}' >/dev/null
expect_eq "the second hold is over cara's quota of 1" "open" "$(state h2)"
expect_eq "the violation keeps the claims a re-check needs" "1" "$(sql "SELECT request->'jwt'->>'quota' FROM ferry_violations WHERE row_id = 'h2'")"
expect_eq "and only for a constraint that reads them" "" "$(sql "SELECT string_agg(row_id, ',') FROM ferry_violations WHERE request IS NOT NULL AND row_id <> 'h2'")"
# a sentinel the next background pass resolves: that pass re-checks h2 too (older, checked first)
book "$ann" a 7 b9 r9 10:00 11:00 ann >/dev/null
book "$ben" b 7 b10 r9 10:30 12:00 ben >/dev/null
sql "DELETE FROM bookings WHERE id = 'b9'" >/dev/null
for ((i = 0; i < 300; i++)); do [ "$(state b10)" = resolved ] && break; sleep 0.1; done
expect_eq "a background pass ran (the sentinel is resolved)" "resolved" "$(state b10)"
expect_eq "and its re-check with cara's claims left h2 open" "open" "$(state h2)"
sql "DELETE FROM holds WHERE id = 'h1'" >/dev/null
for ((i = 0; i < 300; i++)); do [ "$(state h2)" = resolved ] && break; sleep 0.1; done
expect_eq "back within the quota (a plain-SQL delete), the re-check resolves it" "resolved" "$(state h2)"
expect_match "the publication carries the history: warned" 'level=warn mod=write msg="the publication includes ferry_write_history' "$(cat "$FERRY_LOG")"
write_finish
