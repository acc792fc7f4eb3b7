#!/usr/bin/env bash
# bench_rules.sh -- sync-rules row evaluation throughput on one core (make bench)
#
# Runs build/bench_rules pinned to one CPU: 5 bucket definitions over 3 tables, rows/s with op
# JSON, checksums and lookup entries, and the ratio to bare SQLite statement evaluations in the
# same run. Prints "BENCH name value unit note" lines and a last line "N rows/s".
# ROWS: $1 (default 600000).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/build/bench_rules
[ -x "$bin" ] || make -C "$root" --no-print-directory build/bench_rules >/dev/null
pin=()
command -v taskset >/dev/null && pin=(taskset -c 0)
"${pin[@]}" "$bin" "${1:-600000}"
