#!/usr/bin/env bash
# run.sh -- run libFuzzer targets for a bounded time each (make fuzz)
#
#   tests/fuzz/run.sh SECONDS NAME...   runs $FERRY_BUILD/fuzz/fuzz_NAME (default build/) for
#                                       SECONDS each, with a corpus under build/fuzz/corpus/NAME
#                                       seeded from tests/fuzz/seeds/NAME when that exists.
# Exits non-zero when any target finds a crash, a leak or a timeout (the reproducer is kept in
# build/fuzz/ and named in the output).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:?usage: run.sh SECONDS NAME...}; shift
build=$root/${FERRY_BUILD:-build}
failed=()
for name in "$@"; do
  bin=$build/fuzz/fuzz_$name
  corpus=$build/fuzz/corpus/$name
  mkdir -p "$corpus"
  seeds=()
  [ -d "$root/tests/fuzz/seeds/$name" ] && seeds=("$root/tests/fuzz/seeds/$name")
  echo "== fuzz $name for ${secs}s"
  if ! (cd "$build/fuzz" && "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "$corpus" "${seeds[@]}" 2>&1 | tail -15); then
    failed+=("$name")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then echo "fuzz: failures in ${failed[*]}"; exit 1; fi
echo "fuzz: ${#} targets ran ${secs}s each without a finding"
