#!/usr/bin/env bash
# 54_write_constraints.sh -- constraints flag, they do not reject
#
# A double booking: both bookings are stored, the second write records a row in
# ferry_violations naming the constraint, the table, the row, the user, the conflicting booking
# and the message. ferry_violations is an ordinary table: sync rules that select it per user put
# the violation in that user's bucket (checked in bucket storage with `ferry debug dump`; the
# stream end of it belongs to the stream tests). Ferry's tables come from
# deploy/postgres/setup.sql here, which must also agree with what ferry creates itself.
source "$(dirname "$0")/../lib/testlib.sh"
source "$(dirname "$0")/write_lib.sh"

write_setup write54 "
$(cat "$T_ROOT/deploy/postgres/setup.sql")
CREATE TABLE bookings (id text PRIMARY KEY, room_id text NOT NULL, starts_at timestamptz NOT NULL,
                       ends_at timestamptz NOT NULL, booked_by text NOT NULL);
" "
bucket_definitions:
  my_violations:
    parameters: SELECT request.user_id() AS user_id
    data:
      - SELECT id, constraint_name, table_name, row_id, conflicting_ids, message FROM ferry_violations WHERE user_id = bucket.user_id
  rooms:
    data:
      - SELECT id, room_id, starts_at, ends_at FROM bookings
write_rules:
  bookings:
    operations: [insert, update, delete]
    columns: [id, room_id, starts_at, ends_at, booked_by]
    check: \"new.booked_by = request.user_id()\"
constraints:
  no_double_booking:
    table: bookings
    query: \"SELECT b.id FROM bookings b WHERE b.room_id = new.room_id AND b.id <> new.id
            AND b.starts_at < new.ends_at AND b.ends_at > new.starts_at\"
    message: \"overlaps another booking in the same room\"
"
ann=$(write_token ann)
ben=$(write_token ben)
r=$(write_post "$ann" '{"client_id":"a","batch":[{"op_id":1,"op":"PUT","type":"bookings","id":"b1","data":{"room_id":"r1","starts_at":"2026-03-01T10:00:00Z","ends_at":"2026-03-01T11:00:00Z","booked_by":"ann"}}]}')
expect_match "first booking applied" '"op_id":1,"status":"applied"' "$r"
r=$(write_post "$ben" '{"client_id":"b","batch":[{"op_id":1,"op":"PUT","type":"bookings","id":"b2","data":{"room_id":"r1","starts_at":"2026-03-01T10:30:00Z","ends_at":"2026-03-01T12:00:00Z","booked_by":"ben"}},
  {"op_id":2,"op":"PUT","type":"bookings","id":"b3","data":{"room_id":"r2","starts_at":"2026-03-01T10:30:00Z","ends_at":"2026-03-01T12:00:00Z","booked_by":"ben"}}]}')
expect_match "overlapping booking applied (flagged, not rejected)" '"op_id":1,"status":"applied"' "$r"
expect_eq "all bookings stored" "b1;b2;b3" "$(sql "SELECT string_agg(id, ';' ORDER BY id) FROM bookings")"
expect_eq "one violation row, for ben's booking" \
  'no_double_booking|bookings|b2|ben|["b1"]|overlaps another booking in the same room' \
  "$(sql "SELECT concat_ws('|', constraint_name, table_name, row_id, user_id, conflicting_ids, message) FROM ferry_violations")"
expect_match "violation id and time filled" '^[0-9a-f-]{36}\|true$' "$(sql "SELECT id || '|' || (created_at <= now()) FROM ferry_violations")"

# moving a booking into a conflict is flagged too; moving out is not
r=$(write_post "$ann" '{"client_id":"a","batch":[{"op_id":2,"op":"PATCH","type":"bookings","id":"b1","data":{"room_id":"r2"}}]}')
expect_match "update into a conflict applied" '"op_id":2,"status":"applied"' "$r"
expect_eq "second violation recorded for ann, naming b3" "ann|b1|[\"b3\"]" \
  "$(sql "SELECT concat_ws('|', user_id, row_id, conflicting_ids) FROM ferry_violations WHERE user_id = 'ann'")"
expect_eq "b1 moved" "r2" "$(sql "SELECT room_id FROM bookings WHERE id = 'b1'")"
r=$(write_post "$ann" '{"client_id":"a","batch":[{"op_id":3,"op":"PUT","type":"bookings","id":"b4","data":{"room_id":"r3","starts_at":"2026-03-01T10:00:00Z","ends_at":"2026-03-01T11:00:00Z","booked_by":"ann"}}]}')
expect_eq "no violation without a conflict" "2" "$(sql "SELECT count(*) FROM ferry_violations")"
expect_match "metrics count violations" 'ferry_write_violations_total 2' "$(curl -s "$W_URL/metrics")"

# the violation reaches the booking user's bucket in storage (the sync stream sends that bucket)
found=''
for ((i = 0; i < 600; i++)); do
  dump=$("$FERRY_BIN" debug dump --config "$W_CFG" 2>/dev/null | grep '"type":"ferry_violations"' || true)
  if [[ "$dump" == *'"row_id":"b2"'* && "$dump" == *'"row_id":"b1"'* ]]; then found=1; break; fi
  sleep 0.1
done
ben_line=$(grep '"row_id":"b2"' <<<"$dump" || true)
expect_match "ben's violation is in ben's bucket" '"bucket":"[^"]*my_violations\[\\?"?ben\\?"?\]".*"constraint_name":"no_double_booking".*"conflicting_ids":' "$ben_line"
ann_line=$(grep '"row_id":"b1"' <<<"$dump" || true)
expect_match "ann's violation is in ann's bucket" '"bucket":"[^"]*my_violations\[\\?"?ann\\?"?\]"' "$ann_line"
converged "$W_CFG" 60 && pass "storage equals the rules over Postgres" || fail "storage equals the rules over Postgres" "$(head -5 "$T_TMP/converge.diff")"
# and the sync stream delivers it to ben, and only ben's to ben
stream=$(stream_once "$W_URL" "$ben" '{"client_id":"c"}')
expect_match "ben's sync stream delivers his violation" '"object_type":"ferry_violations".*no_double_booking.*\\"row_id\\":\\"b2\\"' "$stream"
[[ "$stream" == *'\"row_id\":\"b1\"'* ]] && fail "ben does not receive ann's violation" "b1 in ben's stream" || pass "ben does not receive ann's violation"
write_finish
