#!/usr/bin/env bash
# run.sh -- run every test suite: Check unit tests, integration tests, conformance tests, the
# web demo in a real browser
#
# Called by `make check` after the build. Each suite prints its own summary (Check's
# "100%: Checks: N, Failures: 0, Errors: 0", the runners' "N passed, N failed"); this script
# exits non-zero when any suite failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-120}
export FERRY_BUILD=${FERRY_BUILD:-build}
export FERRY_BIN=$root/$FERRY_BUILD/ferry
export FERRY_SRC=$root
# LeakSanitizer: leaks inside libraries we do not own, reviewed (see the file)
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/lib/lsan.supp:print_suppressions=0}
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
start=$(date +%s)
failed=()

# one throwaway Postgres for the unit tests that need one (the storage contract suite runs every
# test against the Postgres backend too, each in a schema of its own); always stopped
unit_pg=$(tests/lib/pg.sh start unit) || { echo "could not start Postgres for the unit tests"; exit 1; }
eval "$unit_pg"
unit_pgtmp=$PGTMP
trap 'tests/lib/pg.sh stop "$unit_pgtmp"' EXIT
export FERRY_TEST_STORAGE_URI=$FERRY_PG_URI
for t in "$FERRY_BUILD"/test_*; do
  [ -x "$t" ] || continue
  echo "== unit: $(basename "$t")"
  "$t" || failed+=("$(basename "$t")")
done
tests/lib/pg.sh stop "$unit_pgtmp"
trap - EXIT
unset FERRY_TEST_STORAGE_URI PGTMP PGPORT PGHOST FERRY_PG_URI

echo "== integration"
tests/integration/run.sh || failed+=(integration)

if [ -x tests/conformance/run.sh ]; then
  echo "== conformance"
  tests/conformance/run.sh || failed+=(conformance)
fi

if [ -x tests/browser/run.sh ]; then
  echo "== browser"
  tests/browser/run.sh || failed+=(browser)
fi

echo "make check took $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all test suites passed"
