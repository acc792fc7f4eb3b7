#!/usr/bin/env bash
# bench.sh -- `make bench`: run every benchmark under tests/load/ and print one summary
#
# Each tests/load/bench_*.sh prints lines "BENCH name value unit [note]"; this script runs them
# in order, keeps their full output in build/bench/, and prints the collected figures. Timing
# goals live here, never in tests. Traffic goes to loopback only.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/build/bench
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
status=0
for b in "$root"/tests/load/bench_*.sh; do
  name=$(basename "$b" .sh)
  echo "== $name"
  if bash "$b" 2>&1 | tee "$out/$name.log" | grep '^BENCH ' >>"$summary"; then :; fi
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "   $name failed (see $out/$name.log)"; status=1; }
done
echo
echo "Benchmark summary ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)):"
awk '{ name=$2; val=$3; unit=$4; $1=$2=$3=$4=""; printf "  %-38s %14s %-10s %s\n", name, val, unit, $0 }' "$summary"
exit $status
