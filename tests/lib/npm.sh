#!/usr/bin/env bash
# npm.sh -- install the test-only npm packages of tests/conformance/node, once
#
#   tests/lib/npm.sh          exit 0 when @powersync/node and @powersync/service-sync-rules are
#                             installed (npm ci behind a stamp; better-sqlite3 builds from source
#                             against the machine's Node headers, about 2 minutes the first time)
#
# Used by the conformance runner and by the differential test of the rules compiler. Uses the
# machine's Node and npm; never installs them.
set -uo pipefail
dir=$(cd "$(dirname "$0")/../conformance/node" && pwd)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "npm.sh: node and npm are needed (they come with the machine image)" >&2
  exit 1
fi
stamp=$dir/.installed
if [ ! -f "$stamp" ] || [ "$dir/package-lock.json" -nt "$stamp" ] ||
   [ ! -d "$dir/node_modules/@powersync/node" ] ||
   [ ! -d "$dir/node_modules/@powersync/service-sync-rules" ]; then
  echo "npm.sh: installing the test-only npm packages (npm ci; about 2 minutes)" >&2
  (cd "$dir" && npm_config_nodedir=/usr npm ci --no-fund --no-audit --loglevel=error) >&2 || {
    echo "npm.sh: npm ci failed" >&2; exit 1; }
  touch "$stamp"
fi
