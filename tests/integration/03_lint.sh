#!/usr/bin/env bash
# 03_lint.sh -- `make lint` and `make format-check` fail on what they are there to catch
#
# On a scratch copy of the tree: the copy passes both; then each planted mistake must make its
# check fail and name the file: an include that crosses a folder boundary (storage/ including
# repl/, a backend included from outside storage/, an api/ file reaching into another route's
# internals, the rules library seeing h2o), and a misformatted C file.
source "$(dirname "$0")/../lib/testlib.sh"

copy=$T_TMP/tree
mkdir -p "$copy"
(cd "$T_ROOT" && tar --exclude=./build --exclude=./var --exclude='*/node_modules' -cf - .) |
  (cd "$copy" && tar -xf -)

out=$(make -s -C "$copy" lint 2>&1); rc=$?
expect_eq "the unchanged copy passes make lint" "0" "$rc"
out=$(make -s -C "$copy" format-check 2>&1); rc=$?
expect_eq "the unchanged copy passes make format-check" "0" "$rc"

# plant LINE after the first #include of FILE, run make lint, restore FILE
plant() {
  local file=$1 line=$2
  cp "$copy/$file" "$T_TMP/saved"
  awk -v add="$line" '{ print } !done && /^#include/ { print add; done = 1 }' "$T_TMP/saved" >"$copy/$file"
  out=$(make -s -C "$copy" lint 2>&1); rc=$?
  cp "$T_TMP/saved" "$copy/$file"
}

plant gateway/storage/gw_oprec.c '#include "repl/gw_repl.h"'
expect_eq "storage/ including repl/ fails make lint" "2" "$rc"
expect_match "the failure names the file and the include" \
  'gateway/storage/gw_oprec.c includes gateway/repl/gw_repl.h: storage/ may include only' "$out"

plant gateway/repl/gw_repl_diag.c '#include "storage/sqlite/gw_sqlite.h"'
expect_eq "a backend included outside storage/ fails make lint" "2" "$rc"
expect_match "it says a backend is private to storage/" 'nothing outside storage/ includes a backend' "$out"

plant gateway/api/gw_stream.c '#include "api/gw_write_int.h"'
expect_eq "an api/ file using another route's internals fails make lint" "2" "$rc"
expect_match "it says api/ files share only their header" 'api/ files share only their header' "$out"

plant rules/rules_util.c '#include <h2o.h>'
expect_eq "rules/ seeing h2o fails make lint" "2" "$rc"
expect_match "it says rules/ is a leaf" 'rules/rules_util.c includes .*h2o.h: rules/ is a leaf' "$out"

# the same with the include pulled in by a header (transitive)
plant gateway/storage/gw_oprec.h '#include "http/gw_http.h"'
expect_eq "a crossing through a header fails make lint" "2" "$rc"
expect_match "every file that pulls it in is named" 'gateway/storage/sqlite/gw_sqlite_read.c includes gateway/http/gw_http.h' "$out"

out=$(make -s -C "$copy" lint 2>&1); rc=$?
expect_eq "restored, the copy passes make lint again" "0" "$rc"

printf 'int ferry_lint_probe( int a ){return a;}\n' >"$copy/gateway/base/gw_lint_probe.c"
out=$(make -s -C "$copy" format-check 2>&1); rc=$?
expect_eq "a misformatted file fails make format-check" "2" "$rc"
expect_match "the failure names the file" 'not formatted.*gateway/base/gw_lint_probe.c' "$(echo "$out" | tr '\n' ' ')"
