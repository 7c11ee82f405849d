#!/usr/bin/env bash
# Lint: `ruff check` over the Python code (rules in pyproject.toml [tool.ruff]) and
# `clang-format --dry-run --Werror` over the C / CUDA sources of src/, examples/, tests/c/ and
# tests/fuzz/ (style in .clang-format).
# Exits non-zero on any finding. `tests/lint.sh --fix` applies what the tools can fix instead.
#
# Both tools are pinned: a different clang-format version lays code out differently, so the
# check would flap. Missing (or another version), they are pip-installed into the Python
# this script uses: $PYTHON, else the active virtual environment, else .venv, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."

RUFF_VERSION=0.17.6
CLANG_FORMAT_VERSION=23.1.5

fix=false
[ "${1:-}" = "--fix" ] && fix=true

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ]; then PY=python; elif [ -x .venv/bin/python ]; then PY=$PWD/.venv/bin/python; else PY=python3; fi
fi
BIN=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')

ensure() {  # PACKAGE VERSION: pip-install PACKAGE==VERSION unless that version is there
    local have
    have=$("$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true)
    if [ "$have" != "$2" ]; then
        echo "== installing $1==$2 into $("$PY" -c 'import sys; print(sys.prefix)') (found: ${have:-none})"
        "$PY" -m pip install -q "$1==$2"
    fi
}
ensure ruff "$RUFF_VERSION"
ensure clang-format "$CLANG_FORMAT_VERSION"

mapfile -t c_files < <(find src examples tests/c tests/fuzz -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) | sort)

rc=0
if [ "$fix" = true ]; then
    "$BIN/ruff" check --fix . || rc=1
    "$BIN/clang-format" -i "${c_files[@]}" || rc=1
    exit $rc
fi

echo "== ruff check (Python)"
"$BIN/ruff" check --output-format concise . || rc=1

echo "== clang-format --dry-run (${#c_files[@]} C / CUDA files)"
report=$(mktemp)
trap 'rm -f "$report"' EXIT
if ! "$BIN/clang-format" --dry-run --Werror "${c_files[@]}" 2>"$report"; then
    rc=1
    grep -- '-Wclang-format-violations' "$report" | cut -d: -f1 | sort | uniq -c \
        | awk '{print "  " $2 ": " $1 " place(s) to reformat"}'
    echo "  (run tests/lint.sh --fix to apply .clang-format)"
fi

[ $rc = 0 ] && echo "== lint clean"
exit $rc
