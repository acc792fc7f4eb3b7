#!/usr/bin/env bash
# node_deps.sh -- install the official PowerSync Node client for the tests that drive it, once
#
# Installs @powersync/node, @powersync/common and better-sqlite3 into tests/conformance/node
# (npm ci, behind a stamp; better-sqlite3 builds from source against the machine's Node headers).
# Uses the machine's Node and npm; never installs them. Exit 1 when they are missing or npm fails.
set -uo pipefail
dir=$(cd "$(dirname "$0")/../conformance/node" && pwd)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "node and npm are needed (they come with the machine image)" >&2; exit 1
fi
stamp=$dir/.installed
if [ ! -f "$stamp" ] || [ "$dir/package-lock.json" -nt "$stamp" ] || [ ! -d "$dir/node_modules/@powersync/node" ]; then
  echo "installing the PowerSync client (npm ci, builds better-sqlite3; about 2 minutes)"
  (cd "$dir" && npm_config_nodedir=/usr npm ci --no-fund --no-audit --loglevel=error) || {
    echo "npm ci failed" >&2; exit 1; }
  touch "$stamp"
fi
