# chaos_lib.sh -- what the reliability scenarios share (source it after tests/lib/testlib.sh)
#
# Every scenario (tests/chaos/NAME.sh) runs in two sizes: CHAOS_MODE=short (the default; the
# version `make check` runs through tests/integration/) and CHAOS_MODE=long (`make chaos`).
# It records pass/fail lines like any integration test, and its figures (times, counts) as
# "scenario|name|value|unit" lines in $CHAOS_FIGURES for tests/chaos/run.sh's table. Figures are
# reported, never asserted: a test must not depend on the machine's speed.
#
# The correctness oracle every scenario asserts at its end (oracle_ok and clients_ok):
#   1. storage equals the rules run over Postgres's rows now (`ferry debug dump` = `ferry debug
#      oracle`), 2. every bucket's checksum and count equal the sum and number of its ops,
#   3. op ids strictly increase within each bucket and none is used twice,
#   4. every connected client (raw protocol: raw_client.py; libferry: chaos-replica) ends
#      holding exactly the oracle's rows of its user's buckets, with no checksum failure.
#
#   figure NAME VALUE UNIT          record a figure
#   long                            true in CHAOS_MODE=long
#   fcurl ARGS...                   curl where ferry runs
#   now_ms                          wall clock in milliseconds
#   ops_ok CONFIG                   (3) above; 0 when it holds, else the problem on stdout
#   oracle_ok CONFIG LABEL [SECS]   (1)-(3), recorded as three results
#   mint USER [CLAIM...]            a token for USER (claims key=value, and the lines of
#                                   CLAIMS_OF[USER] when set) signed with $CHAOS_CFG's key
#   raw_start NAME USER [PARAMS]    start a raw client (its PID in RAW_PIDS[NAME])
#   sdk_start NAME USER SPEC [PARAMS]   start a libferry replica (PID in SDK_PIDS[NAME]; its file
#                                   is $SDK_DIR/sdk-NAME.db, SDK_DIR defaulting to $T_TMP)
#   clients_ok LABEL [SECS]         (4) for every client started, recorded per client
#
# Clients talk to ferry at 127.0.0.1:$CHAOS_PORT (in $FERRY_NETNS when set); CHAOS_CFG is the
# ferry.yaml, CHAOS_RULES the rules file, CHAOS_DB the database URI as ferry sees it.

CHAOS_DIR=$T_ROOT/tests/chaos
CHAOS_MODE=${CHAOS_MODE:-short}
CHAOS_FIGURES=${CHAOS_FIGURES:-/dev/null}
CHAOS_REPLICA=${CHAOS_REPLICA:-$(dirname "$FERRY_BIN")/chaos-replica}
declare -A CLAIMS_OF=() RAW_PIDS=() RAW_USERS=() RAW_PARAMS=() SDK_PIDS=() SDK_USERS=() SDK_SPECS=() SDK_PARAMS=() SDK_DBS=()

long() { [ "$CHAOS_MODE" = long ]; }

figure() {
  echo "$T_NAME|$1|$2|$3" >>"$CHAOS_FIGURES"
  echo "  figure $1 = $2 $3"
}

fcurl() { t_in_ns curl "$@"; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }

ops_ok() {
  t_in_ns "$FERRY_BIN" debug dump --config "$1" --ops >"$T_TMP/ops.jsonl" 2>"$T_TMP/ops.err" || {
    echo "debug dump --ops failed: $(head -c 300 "$T_TMP/ops.err")"; return 1; }
  local dups order
  dups=$(jq -r '.op.op_id' "$T_TMP/ops.jsonl" | sort | uniq -d | head -3 | tr '\n' ' ')
  order=$(jq -r '"\(.bucket) \(.op.op_id)"' "$T_TMP/ops.jsonl" |
    awk '$1 == b && $2 + 0 <= prev { bad++; if (bad == 1) first = $0 } { b = $1; prev = $2 + 0 } END { if (bad) print bad " ops out of order, first: " first }')
  [ -z "$dups" ] && [ -z "$order" ] && return 0
  echo "duplicated op ids: [${dups}] ${order}"
  return 1
}

oracle_ok() {
  local cfg=$1 label=$2 secs=${3:-60} why
  if converged "$cfg" "$secs"; then pass "$label: storage equals the oracle"; else
    fail "$label: storage equals the oracle" "$(head -4 "$T_TMP/converge.diff" | cut -c1-200)"; fi
  checksums_ok "$cfg" && pass "$label: every bucket checksum equals the sum of its ops" ||
    fail "$label: every bucket checksum equals the sum of its ops" mismatch
  why=$(ops_ok "$cfg") && pass "$label: op ids increase within each bucket, none twice" ||
    fail "$label: op ids increase within each bucket, none twice" "$why"
}

mint() {
  local user=$1 args=() c; shift
  local -a extra=()
  [ -n "${CLAIMS_OF[$user]:-}" ] && mapfile -t extra <<<"${CLAIMS_OF[$user]}"
  for c in "${extra[@]}" "$@"; do [ -n "$c" ] && args+=(--claim "$c"); done
  "$FERRY_BIN" token --config "$CHAOS_CFG" --sub "$user" --ttl 86400 "${args[@]}"
}

raw_start() {
  local name=$1 user=$2 params=${3:-'{}'}
  local tok; tok=$(mint "$user")
  t_bg python3 "$CHAOS_DIR/raw_client.py" --url "http://127.0.0.1:$CHAOS_PORT" --token "$tok" \
    --out "$T_TMP/raw-$name.json" --params "$params" --client-id "raw-$name" \
    >"$T_TMP/raw-$name.log" 2>&1 &
  RAW_PIDS[$name]=$!
  RAW_USERS[$name]=$user
  RAW_PARAMS[$name]=$params
  T_PIDS+=("$!")
}

sdk_start() {
  local name=$1 user=$2 spec=$3 params=${4:-'{}'}
  local tok; tok=$(mint "$user")
  SDK_DBS[$name]=${SDK_DIR:-$T_TMP}/sdk-$name.db
  t_bg "$CHAOS_REPLICA" --db "${SDK_DBS[$name]}" --endpoint "http://127.0.0.1:$CHAOS_PORT" \
    --token "$tok" --schema "$spec" --params "$params" --status "$T_TMP/sdk-$name.status" \
    >"$T_TMP/sdk-$name.log" 2>&1 &
  SDK_PIDS[$name]=$!
  SDK_USERS[$name]=$user
  SDK_SPECS[$name]=$spec
  SDK_PARAMS[$name]=$params
  T_PIDS+=("$!")
}

# user_buckets USER PARAMS OUT: the buckets the rules give USER now (rules explain with lookups
# read from Postgres), one a line, for the rule version storage serves
user_buckets() {
  local version tok
  version=$(storage_query "SELECT v FROM state WHERE k = 'serving'" 2>/dev/null)
  tok=$(mint "$1")
  t_in_ns "$FERRY_BIN" rules explain "$CHAOS_RULES" --token "$tok" --params "$2" --db "$CHAOS_DB" \
    --rule-version "${version:-1}" 2>"$T_TMP/explain.err" |
    awk '/^buckets:/ { on = 1; next } /^unresolved/ { on = 0 } on && /^  [^ ]/ { print $1 }' | sort >"$3"
}

# clients_ok LABEL [SECS]: every client started ends equal to the oracle (polled until SECS),
# with no checksum failure and no protocol error
clients_ok() {
  local label=$1 secs=${2:-60} name deadline last
  t_in_ns "$FERRY_BIN" debug oracle --config "$CHAOS_CFG" >"$T_TMP/client-oracle.txt" 2>/dev/null
  for name in "${!RAW_PIDS[@]}"; do
    user_buckets "${RAW_USERS[$name]}" "${RAW_PARAMS[$name]}" "$T_TMP/buckets-raw-$name"
    deadline=$(($(date +%s) + secs))
    until last=$(python3 "$CHAOS_DIR/compare.py" raw "$T_TMP/client-oracle.txt" "$T_TMP/buckets-raw-$name" "$T_TMP/raw-$name.json" 2>&1); do
      [ "$(date +%s)" -ge "$deadline" ] && break
      sleep 0.5
    done
    [ -z "$last" ] && pass "$label: raw client $name equals the oracle" || fail "$label: raw client $name equals the oracle" "$(echo "$last" | head -3)"
    expect_eq "$label: raw client $name had no checksum failure and no protocol error" "0 0" \
      "$(jq -r '"\(.checksum_failures) \(.protocol_errors)"' "$T_TMP/raw-$name.json")"
  done
  for name in "${!SDK_PIDS[@]}"; do
    user_buckets "${SDK_USERS[$name]}" "${SDK_PARAMS[$name]}" "$T_TMP/buckets-sdk-$name"
    deadline=$(($(date +%s) + secs))
    until last=$(python3 "$CHAOS_DIR/compare.py" sdk "$T_TMP/client-oracle.txt" "$T_TMP/buckets-sdk-$name" "${SDK_DBS[$name]}" "${SDK_SPECS[$name]}" 2>&1); do
      [ "$(date +%s)" -ge "$deadline" ] && break
      sleep 0.5
    done
    [ -z "$last" ] && pass "$label: libferry replica $name equals the oracle" || fail "$label: libferry replica $name equals the oracle" "$(echo "$last" | head -3)"
    expect_eq "$label: libferry replica $name had no checksum failure" 0 \
      "$(jq -r .checksum_failures "$T_TMP/sdk-$name.status" 2>/dev/null)"
  done
}
