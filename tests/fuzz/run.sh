#!/usr/bin/env bash
# run.sh -- run libFuzzer targets for a bounded time each (make fuzz)
#
#   tests/fuzz/run.sh SECONDS NAME...   runs $FERRY_BUILD/fuzz/fuzz_NAME (default build/) for
#                                       SECONDS each (or FUZZ_RUNS executions when that is set),
#                                       with a corpus under build/fuzz/corpus/NAME seeded from
#                                       tests/fuzz/seeds/NAME when that exists, and the
#                                       dictionary tests/fuzz/fuzz_NAME.dict when that exists.
# Prints each target's executions (and their rate) and a table at the end. Exits non-zero when
# any target finds a crash, a leak or a timeout (the reproducer is kept in build/fuzz/ and named
# in the output).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:?usage: run.sh SECONDS NAME...}; shift
build=$root/${FERRY_BUILD:-build}
runs=${FUZZ_RUNS:-}
failed=()
table=()
for name in "$@"; do
  bin=$build/fuzz/fuzz_$name
  corpus=$build/fuzz/corpus/$name
  mkdir -p "$corpus"
  extra=()
  [ -d "$root/tests/fuzz/seeds/$name" ] && extra+=("$root/tests/fuzz/seeds/$name")
  # -entropic=0: libFuzzer's entropic schedule spent 81 % of the rules target's time in its own
  # feature bookkeeping (470 executions/s); without it the same target runs 8,000/s and finds
  # more new inputs in the same time; the other targets run at the same rate either way
  opts=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -entropic=0)
  [ -f "$root/tests/fuzz/fuzz_$name.dict" ] && opts+=(-dict="$root/tests/fuzz/fuzz_$name.dict")
  if [ -n "$runs" ]; then opts+=(-runs="$runs"); what="$runs runs"; else opts+=(-max_total_time="$secs"); what="${secs}s"; fi
  echo "== fuzz $name for $what"
  log=$build/fuzz/$name.log
  t0=$(date +%s)
  (cd "$build/fuzz" && "$bin" "${opts[@]}" "$corpus" "${extra[@]}") >"$log" 2>&1
  rc=$?
  t=$(( $(date +%s) - t0 ))
  tail -15 "$log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  echo "fuzz $name: ${execs:-?} executions in ${t}s ($(( ${execs:-0} / (t > 0 ? t : 1) ))/s)"
  table+=("$(printf '%-16s %14s %8ss' "$name" "${execs:-?}" "$t")")
  [ $rc -eq 0 ] || failed+=("$name")
done
echo "target           executions     time"
printf '%s\n' "${table[@]}"
if [ ${#failed[@]} -gt 0 ]; then echo "fuzz: failures in ${failed[*]}"; exit 1; fi
echo "fuzz: ${#} targets ran without a finding"
