#!/usr/bin/env bash
# run.sh -- the reliability campaign (make chaos): every scenario's long version, then a table
#
# Runs each scenario of tests/chaos/ with CHAOS_MODE=long (about an hour in all on a 2-core
# machine), then every libFuzzer target for CHAOS_FUZZ_SECONDS (default 30; 0 skips them), and
# prints one table: each scenario's checks, time and figures, the fuzzers' executions, and the
# totals (faults injected, bad inputs tried, data lost). Everything stays under build/chaos/:
# each scenario's output (SCENARIO.log), its folder (ferry's logs, storage, the clients' files;
# SCENARIO/ferry-test-*), figures.txt, results.txt and table.txt. Exits non-zero when any check
# failed.
#
#   tests/chaos/run.sh [SCENARIO...]   (default: all; CHAOS_MODE=short runs the short versions)
#
# SCENARIO@postgres runs a scenario with ferry's storage in Postgres (FERRY_TEST_STORAGE=postgres:
# a database of its own beside the source database, on the same server).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
build=${FERRY_BUILD:-build}
out=$root/$build/chaos
export FERRY_BIN=${FERRY_BIN:-$root/$build/ferry}
export CHAOS_MODE=${CHAOS_MODE:-long}
export CHAOS_FIGURES=$out/figures.txt
export T_KEEP=1
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] ||
  scenarios=(random_oracle kill_loop kill_loop@postgres net_faults net_faults@postgres pg_failover
    disk_full storms)
for s in "${scenarios[@]}"; do rm -rf "${out:?}/$s" "$out/$s.log"; done
mkdir -p "$out"
: >"$CHAOS_FIGURES"
results=$out/results.txt
: >"$results"
start=$(date +%s)

for s in "${scenarios[@]}"; do
  mkdir -p "$out/$s"
  echo "== $s ($CHAOS_MODE)"
  t0=$(date +%s)
  storage=sqlite
  [[ "$s" == *@postgres ]] && storage=postgres
  FERRY_TEST_STORAGE=$storage T_TMPDIR=$out/$s T_RESULTS=$results bash "tests/chaos/${s%@*}.sh" \
    >"$out/$s.log" 2>&1
  rc=$?
  t=$(($(date +%s) - t0))
  echo "$s|scenario_time|$t|s" >>"$CHAOS_FIGURES"
  p=$(grep -c "^pass $s:" "$results")
  f=$(grep -c "^fail $s:" "$results")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then echo "fail $s: exited $rc" >>"$results"; f=1; fi
  echo "   $p passed, $f failed in ${t}s (log: $build/chaos/$s.log)"
  grep "^fail $s:" "$results" | head -5 | sed 's/^/   /'
done

fuzz_secs=${CHAOS_FUZZ_SECONDS:-30}
if [ "$fuzz_secs" -gt 0 ]; then
  echo "== fuzz (${fuzz_secs}s per target)"
  make --no-print-directory fuzz FUZZ_SECONDS="$fuzz_secs" >"$out/fuzz.log" 2>&1
  rc=$?
  sed -n 's/^fuzz \([a-z_]*\): \([0-9]*\) executions in \([0-9]*\)s.*/fuzz|\1_executions|\2|runs/p' \
    "$out/fuzz.log" >>"$CHAOS_FIGURES"
  [ "$rc" -eq 0 ] && echo "pass fuzz: every target ran without a finding" >>"$results" ||
    echo "fail fuzz: a target found something (see $build/chaos/fuzz.log)" >>"$results"
  tail -12 "$out/fuzz.log" | sed 's/^/   /'
fi

# the table: figures by scenario, then the totals
{
  printf '%-16s %-44s %16s %s\n' scenario figure value unit
  sort -t'|' -k1,1 -s "$CHAOS_FIGURES" | awk -F'|' '{ printf "%-16s %-44s %16s %s\n", $1, $2, $3, $4 }'
  fig() { awk -F'|' -v k="$1" '$2 ~ k { s += $3 } END { print s + 0 }' "$CHAOS_FIGURES"; }
  faults=$(( $(fig '^kills$') + $(fig '^network_faults$') + $(fig '^postgres_restarts$') + $(fig '^failovers$') + $(fig '^disks_filled$') ))
  bad=$(( $(fig '_executions$') + $(fig '^abusive_requests$') ))
  echo
  echo "faults injected (kills, network faults, Postgres restarts and failovers, full disks): $faults"
  echo "bad inputs tried (fuzz executions, abusive requests): $bad"
  echo "checks: $(grep -c '^pass' "$results") passed, $(grep -c '^fail' "$results") failed"
  if [ "$(grep -c '^fail' "$results")" -eq 0 ]; then
    echo "data lost: 0 (every scenario's storage, checksums, op ids and clients equal the oracle)"
  else
    echo "FAILURES:"; grep '^fail' "$results" | sed 's/^/  /'
  fi
  echo "campaign time: $(( $(date +%s) - start )) s ($CHAOS_MODE)"
} | tee "$out/table.txt"
[ "$(grep -c '^fail' "$results")" -eq 0 ]
