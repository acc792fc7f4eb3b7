#!/usr/bin/env bash
# bench_auth.sh -- token verification and cache throughput on one core (make bench)
#
# Runs build/bench_auth pinned to one CPU; it prints "BENCH name value unit [note]" lines with
# RS256/ES256/EdDSA verifications per second, each as a ratio of OpenSSL's EVP_DigestVerify()
# alone measured in the same run, and cache hits per second. SECONDS per figure: $1 (default 1).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/build/bench_auth
[ -x "$bin" ] || make -C "$root" --no-print-directory build/bench_auth >/dev/null
pin=()
command -v taskset >/dev/null && pin=(taskset -c 0)
"${pin[@]}" "$bin" "${1:-1}"
