#!/usr/bin/env bash
# lint_includes.sh -- fail on an include that crosses a boundary of the design (`make lint`)
#
# Reads the compiler's own dependency output: every C file and header of gateway/, rules/,
# auth/ and clientsdk/ is preprocessed with -M (with the flags its module builds with), so an
# include counts with everything it pulls in, transitively. -M rather than -MM: -MM leaves out
# headers found in /usr/include, and sqlite3.h and h2o.h live there.
#
# The rules (gateway/README.md, "Folders"): arrows only point down.
#   - a gateway folder includes only the folders below it (ALLOWED) and the leaf libraries it
#     may use (LEAVES); nothing includes cli/ but cli/ and main.c
#   - nothing outside storage/ includes a backend (storage/<backend>/); a backend never
#     includes another backend's folder or library (sqlite3.h vs libpq-fe.h), and storage/'s
#     own files include neither library
#   - api/ files share only their header: api/gw_X*.c includes, of api/, gw_api.h and
#     gw_X_int.h only
#   - rules/, auth/ and clientsdk/ are leaves: only their own folder, and never h2o or libpq
# Environment: CC, and GATEWAY_CFLAGS, RULES_CFLAGS, AUTH_CFLAGS, SDK_CFLAGS (module flags);
# CFLAGS_BASE (flags every file gets). Run from the top of the tree. Exit 1 on a violation.
set -uo pipefail
CC=${CC:-cc}
base=${CFLAGS_BASE:--std=gnu11 -D_GNU_SOURCE -I.}

declare -A ALLOWED=(
  [base]="base"
  [pg]="base pg"
  [config]="base config"
  [storage]="base storage"
  [repl]="base config pg storage repl"
  [http]="base config pg http"
  [api]="base config pg storage repl http api"
  [cli]="base config pg storage repl http api cli"
  [main]="base config cli"
)
declare -A LEAVES=(
  [base]="" [pg]="" [config]="rules" [storage]="rules" [repl]="rules" [http]="auth"
  [api]="rules auth" [cli]="rules auth" [main]=""
)
BACKEND_LIBS="sqlite:sqlite3.h postgres:libpq-fe.h"

deps=$(mktemp)
errs=$(mktemp)
trap 'rm -f "$deps" "$errs"' EXIT
failed=0
while IFS= read -r f; do
  case "$f" in
  rules/*) flags=${RULES_CFLAGS:-} ;;
  auth/*) flags=${AUTH_CFLAGS:-} ;;
  clientsdk/*) flags="${SDK_CFLAGS:-} -Iclientsdk/include" ;;
  *) flags="-DH2O_USE_LIBUV=0 -Igateway ${GATEWAY_CFLAGS:-}" ;;
  esac
  lang=c
  [[ "$f" == *.h ]] && lang=c-header
  # -MG: a header the module cannot even find (h2o.h wants uv.h without the gateway's flags) is
  # still listed, so the rules below name what pulled it in; the failure is reported as well
  if ! out=$($CC $base $flags -x "$lang" -M -MG -MT x "$f" 2>"$errs"); then
    echo "lint: $f does not preprocess with its module's flags:"
    grep -m 3 -E 'error' "$errs" | sed 's/^/  /'
    failed=1
  fi
  # one "file dependency" pair per line
  printf '%s\n' "$out" | tr -d '\\' | tr ' ' '\n' | sed -e '/^$/d' -e '/^x:$/d' -e 's|^\./||' |
    awk -v f="$f" '$0 != f { print f, $0 }' >>"$deps"
done < <(find gateway rules auth clientsdk -name '*.[ch]' | sort)

# FOLDER=<folder> of gateway/<folder>/...; main for gateway/main.c (no subshell: this runs
# for every dependency)
folder_of() {
  local p=${1#gateway/}
  if [[ "$p" == */* ]]; then FOLDER=${p%%/*}; else FOLDER=main; fi
}

violation() { echo "lint: $1 includes $2: $3"; failed=1; }

while read -r f d; do
  case "$f" in
  gateway/*)
    folder_of "$f"
    from=$FOLDER
    case "$d" in
    gateway/*)
      folder_of "$d"
      to=$FOLDER
      [[ " ${ALLOWED[$from]:-} " == *" $to "* ]] ||
        violation "$f" "$d" "$from/ may include only ${ALLOWED[$from]:-nothing} (arrows point down)"
      # a storage backend is private to storage/
      if [[ "$d" == gateway/storage/*/* ]]; then
        backend=${d#gateway/storage/}
        backend=${backend%%/*}
        if [[ "$f" != gateway/storage/* ]]; then
          violation "$f" "$d" "nothing outside storage/ includes a backend"
        elif [[ "$f" == gateway/storage/*/* && "$f" != gateway/storage/$backend/* ]]; then
          violation "$f" "$d" "a backend never includes another backend"
        fi
      fi
      # api/ files share only their header
      if [[ "$from" == api && "$to" == api && "$f" == *.c ]]; then
        mod=${f##*/}
        mod=${mod%.c}
        mod=${mod#gw_}
        mod=${mod%%_*}
        case "${d##*/}" in
        gw_api.h | "gw_${mod}_int.h") ;;
        *) violation "$f" "$d" "api/ files share only their header (gw_api.h, gw_${mod}_int.h)" ;;
        esac
      fi
      ;;
    rules/* | auth/*)
      leaf=${d%%/*}
      [[ " ${LEAVES[$from]:-} " == *" $leaf "* ]] ||
        violation "$f" "$d" "$from/ may use the leaf libraries: ${LEAVES[$from]:-none}"
      ;;
    clientsdk/*) violation "$f" "$d" "the server shares no code with the client SDK" ;;
    esac
    # backend libraries
    if [[ "$f" == gateway/storage/* ]]; then
      for bl in $BACKEND_LIBS; do
        b=${bl%%:*} lib=${bl#*:}
        [[ "$d" == */"$lib" ]] || continue
        [[ "$f" == gateway/storage/$b/* ]] ||
          violation "$f" "$d" "only storage/$b/ uses $lib"
      done
    fi
    ;;
  rules/* | auth/* | clientsdk/*)
    leaf=${f%%/*}
    case "$d" in
    gateway/* | rules/* | auth/* | clientsdk/*)
      [[ "$d" == "$leaf"/* ]] || violation "$f" "$d" "$leaf/ is a leaf: it includes only its own files"
      ;;
    */h2o.h | */h2o/* | */libpq-fe.h)
      violation "$f" "$d" "$leaf/ is a leaf: no h2o, no libpq"
      ;;
    esac
    ;;
  esac
done <"$deps"

n=$(cut -d' ' -f1 "$deps" | sort -u | wc -l)
if [ "$failed" -ne 0 ]; then
  echo "lint: include boundaries crossed (see gateway/README.md, \"Folders\")"
  exit 1
fi
echo "lint: include boundaries hold ($n files)"
