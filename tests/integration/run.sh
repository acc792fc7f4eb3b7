#!/usr/bin/env bash
# run.sh -- run every integration test (tests/integration/NN_*.sh) against a real Postgres
#
# Starts one throwaway Postgres for the run (tests create their own databases in it), runs each
# script in order, counts the pass/fail lines they record, and ends with "N passed, N failed".
# A script that exits non-zero without recording a failure counts as one failure.
# Usage: tests/integration/run.sh [PATTERN]   (PATTERN filters script names, e.g. 0)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
pattern=${1:-}

results=$(mktemp /tmp/ferry-it-results.XXXXXX)
pgenv=$("$root/tests/lib/pg.sh" start it) || { echo "could not start postgres"; echo "0 passed, 1 failed"; exit 1; }
eval "$pgenv"
export FERRY_PG_URI PGTMP
cleanup() { "$root/tests/lib/pg.sh" stop "$PGTMP"; rm -f "$results"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# run_one SCRIPT BACKEND
run_one() {
  local t=$1 name
  name=$(basename "$t" .sh)
  [ "$2" = sqlite ] || name="$name@$2"
  echo "== $name"
  local before after rc
  before=$(grep -c '^fail' "$results" || true)
  T_RESULTS=$results FERRY_TEST_STORAGE=$2 bash "$t"
  rc=$?
  after=$(grep -c '^fail' "$results" || true)
  if [ $rc -ne 0 ] && [ "$after" = "$before" ]; then
    echo "fail $name: script exited $rc" >>"$results"
    echo "  FAIL $name exited $rc"
  fi
  # slots are cluster-wide: the next script (or the same one on the next backend) starts clean
  psql -qtA "$FERRY_PG_URI" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active" >/dev/null 2>&1 || true
}

# Scripts where storage matters say "# storage: both" and run against each backend
# (FERRY_TEST_STORAGE; FERRY_TEST_BACKENDS limits the list, e.g. "postgres").
backends=${FERRY_TEST_BACKENDS:-sqlite postgres}
for t in "$here"/[0-9][0-9]_*.sh; do
  name=$(basename "$t" .sh)
  [ -n "$pattern" ] && [[ "$name" != $pattern* ]] && continue
  if grep -q '^# storage: both$' "$t"; then
    for b in $backends; do run_one "$t" "$b"; done
  else
    run_one "$t" sqlite
  fi
done

passed=$(grep -c '^pass' "$results" || true)
failed=$(grep -c '^fail' "$results" || true)
if [ "$failed" -gt 0 ]; then echo "failures:"; grep '^fail' "$results" | sed 's/^/  /'; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
