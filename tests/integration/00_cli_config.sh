#!/usr/bin/env bash
# 00_cli_config.sh -- the ferry CLI's shape and the configuration file checks
source "$(dirname "$0")/../lib/testlib.sh"

# every key the parser accepts is documented in deploy/ferry.example.yaml (PgBouncer's optscan)
missing=()
while read -r key; do
  leaf=${key##*.}
  grep -Eq "(^|[[:space:]{,])$leaf:" "$T_ROOT/deploy/ferry.example.yaml" || missing+=("$key")
done < <("$FERRY_BIN" config keys)
nkeys=$("$FERRY_BIN" config keys | wc -l)
[ "$nkeys" -gt 20 ] && pass "config keys lists the accepted keys ($nkeys)" || fail "config keys" "only $nkeys keys"
expect_eq "every accepted key is documented in deploy/ferry.example.yaml" "" "${missing[*]}"

out=$("$FERRY_BIN" config check --config "$T_ROOT/deploy/ferry.example.yaml" 2>&1)
expect_eq "the example configuration is valid" "0" "$?"

printf 'postgres:\n  uri: x\nhttp:\n  listn: "127.0.0.1:1"\n' >"$T_TMP/bad.yaml"
out=$("$FERRY_BIN" config check --config "$T_TMP/bad.yaml" 2>&1); rc=$?
expect_eq "config check fails on a bad file" "1" "$rc"
expect_eq "config check names file, line, column and the fix" \
  "$T_TMP/bad.yaml:4:3: unknown key \"listn\" (did you mean \"listen\"?)" "$out"

out=$(FERRY_CONFIG=$T_TMP/bad.yaml "$FERRY_BIN" serve 2>&1); rc=$?
expect_eq "serve refuses a bad config (FERRY_CONFIG)" "1" "$rc"
expect_match "serve prints the config error" 'bad.yaml:4:3: unknown key "listn"' "$out"

"$FERRY_BIN" frobnicate >/dev/null 2>"$T_TMP/err"; rc=$?
expect_eq "unknown subcommand exits 2" "2" "$rc"
expect_match "unknown subcommand prints usage" 'unknown command "frobnicate".*usage: ferry' "$(tr '\n' ' ' <"$T_TMP/err")"
"$FERRY_BIN" serve --bogus >/dev/null 2>&1; expect_eq "unknown flag exits 2" "2" "$?"
"$FERRY_BIN" serve >/dev/null 2>&1 </dev/null; expect_eq "serve without a config exits 2" "2" "$?"
"$FERRY_BIN" >/dev/null 2>&1; expect_eq "no subcommand exits 2" "2" "$?"
expect_match "version prints the version" '^ferry [0-9]+\.[0-9]+\.[0-9]+ ' "$("$FERRY_BIN" version)"
expect_match "help lists serve" 'serve --config FILE' "$("$FERRY_BIN" help)"
