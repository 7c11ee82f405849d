#!/usr/bin/env bash
# Lays out what a bare GPU machine needs and the device call carries (all git-ignored):
#   .whl-core   cffi, gguf and what they need, as wheels for the GPU machine's Python (3.12)
#   .whl        the server's stack (only with `full`; the GPU modes install both folders)
#   .dev/ggml   ggml's headers, libraries and CMake files, from this checkout's llama-cpp-python
#   .dev/lcp-cuda.tar.gz   the llama-cpp-python 0.3.36 sdist without models/docs/tests/examples/tools
#   .dev/m1, .dev/m2       the default model in two halves (each under the 64 MiB carry)
#   .dev/text   the shared text
# Run after ./install.sh:   python/gpu_prepare.sh [full]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
GPU_PY=3.12
mkdir -p .dev

download_wheels() {  # DEST PACKAGE...: wheels for the GPU machine, no dependency resolution here;
    # each at the version this checkout's environment holds (pyproject.toml's pins), else the newest
    local dest=$1 p v specs=(); shift
    for p in "$@"; do
        v=$("$PY" -c "import importlib.metadata as m; print(m.version('$p'))" 2>/dev/null) && specs+=("$p==$v") \
            || specs+=("$p")
    done
    mkdir -p "$dest"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PY" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --implementation cp -d "$dest" "${specs[@]}"
}
# (the GPU machine has scikit-build-core, numpy and jinja2; the carry of the first call is tight)
download_wheels .whl-core cffi pycparser gguf pyyaml diskcache typing_extensions tqdm
if [ "${1:-}" = full ]; then
    download_wheels .whl fastapi uvicorn sse-starlette starlette pydantic pydantic-core anyio sniffio \
        h11 idna annotated-types typing-inspection click openai httpx httpcore certifi distro jiter \
        pydantic-settings python-dotenv starlette-context
fi

site=$("$PY" -c "import importlib.util, os; print(os.path.dirname(os.path.dirname(importlib.util.find_spec('llama_cpp').origin)))")
rm -rf .dev/ggml && mkdir -p .dev/ggml/lib .dev/ggml/include
cp -a "$site"/include/ggml*.h "$site"/include/gguf.h .dev/ggml/include/ 2>/dev/null || cp -a "$site"/include/. .dev/ggml/include/
cp -a "$site"/lib/cmake .dev/ggml/lib/
# the link name CMake finds and the soname the loader asks for (a wheel holds three copies of each)
for f in "$site"/lib/libggml*.so; do cp "$f" "$f".0 .dev/ggml/lib/; done

if [ ! -f .dev/lcp-cuda.tar.gz ]; then
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" llama-cpp-python==0.3.36
    tar xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp"
    src=$tmp/llama_cpp_python-0.3.36
    lc=$src/vendor/llama.cpp
    rm -rf "$lc"/{models,docs,tests,examples,tools,benches,media,.git,.github} "$src"/{docs,tests,examples,.git} \
        "$lc"/vendor/miniaudio/miniaudio.h
    # the backends that a CUDA build leaves out (ggml_add_backend skips a disabled one's folder)
    for b in cann et hip metal musa virtgpu sycl vulkan webgpu zdnn opencl hexagon zendnn openvino; do
        rm -rf "$lc/ggml/src/ggml-$b"
    done
    tar czf .dev/lcp-cuda.tar.gz -C "$tmp" llama_cpp_python-0.3.36
    rm -rf "$tmp"
fi

model=$("$PY" -c "from ggml_rerope.default_model import default_model_path; print(default_model_path())")
rm -rf .dev/m1 .dev/m2 && mkdir -p .dev/m1 .dev/m2
half=$(( ($(stat -c %s "$model") + 1) / 2 ))
split -b "$half" -d "$model" .dev/m1/smol.part
mv .dev/m1/smol.part01 .dev/m2/

mkdir -p .dev/text && cp ../shared/data/war_and_peace.txt .dev/text/
du -sh .whl-core .dev/*
if [ "${1:-}" = full ]; then du -sh .whl; fi
