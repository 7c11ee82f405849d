#!/usr/bin/env bash
# Runs every test: lint (tests/lint.sh), the C tests through CTest, then the Python suite with pytest.
# Under CI (CI=true) or with --sanitize it also builds the C tests with
# -fsanitize=address,undefined and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ]; then PY=python; elif [ -x .venv/bin/python ]; then PY=$PWD/.venv/bin/python; else PY=python3; fi
fi
PY=$(command -v "$PY")  # absolute: CMake asks this Python where llama-cpp-python put ggml
sanitize=${CI:-false}
[ "${1:-}" = "--sanitize" ] && sanitize=true
jobs=$(nproc 2>/dev/null || echo 2)

# Lint first: it takes seconds, and style findings should not wait behind a full build.
echo "== lint"
PYTHON="$PY" tests/lint.sh

echo "== C library and C tests (CTest)"
cmake -S . -B build/ctest -DPython3_EXECUTABLE="$PY" >/dev/null
cmake --build build/ctest -j "$jobs"
ctest --test-dir build/ctest --output-on-failure

if [ "$sanitize" = true ]; then
    echo "== C tests with AddressSanitizer and UndefinedBehaviorSanitizer"
    cmake -S . -B build/asan -DGGML_REROPE_SANITIZE=ON -DGGML_REROPE_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DPython3_EXECUTABLE="$PY" >/dev/null
    cmake --build build/asan -j "$jobs"
    # The install test builds outside programs without the sanitizer runtime: plain build only.
    ASAN_OPTIONS=detect_leaks=0 ctest --test-dir build/asan --output-on-failure -E install_and_build_example
fi

# ---- GGUF loader fuzz slice (tests/fuzz/). The plain slice runs in pytest (tests/test_fuzz.py);
# this is the same kind of slice on the sanitized build: mutants in child processes, no crash, no hang.
if [ "$sanitize" = true ]; then
    echo "== Fuzz slice of the GGUF loader under ASan/UBSan"
    tests/fuzz/run_fuzz.sh --kind both --cases 500 --jobs "$jobs" --asan --build-dir build/asan
fi
# ---- end of the fuzz slice

echo "== Python tests (pytest), against the library CTest just built"
export GGML_REROPE_LIBRARY="$PWD/build/ctest/src/libggml_rerope.so"
"$PY" -m pytest -q tests
