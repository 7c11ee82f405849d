#!/usr/bin/env bash
# Sets up ggml-rerope on a fresh machine: a virtual environment in .venv (unless one
# is active), llama-cpp-python==0.3.36 built from source (it provides ggml; ~5 min on
# 2 cores, cached by pip afterwards), then this project built with CMake against that
# ggml. Extra arguments go to the final pip install (e.g. -C cmake.define.GGML_REROPE_CUDA=OFF).
set -euo pipefail
cd "$(dirname "$0")"

if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q "scikit-build-core>=0.10" "cffi>=1.15" "numpy>=1.24" ninja
echo "install.sh: llama-cpp-python==0.3.36 (builds ggml from source the first time, ~5 minutes)" >&2
python -m pip install -q llama-cpp-python==0.3.36
# --no-build-isolation: link the ggml installed above, so the process holds one ggml.
python -m pip install -q --no-build-isolation ".[test,server]" "$@"
echo "install.sh: done. Python: $(command -v python)" >&2
