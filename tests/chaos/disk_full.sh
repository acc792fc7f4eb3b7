#!/usr/bin/env bash
# disk_full.sh -- the disk under ferry's storage fills up, and so does a libferry replica's
#
# Ferry's storage lives on a small tmpfs of its own (mounted under the test's folder, unmounted
# at exit), which a filler file then fills while a writer keeps committing rows large enough to
# need new pages. Ferry must say clearly what happened (the log and readiness name the storage
# and "disk is full"), turn readiness 503, keep the storage intact (SQLite's integrity check
# passes, nothing served is lost), and resume on its own once space is freed: storage then
# catches up and equals the oracle. The same for a libferry replica on a full disk of its own:
# libferry reports the error to the app (its status' last_error), and once space is freed the
# replica still opens and syncs to the oracle.
source "$(dirname "$0")/../lib/testlib.sh"
source "$T_ROOT/tests/chaos/chaos_lib.sh"

[ "$(id -u)" -eq 0 ] || { fail "mounting a tmpfs needs root" "not root"; exit 1; }
pgenv=$("$T_ROOT/tests/lib/pg.sh" start disk) || { fail "own postgres starts" "pg.sh failed"; exit 1; }
own_pgtmp=$(echo "$pgenv" | sed -n 's/^PGTMP=//p')
own_uri=$(echo "$pgenv" | sed -n 's/^FERRY_PG_URI=//p')
small=$T_TMP/small
sdkdisk=$T_TMP/sdkdisk
mkdir -p "$small" "$sdkdisk"
cleanup_mounts() { umount "$small" 2>/dev/null; umount "$sdkdisk" 2>/dev/null; }
trap 't_cleanup_procs; cleanup_mounts; "$T_ROOT/tests/lib/pg.sh" stop "$own_pgtmp"; t_cleanup' EXIT
t_cleanup_procs() { local p; for p in "${T_PIDS[@]}"; do t_mine "$p" && kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
mount -t tmpfs -o size=24m tmpfs "$small" || { fail "a 24 MB tmpfs mounts" "mount failed"; exit 1; }
mount -t tmpfs -o size=24m tmpfs "$sdkdisk" || { fail "a 24 MB tmpfs mounts" "mount failed"; exit 1; }

psql -q "$own_uri" -c "CREATE DATABASE app" || exit 1
CHAOS_DB=${own_uri%/*}/app
psql -q -v ON_ERROR_STOP=1 "$CHAOS_DB" <<'SQL' || exit 1
CREATE TABLE items (id int PRIMARY KEY, owner text, body text);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO items SELECT i, 'u' || (i % 2), 'seed ' || i FROM generate_series(1, 2000) i;
SQL
CHAOS_PORT=$(free_port)
CHAOS_CFG=$T_TMP/ferry.yaml
CHAOS_RULES=$T_TMP/sync-rules.yaml
cat >"$CHAOS_RULES" <<'YAML'
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner, body FROM items WHERE owner = bucket.owner
YAML
SLOT_PREFIX=disk replication_config "$CHAOS_CFG" "$CHAOS_PORT" "$CHAOS_DB"
sed -i "s|^  path: storage.db|  path: $small/storage.db|" "$CHAOS_CFG"
base=http://127.0.0.1:$CHAOS_PORT
start_ferry "$CHAOS_CFG" || exit 1
wait_ready "$CHAOS_PORT" 60 || { fail "ready" "$(curl -s "$base/probes/readiness")"; exit 1; }
raw_start r0 u0
SDK_DIR=$sdkdisk sdk_start s1 u1 "items:owner,body"
for ((i = 0; i < 600; i++)); do [ "$(jq -r .applied_checkpoint "$T_TMP/sdk-s1.status" 2>/dev/null)" -gt 0 ] 2>/dev/null && break; sleep 0.1; done

fill() { # fill DIR: a filler file takes all but about 64 KB of DIR's filesystem
  local free_kb
  free_kb=$(df -k --output=avail "$1" | tail -1)
  fallocate -l $(((free_kb - 64) * 1024)) "$1/filler" 2>/dev/null ||
    dd if=/dev/zero of="$1/filler" bs=1k count=$((free_kb - 64)) 2>/dev/null
}
writer() { # rows of 8 KB until told to stop
  local i=100000
  while [ ! -e "$T_TMP/stop-$1" ]; do
    i=$((i + 1))
    psql -q "$CHAOS_DB" -c "INSERT INTO items SELECT $i, 'u$((i % 2))', repeat(md5('$i'), 256)" >/dev/null 2>&1
    sleep 0.02
  done
}

# ---- ferry's disk fills ----
fill "$small"
t0=$(now_ms)
writer ferry &
T_PIDS+=("$!")
wp=$!
body=$(wait_match "$base/probes/readiness" '"ready":false' 60) &&
  pass "readiness turns 503 when the storage disk is full" || fail "readiness turns 503 when the storage disk is full" "$body"
figure full_disk_to_503_ms $(($(now_ms) - t0)) ms
expect_match "readiness names the storage and the full disk" 'storage.*(disk is full|No space left)' "$body"
expect_match "the log says it clearly" 'level=error.*storage.*(disk is full|No space left)' "$(cat "$FERRY_LOG")"
kill -0 "$FERRY_PID" 2>/dev/null && pass "ferry stays up" || fail "ferry stays up" "$(tail -3 "$FERRY_LOG")"
sleep 2
touch "$T_TMP/stop-ferry"
wait "$wp"
t0=$(now_ms)
rm -f "$small/filler"
wait_ready "$CHAOS_PORT" 60 && pass "ready again once space is freed (no restart)" ||
  fail "ready again once space is freed (no restart)" "$(curl -s "$base/probes/readiness")"
figure space_freed_to_ready_ms $(($(now_ms) - t0)) ms
expect_eq "the storage file is intact (integrity check)" ok \
  "$(sqlite3 "file:$small/storage.db?mode=ro" 'PRAGMA integrity_check' 2>&1 | head -3)"
oracle_ok "$CHAOS_CFG" "after the storage disk was full" 60
clients_ok "after the storage disk was full" 60

# ---- the replica's disk fills ----
fill "$sdkdisk"
writer sdk &
T_PIDS+=("$!")
wp=$!
status=""
for ((i = 0; i < 600; i++)); do
  status=$(jq -r .last_error "$T_TMP/sdk-s1.status" 2>/dev/null)
  [[ "$status" =~ (full|space) ]] && break
  sleep 0.1
done
expect_match "libferry tells the app its disk is full" '(disk is full|No space left|full)' "$status"
touch "$T_TMP/stop-sdk"
wait "$wp"
kill -TERM "${SDK_PIDS[s1]}"; wait "${SDK_PIDS[s1]}" 2>/dev/null
rm -f "$sdkdisk/filler"
SDK_DIR=$sdkdisk sdk_start s1 u1 "items:owner,body" # the same file, opened again
sleep 1
expect_match "the replica opens again after the disk was full" '"last_error":""|"state":2' "$(cat "$T_TMP/sdk-s1.status")"
converged "$CHAOS_CFG" 60 || fail "storage converged before the replica check" "$(head -3 "$T_TMP/converge.diff")"
clients_ok "after the replica's disk was full" 90
expect_eq "the replica file is intact (integrity check)" ok \
  "$(sqlite3 "file:$sdkdisk/sdk-s1.db?mode=ro" 'PRAGMA integrity_check' 2>&1 | head -3)"
figure disks_filled 2 count
stop_pid "$FERRY_PID" 10
expect_eq "ferry stops cleanly" 0 "$STOP_RC"
