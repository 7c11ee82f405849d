#!/usr/bin/env bash
# Fuzzes the GGUF loader: mutants of small valid GGUFs, each loaded, given a context and evaluated
# in a child process of tests/fuzz/fuzz_gguf (built here with CMake, plain or with ASan/UBSan).
#
#   tests/fuzz/run_fuzz.sh --kind byte|semantic|both --cases N [--jobs J] [--asan] [--seed S]
#                          [--start K] [--timeout-ms T] [--build-dir DIR] [--crash-dir DIR] [-- harness args]
#
# Needs only this repository and a Python with llama-cpp-python (its ggml) and gguf: $PYTHON, the
# active virtual environment or .venv. Prints one summary line per kind:
#   fuzz: kind=byte cases=N ok=.. errors=.. crashes=.. hangs=.. seconds=.. cases_per_s=.. ...
# and exits 1 when any case crashed or hung (inputs kept under the crash folder), 2 on a set-up error.
set -euo pipefail
cd "$(dirname "$0")/../.."

kind=byte cases=1000 jobs=$(nproc 2>/dev/null || echo 2) asan=false seed=1 start=0
build_dir="" crash_dir="" timeout_ms="" extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --kind) kind=$2; shift 2 ;;
        --cases) cases=$2; shift 2 ;;
        --jobs|-j) jobs=$2; shift 2 ;;
        --asan) asan=true; shift ;;
        --seed) seed=$2; shift 2 ;;
        --start) start=$2; shift 2 ;;
        --timeout-ms) timeout_ms=$2; shift 2 ;;
        --build-dir) build_dir=$2; shift 2 ;;
        --crash-dir) crash_dir=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) sed -n '2,12p' "$0" >&2; exit 2 ;;
    esac
done

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ]; then PY=python; elif [ -x .venv/bin/python ]; then PY=$PWD/.venv/bin/python; else PY=python3; fi
fi
PY=$(command -v "$PY")

if [ "$asan" = true ]; then
    build_dir=${build_dir:-build/fuzz-asan}
    timeout_ms=${timeout_ms:-20000}  # a sanitized child is several times slower
    cmake_args=(-DGGML_REROPE_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo)
else
    build_dir=${build_dir:-build/fuzz}
    timeout_ms=${timeout_ms:-5000}
    cmake_args=()
fi
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
    cmake -S . -B "$build_dir" -DPython3_EXECUTABLE="$PY" -DGGML_REROPE_CUDA=OFF "${cmake_args[@]}" >/dev/null
fi
cmake --build "$build_dir" -j "$jobs" --target fuzz_gguf >/dev/null
harness=$build_dir/tests/fuzz/fuzz_gguf

seed_dir=$build_dir/fuzz-seeds
seeds=$(PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$PY" tests/fuzz/make_seeds.py "$seed_dir")

rc=0
kinds=$kind
[ "$kind" = both ] && kinds="byte semantic"
for k in $kinds; do
    dir=${crash_dir:-$build_dir/fuzz-crashes}/$k
    mkdir -p "$dir"
    "$harness" --kind "$k" --seeds "$seeds" --cases "$cases" --jobs "$jobs" --seed "$seed" --start "$start" \
        --timeout-ms "$timeout_ms" --crash-dir "$dir" "${extra[@]}" || rc=$?
done
exit $rc
