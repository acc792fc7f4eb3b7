# netns.sh -- a network between ferry and Postgres that tests can break (source it; bash; root)
#
# Two network namespaces joined by a veth pair: the Postgres side ($NS_PG, address
# $NS_PG_ADDR) and ferry's side ($NS_FY, address $NS_FY_ADDR). Names carry the test's PID, so
# tests running at once never share one; the addresses exist only inside these namespaces, so
# traffic never leaves them. Faults are nftables rules inside ferry's namespace, on the packets
# between the two addresses (nothing else is touched: HTTP to ferry and the test's own traffic
# inside a namespace go over its loopback). This kernel has no netem: latency comes from
# tests/lib/delay_relay.py, a TCP relay run in ferry's namespace.
#
#   netns_create            make both namespaces and the veth pair (loopbacks up)
#   netns_destroy           delete them (their veth goes with them); call it from the EXIT trap,
#                           after the processes inside were stopped
#   netns_pg CMD...         run CMD in the Postgres side; netns_fy CMD... in ferry's side
#   netns_fault drop        drop every packet between the two (a silent, half-open network)
#   netns_fault loss PCT    drop PCT % of those packets, at random, both ways
#   netns_fault reset PCT   answer PCT % of them with a TCP reset, both ways
#   netns_fault none        remove the fault
#   netns_port_fault PORT KIND...   the same, for TCP port PORT of Postgres's side only
#
# Postgres in the namespace: tests/lib/pg.sh start with PG_NETNS=$NS_PG PG_LISTEN=$NS_PG_ADDR.

NS_PG=ferry-pg-$$
NS_FY=ferry-fy-$$
NS_PG_ADDR=10.77.0.1
NS_FY_ADDR=10.77.0.2
NS_VETH_PG=fp$$
NS_VETH_FY=ff$$
NS_TABLE=ferry_fault

netns_create() {
  command -v nft >/dev/null || { echo "netns.sh: nft not found (deploy/deps.sh installs nftables)" >&2; return 1; }
  ip netns add "$NS_PG" || return 1
  ip netns add "$NS_FY" || { ip netns del "$NS_PG"; return 1; }
  ip link add "$NS_VETH_PG" netns "$NS_PG" type veth peer name "$NS_VETH_FY" netns "$NS_FY" || { netns_destroy; return 1; }
  ip -n "$NS_PG" addr add "$NS_PG_ADDR/30" dev "$NS_VETH_PG" &&
    ip -n "$NS_FY" addr add "$NS_FY_ADDR/30" dev "$NS_VETH_FY" &&
    ip -n "$NS_PG" link set "$NS_VETH_PG" up && ip -n "$NS_FY" link set "$NS_VETH_FY" up &&
    ip -n "$NS_PG" link set lo up && ip -n "$NS_FY" link set lo up || { netns_destroy; return 1; }
  ip netns exec "$NS_FY" nft -f - <<NFT || { netns_destroy; return 1; }
table inet $NS_TABLE {
  chain out { type filter hook output priority 0; policy accept; }
  chain in { type filter hook input priority 0; policy accept; }
}
NFT
}

netns_destroy() {
  ip netns del "$NS_FY" 2>/dev/null
  ip netns del "$NS_PG" 2>/dev/null
  return 0
}

netns_pg() { ip netns exec "$NS_PG" "$@"; }
netns_fy() { ip netns exec "$NS_FY" "$@"; }

# netns_port_fault PORT KIND [PCT]: KIND drop | loss | reset | none, on Postgres's PORT (0: any)
netns_port_fault() {
  local port=$1 kind=$2 pct=${3:-100} out="ip daddr $NS_PG_ADDR" in="ip saddr $NS_PG_ADDR" verdict
  if [ "$port" != 0 ]; then out="$out tcp dport $port"; in="$in tcp sport $port"; fi
  ip netns exec "$NS_FY" nft flush chain inet "$NS_TABLE" out || return 1
  ip netns exec "$NS_FY" nft flush chain inet "$NS_TABLE" in || return 1
  case $kind in
    none) return 0 ;;
    drop) verdict=drop; pct=100 ;;
    loss) verdict=drop ;;
    reset) verdict="reject with tcp reset"; out="$out meta l4proto tcp"; in="$in meta l4proto tcp" ;;
    *) echo "netns_fault: unknown fault $kind" >&2; return 2 ;;
  esac
  local sel=""
  [ "$pct" -lt 100 ] && sel="numgen random mod 100 < $pct"
  ip netns exec "$NS_FY" nft add rule inet "$NS_TABLE" out $out $sel $verdict &&
    ip netns exec "$NS_FY" nft add rule inet "$NS_TABLE" in $in $sel $verdict
}

netns_fault() { netns_port_fault 0 "$@"; }
