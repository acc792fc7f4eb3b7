#!/usr/bin/env bash
# build.sh -- install the web demo's npm packages (npm ci, once, behind a stamp) and bundle it
# into dist/ (build.mjs). Uses the machine's Node and npm; never installs them.
set -euo pipefail
dir=$(cd "$(dirname "$0")" && pwd)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "web demo: node and npm are needed" >&2; exit 1
fi
stamp=$dir/node_modules/.ferry-installed
if [ ! -f "$stamp" ] || [ "$dir/package-lock.json" -nt "$stamp" ]; then
  echo "web demo: installing its npm packages (npm ci)" >&2
  (cd "$dir" && npm ci --no-fund --no-audit --loglevel=error) >&2
  touch "$stamp"
fi
node "$dir/build.mjs"
