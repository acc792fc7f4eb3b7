#!/usr/bin/env bash
# 12_rules_reference.sh -- Ferry's rules library equals PowerSync's compiler on a corpus
#
# Runs tests/rules_ref/diff.mjs: every file of tests/rules_ref/corpus/valid (editions 1, 2, 3;
# bucket definitions and Sync Streams) with generated rows and requests goes to the reference
# compiler (@powersync/service-sync-rules 0.38.1, a test-only npm package installed by
# tests/lib/npm.sh) and to build/rules-refdriver; bucket ids, row data, checksums, lookup entries
# and the buckets of each request must be equal. Every file of corpus/invalid must be rejected by
# both, Ferry's error with a file:line:col. One result per file. Then it checks that the
# comparison can fail: a driver that changes one bucket id must make a file fail, and the
# failure must print the file, the row and both outputs.
source "$(dirname "$0")/../lib/testlib.sh"
driver=$T_ROOT/${FERRY_BUILD:-build}/rules-refdriver
[ -x "$driver" ] || driver=$T_ROOT/build/rules-refdriver
if ! "$T_ROOT/tests/lib/npm.sh"; then
  fail "the reference compiler is installed" "tests/lib/npm.sh failed"
  exit 1
fi

out=$(node "$T_ROOT/tests/rules_ref/diff.mjs" "$driver" "$T_ROOT/tests/rules_ref/corpus" 2>&1)
rc=$?
while IFS= read -r line; do
  case "$line" in
    "  ok   "*) pass "reference: ${line#  ok   }" ;;
    "  FAIL "*) fail "reference: ${line#  FAIL }" "differs from @powersync/service-sync-rules" ;;
  esac
done <<<"$out"
echo "$out" | grep -v '^  ok   ' | sed 's/^/    /' | head -200
nvalid=$(echo "$out" | grep -c '^  ok   valid/')
ninvalid=$(echo "$out" | grep -c '^  ok   invalid/')
[ "$nvalid" -ge 40 ] && pass "at least 40 valid files equal the reference ($nvalid)" ||
  fail "at least 40 valid files equal the reference" "only $nvalid"
[ "$ninvalid" -ge 20 ] && pass "at least 20 invalid files rejected by both ($ninvalid)" ||
  fail "at least 20 invalid files rejected by both" "only $ninvalid"
expect_eq "the differential run exits 0" 0 "$rc"

# the comparison can fail: a driver whose output differs in one bucket id
mkdir -p "$T_TMP/corpus/valid" "$T_TMP/corpus/invalid"
cp "$T_ROOT/tests/rules_ref/corpus/schema.json" "$T_TMP/corpus/"
cp "$T_ROOT/tests/rules_ref/corpus/valid/e3_01_basic.yaml" "$T_TMP/corpus/valid/"
cat >"$T_TMP/bad-driver" <<SH
#!/usr/bin/env bash
"$driver" "\$@" | sed 's/my_lists|0/my_lists|1/'
SH
chmod +x "$T_TMP/bad-driver"
bad=$(node "$T_ROOT/tests/rules_ref/diff.mjs" "$T_TMP/bad-driver" "$T_TMP/corpus" 2>&1)
expect_match "a changed bucket id fails the file" 'FAIL valid/e3_01_basic.yaml' "$bad"
expect_match "the failure names the row and shows both outputs" \
  'row lists\(id="l[0-9]+".*ops differ.*reference: .*my_lists\|0.*ferry: .*my_lists\|1' "$(echo "$bad" | tr '\n' ' ')"
expect_match "and the run ends with a failure count" '0 passed, 1 failed' "$bad"
