# instances.sh -- several ferry instances on one Postgres storage, and HAProxy in front (source it
# after testlib.sh; bash only)
#
#   inst_setup DB_URI [N] [EXTRA_YAML]
#                        N (default 3) configs $T_TMP/i<k>/ferry.yaml: source DB_URI, storage kind
#                        postgres in DB_URI itself (schema ferry, lock_timeout 2), one slot prefix,
#                        the rules in $T_TMP/sync-rules.yaml (INST_OWN_RULES=1: a copy per
#                        instance, $T_TMP/i<k>/sync-rules.yaml); sets INST_N, INST_PORT[k]
#   inst_start K         start instance K (its log in INST_LOG[K], pid in INST_PID[K]; every log
#                        any instance wrote in INST_LOGS)
#   inst_kill K          kill -9 instance K and reap it
#   inst_leader          print the number of the instance that leads (from storage), or nothing
#   inst_epoch           print the storage's leader epoch
#   inst_base K          print http://127.0.0.1:<port of K>
#   haproxy_start        HAProxy on HAPROXY_PORT in front of every instance (round robin, health
#                        check on /probes/readiness, streaming timeouts, X-Ferry-Server: i<k>);
#                        deploy/haproxy.cfg is the same shape
#   st_sql SQL           SQL on the storage schema (rows as text)
INST_N=0
declare -a INST_PORT INST_PID INST_LOG INST_LOGS

inst_setup() {
  local db=$1 n=${2:-3} extra=${3:-} k
  INST_N=$n
  INST_DB=$db
  T_STORAGE_URI=$db
  for ((k = 1; k <= n; k++)); do
    INST_PORT[k]=$(free_port)
    mkdir -p "$T_TMP/i$k"
    local rules=$T_TMP/sync-rules.yaml
    if [ -n "${INST_OWN_RULES:-}" ]; then rules=$T_TMP/i$k/sync-rules.yaml; cp "$T_TMP/sync-rules.yaml" "$rules"; fi
    cat >"$T_TMP/i$k/ferry.yaml" <<YAML
log_level: info
http:
  listen: "127.0.0.1:${INST_PORT[k]}"
  threads: 2
postgres:
  uri: "$db"
replication:
  slot_prefix: ${SLOT_PREFIX:-inst}
storage:
  kind: postgres
  uri: "$db"
  lock_timeout: ${LOCK_TIMEOUT:-2}
sync_rules:
  path: $rules
auth:
  audience: [ferry]
  keys:
    - { kid: conf, alg: HS256, secret: "conformance-secret-conformance-secret-0123" }
$extra
YAML
  done
}

inst_start() {
  local k=$1
  start_ferry "$T_TMP/i$k/ferry.yaml" || return 1
  INST_PID[k]=$FERRY_PID
  INST_LOG[k]=$FERRY_LOG
  INST_LOGS+=("$FERRY_LOG")
}

inst_kill() {
  local k=$1
  kill -KILL "${INST_PID[k]}" 2>/dev/null || true
  wait "${INST_PID[k]}" 2>/dev/null || true
}

st_sql() { psql -tAqX "$T_STORAGE_URI" -c "SET search_path = ferry" -c "$1"; }

inst_epoch() { st_sql "SELECT v FROM state WHERE k = 'epoch'"; }

inst_leader() {
  local who pid k
  who=$(st_sql "SELECT v FROM state WHERE k = 'leader'")
  pid=${who#*:}
  pid=${pid%%:*}
  for ((k = 1; k <= INST_N; k++)); do
    [ "${INST_PID[k]}" = "$pid" ] && { echo "$k"; return; }
  done
}

inst_base() { echo "http://127.0.0.1:${INST_PORT[$1]}"; }

haproxy_start() {
  HAPROXY_PORT=$(free_port)
  local k servers=""
  for ((k = 1; k <= INST_N; k++)); do
    servers+="  server i$k 127.0.0.1:${INST_PORT[k]} check"$'\n'
  done
  cat >"$T_TMP/haproxy.cfg" <<CFG
global
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  timeout http-keep-alive 10s
  retries 3
  option redispatch
  option http-no-delay
frontend sync
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend ferry
backend ferry
  balance roundrobin
  option httpchk GET /probes/readiness
  http-check expect status 200
  default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
  http-response set-header X-Ferry-Server %s
$servers
CFG
  haproxy -f "$T_TMP/haproxy.cfg" -db >"$T_TMP/haproxy.log" 2>&1 &
  HAPROXY_PID=$!
  T_PIDS+=("$HAPROXY_PID")
  wait_http "http://127.0.0.1:$HAPROXY_PORT/probes/liveness" 10
}
