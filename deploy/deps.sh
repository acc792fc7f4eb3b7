#!/usr/bin/env bash
# deps.sh -- install the Debian packages Ferry needs to build, test and run its demo.
#
# Idempotent: asks dpkg which packages are missing and installs only those, saying which.
# Works as root and through sudo. Never installs Node.js or npm (the machine's own are used).
# Usage: deploy/deps.sh [--check]   (--check: exit 1 when something is missing, install nothing)
set -euo pipefail

PACKAGES=(
  libh2o-evloop-dev libpq-dev libyaml-dev libjwt-dev libjansson-dev libsqlite3-dev
  libcurl4-openssl-dev libssl-dev check pkg-config postgresql-15 clang libclang-rt-14-dev
  clang-format gnuplot-nox wrk curl procps make gcc g++ python3 openssl iproute2 jq sqlite3
  haproxy nftables libzstd-dev zlib1g-dev python3-zstandard chromium
)

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "deps: missing: ${missing[*]}" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "deps: need root or sudo to install: ${missing[*]}" >&2; exit 1
  fi
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "deps: done"
