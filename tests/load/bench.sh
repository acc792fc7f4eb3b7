#!/usr/bin/env bash
# bench.sh -- `make bench`: run every benchmark under tests/load/ and print one table
#
# Each tests/load/bench_*.sh prints lines "BENCH name value unit [note]" (the note may carry
# limit=NAME:VALUE and goal=OPVALUE tokens); this script runs them in order, keeps their full
# output in build/bench/NAME.log, collects the lines into build/bench/summary.txt and the
# durations into build/bench/scripts.txt, then tests/load/bench_summary.py prints one table
# (each figure of issues #3 to #8 beside its goal from tests/load/goals.txt, the limit measured in
# the same run and the ratio, a pass/MISS mark) and writes build/bench/bench.json with every
# figure. ferry-load's JSON files and plots (SVG, PNG) land in build/bench/ too. Timing goals live
# here, never in tests. Traffic goes to loopback only.
# BENCH_ONLY="streams write": run only those bench_*.sh (the table then shows the rest as NONE).
# Exit status: 1 when a bench script failed; goals missed are reported, not failures.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/build/bench
rm -rf "$out"
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
: >"$out/scripts.txt"
status=0
start=$(date +%s)
for b in "$root"/tests/load/bench_*.sh; do
  name=$(basename "$b" .sh)
  if [ -n "${BENCH_ONLY:-}" ] && ! [[ " $BENCH_ONLY " == *" ${name#bench_} "* ]]; then continue; fi
  echo "== $name"
  t0=$(date +%s.%N)
  bash "$b" 2>&1 | tee "$out/$name.log" | grep --line-buffered '^BENCH ' | tee -a "$summary"
  rc=${PIPESTATUS[0]}
  t1=$(date +%s.%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  echo "$name $secs $rc" >>"$out/scripts.txt"
  echo "   ($secs s)"
  [ "$rc" -eq 0 ] || { echo "   $name failed with status $rc (see $out/$name.log)"; status=1; }
done
total=$(( $(date +%s) - start ))
echo
echo "Benchmark summary ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $((total / 60)) min $((total % 60)) s):"
python3 "$root/tests/load/bench_summary.py" "$out" "$root/tests/load/goals.txt" \
  --date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --seconds "$total" || status=1
awk '$3 != 0 { printf "  FAILED: %s (exit %s, see build/bench/%s.log)\n", $1, $3, $1 }' "$out/scripts.txt"
echo "  every figure: build/bench/bench.json; logs, ferry-load JSON and plots: build/bench/"
exit $status
