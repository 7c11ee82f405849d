#!/usr/bin/env bash
# The one script a GPU machine runs: build the library with CUDA, verify the kernels
# (tests/test_cuda.py), benchmark them (python/bench_cuda_attention.py). Logs go to $OUT
# (the device tool brings that folder back).
#
#   python/gpu_run.sh smoke|test|bench|decode-variants|decode-waves|ncu-decode|model|full|all
#
#   python/gpu_run.sh lcp-cuda   (returns at once), then   python/gpu_run.sh runtime
#   kv-quality | gpu-server | cpu-server: cache-type losses, the server benchmark on the GPU / 2 pinned cores
#   quality | longrope: a slice of the quality report / of LongRoPE's search on the GPU (resumable)
#
# model: end to end (python/bench_gpu_model.py), ours vs llama.cpp CUDA with flash attention on a
# random-weight Llama-3-8B-shaped Q4_0 GGUF written on the machine (/tmp, about 4.5 GB), prefill and
# decode tok/s at 8k and 32k. It needs gguf (.whl-core) and a CUDA build of llama-cpp-python: `lcp-cuda`
# builds one from .dev/lcp-cuda.tar.gz in the background, `runtime` (a later call) waits for it,
# builds the library against it and runs the GPU runtime tests and this benchmark. The SmolLM2
# test needs the model: GGML_REROPE_TEST_MODEL=<path> (it travels in parts), GGML_REROPE_TEST_TEXT.
#
# The machine is bare: ggml's headers and libraries travel in .dev/ggml (copied from
# llama-cpp-python's site-packages), cffi, gguf and their needs as wheels in .whl-core (the server's
# stack in .whl); python/gpu_prepare.sh lays them out; they are git-ignored and named in `carry`.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-full}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_run_$MODE.log"
exec > >(tee "$LOG") 2>&1
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package from this checkout

echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) mode=$MODE"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
nvcc --version | tail -1
python3 --version

# .whl-core: cffi, gguf and their needs (every mode); .whl: the server's stack (gpu-server, cpu-server)
wheels=$(ls .whl/*.whl .whl-core/*.whl 2>/dev/null | awk -F/ '!seen[$NF]++')  # a wheel in both: once
if [ -n "$wheels" ]; then
    # shellcheck disable=SC2086  # one path per word
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}  # installed by an earlier call too

GGML_DIR_ARG=()
[ -d .dev/ggml/lib/cmake/ggml ] && GGML_DIR_ARG=(-Dggml_DIR="$PWD/.dev/ggml/lib/cmake/ggml")
BUILD=${BUILD_DIR:-/tmp/build-gpu}  # outside the tree, which is laid anew each call

lcp_start() {  # KIND CMAKE_ARGS: llama-cpp-python 0.3.36 built in the background into /tmp/site-KIND
    # .dev/lcp-cuda.tar.gz: the 0.3.36 sdist without models/docs/tests/examples/tools, ggml-cuda kept (4 MB)
    [ -f "/tmp/dev/lcp_$1_done" ] && return 0
    mkdir -p /tmp/dev && { [ -d /tmp/dev/llama_cpp_python-0.3.36 ] || tar xzf .dev/lcp-cuda.tar.gz -C /tmp/dev; } || exit 1
    cat > "/tmp/dev/build_lcp_$1.sh" <<EOB
t0=\$(date +%s); cd /tmp/dev/llama_cpp_python-0.3.36 || exit 1
CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON $2" \\
  CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install -v --no-build-isolation --no-deps --no-cache-dir --target /tmp/site-$1 . \\
  > /tmp/dev/lcp_$1_build.log 2>&1
echo "rc=\$? after \$(( \$(date +%s) - t0 )) s" > /tmp/dev/lcp_$1_done
EOB
    setsid nohup bash "/tmp/dev/build_lcp_$1.sh" >/dev/null 2>&1 </dev/null &
    echo "llama-cpp-python ($1) build started in the background (log /tmp/dev/lcp_$1_build.log)"
}

lcp_wait() {  # KIND: waits for lcp_start's build; then its ggml is the one we link and load
    for _ in $(seq 1 108); do [ -f "/tmp/dev/lcp_$1_done" ] && break; sleep 5; done
    cat "/tmp/dev/lcp_$1_done" 2>/dev/null || { echo "llama-cpp-python build not finished"; tail -5 "/tmp/dev/lcp_$1_build.log"; exit 1; }
    grep -q "rc=0" "/tmp/dev/lcp_$1_done" || { tail -30 "/tmp/dev/lcp_$1_build.log"; exit 1; }
    GGML_DIR_ARG=(-Dggml_DIR="$(dirname "$(find "/tmp/site-$1" -name ggml-config.cmake | head -1)")")
    export PYTHONPATH="/tmp/site-$1:$PYTHONPATH" LD_LIBRARY_PATH="/tmp/site-$1/llama_cpp/lib"
    # libggml carries pieces of std::regex; python3 loads no libstdc++ of its own (crashed without this)
    export LD_PRELOAD=$(ldconfig -p | grep 'libstdc++.so.6 ' | head -1 | awk '{print $NF}')
}
lcp_cuda_start() { lcp_start cuda "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90"; }
lcp_cuda_wait() { lcp_wait cuda; }

build_lib() {  # the library (CUDA=ON, sm_90, unless CUDA=OFF) in $BUILD against the chosen ggml
    echo "== build ($BUILD)"
    if [ "${REUSE_BUILD:-0}" = 1 ] && [ -f "$BUILD/src/libggml_rerope.so" ]; then  # a warm machine, the same commit
        export GGML_REROPE_LIBRARY="$BUILD/src/libggml_rerope.so"; echo "reusing $GGML_REROPE_LIBRARY"; return 0
    fi
    [ -f /tmp/dev/build_lcp_cuda.sh ] && [ ${#GGML_DIR_ARG[@]} -eq 0 ] && lcp_cuda_wait
    cmake -S . -B "$BUILD" -G Ninja -DGGML_REROPE_CUDA="${CUDA:-ON}" -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_REROPE_BUILD_TESTS=OFF \
        "${GGML_DIR_ARG[@]}" >"$OUT/cmake_configure.log" 2>&1 || { tail -30 "$OUT/cmake_configure.log"; exit 1; }
    cmake --build "$BUILD" -j 16 >"$OUT/cmake_build.log" 2>&1 || { tail -40 "$OUT/cmake_build.log"; exit 1; }
    export GGML_REROPE_LIBRARY="$BUILD/src/libggml_rerope.so"
    python3 -c "from ggml_rerope import _binding as b; print('cuda_available =', b.lib.ggml_rerope_cuda_available())"
}

rc=0
decode_variant() {  # BUILD_DIR CUDA_FLAG JSON: the decode tests and benchmark of a build with one more -D flag
    cmake -S . -B "$1" -G Ninja -DGGML_REROPE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_REROPE_BUILD_TESTS=OFF \
        -DCMAKE_CUDA_FLAGS="$2" "${GGML_DIR_ARG[@]}" >/dev/null && cmake --build "$1" -j 16 >/dev/null || exit 1
    GGML_REROPE_LIBRARY="$PWD/$1/src/libggml_rerope.so" python3 -m pytest -q tests/test_cuda.py -k decode || rc=1
    GGML_REROPE_LIBRARY="$PWD/$1/src/libggml_rerope.so" \
        python3 python/bench_cuda_attention.py --prefill "" --profile --json "$OUT/$3" || rc=1
}
case "$MODE" in lcp-cuda|kernels|first-call|runtime|fuzz|lcp-cpu|cpu-model|cpu-server|oneshot|cache-*|diag-seq|quality|longrope|profile) ;; *) build_lib ;; esac
case "$MODE" in
    smoke)
        python3 -m pytest -x -q -rs tests/test_cuda.py \
            -k "(prefill_vs_reference and 65-4-4-128) or (decode_vs_reference and 2000 and n_q1) or custom" || rc=1
        ;;
    test)
        python3 -m pytest -q -rs tests/test_cuda.py || rc=1
        ;;
    bench)
        python3 python/bench_cuda_attention.py --json "$OUT/bench.json" || rc=1
        ;;
    decode-variants)  # tensor-core decode ring depth: 2 stages (default, 2 blocks/SM) against 4 (1 block/SM)
        python3 python/bench_cuda_attention.py --prefill "" --profile --json "$OUT/bench_decode_stages2.json" || rc=1
        decode_variant build-gpu-st4 -DGGML_REROPE_DECODE_MMA_STAGES=4 bench_decode_stages4.json
        ;;
    decode-waves)  # tensor-core decode block count: one wave (default) against two
        python3 python/bench_cuda_attention.py --prefill "" --profile --json "$OUT/bench_decode_waves1.json" || rc=1
        decode_variant build-gpu-w2 -DGGML_REROPE_DECODE_MMA_WAVES=2 bench_decode_waves2.json
        ;;
    ncu-decode)  # Nsight Compute sections of one decode launch (n_kv = 131072, f16 K/V: the tensor-core kernel)
        ncu --kernel-name regex:decode_mma_kernel --launch-skip 12 --launch-count 1 \
            --section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats \
            --section WarpStateStats --section MemoryWorkloadAnalysis --section InstructionStats \
            python3 python/bench_cuda_attention.py --prefill "" --decode 131072 >"$OUT/ncu_decode.txt" 2>&1 || rc=1
        grep -vE "^\{|^\||^copy" "$OUT/ncu_decode.txt" | grep -E "[A-Za-z]" | head -150
        ;;
    lcp-cuda)  # starts the background build and returns; a later mode waits for it
        lcp_cuda_start
        ;;
    kernels)  # one call: the ggml-cuda build in the background, then the kernel tests against its ggml
        lcp_cuda_start; build_lib
        python3 -m pytest -q -rs tests/test_cuda.py tests/test_cuda_quant.py 2>&1 | tee "$OUT/kernel_tests.log" || rc=1
        ;;
    runtime)  # our library against the ggml-cuda build; GPU runtime tests (logits vs CPU and llama.cpp CUDA), model bench
        build_lib
        python3 -m pytest -q -rs -s tests/test_cuda_runtime.py tests/test_runtime_outside.py ${RUNTIME_TESTS:-} 2>&1 \
            | tee "$OUT/runtime_tests.log" || rc=1
        if [ "${RUNTIME_BENCH:-1}" = 1 ]; then  # RUNTIME_BENCH=0: the tests alone
            python3 python/bench_gpu_model.py --out /tmp/llama3-8b-random-q4_0.gguf --json "$OUT/bench_model.json" || rc=1
        fi
        ;;
    fuzz)  # the loader fuzzer on the host's cores: FUZZ_CASES of each kind, plain and ASan/UBSan builds
        [ -f /tmp/dev/build_lcp_cuda.sh ] && lcp_cuda_wait
        # CPU only (children are forked from a warm parent: no CUDA in them); CUDA's driver needs the shadow gap
        export CUDA_VISIBLE_DEVICES="" ASAN_OPTIONS=protect_shadow_gap=0:detect_leaks=0
        for build in plain asan; do
            flag=(); [ $build = asan ] && flag=(--asan)
            PYTHON=python3 tests/fuzz/run_fuzz.sh --kind both --cases "${FUZZ_CASES:-100000}" --jobs 16 "${flag[@]}" \
                --build-dir "/tmp/fuzz-$build" --crash-dir "$OUT/crashes-$build" 2>&1 | tee "$OUT/fuzz_$build.log" || rc=1
        done
        ;;
    lcp-cpu)  # llama-cpp-python CPU only (AVX2 / AVX-512 on, AMX off, as a 2-core desktop), in the background
        lcp_start cpu "-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
        ;;
    cpu-model)  # the CPU runtime benchmark on 2 pinned cores against that build: CPU_CTX contexts, one at a time
        lcp_wait cpu
        CUDA=OFF BUILD=/tmp/build-cpu build_lib
        export CUDA_VISIBLE_DEVICES=""
        for n in ${CPU_CTX:-2048 8192}; do
            taskset -c 2,3 python3 -m ggml_rerope.bench model "$GGML_REROPE_TEST_MODEL" --ctx "$n" --vs-llama-cpp --threads 2 \
                --repeats "${CPU_REPEATS:-3}" --no-rss --json --text "$GGML_REROPE_TEST_TEXT" > "$OUT/cpu_model_ctx$n.json" || rc=1
        done
        ;;
    kv-quality)  # loss per cache type at 16k / 32k on the GPU: ours (ReRoPE default) and llama.cpp (YaRN)
        for n in ${KVQ_CTX:-16384 32768}; do for t in f16 q8_0 q4_0; do
            for e in ggml-rerope llama.cpp; do
                sch=(); [ $e = llama.cpp ] && sch=(--rope-scaling yarn)
                printf '{"engine": "%s", "ctx": %s, "cache": "%s", "result": ' $e $n $t >> "$OUT/kv_quality.jsonl"
                python3 -m ggml_rerope.perplexity "$GGML_REROPE_TEST_MODEL" "$GGML_REROPE_TEST_TEXT" --ctx $n --json \
                    --no-progress -ngl -1 --engine $e "${sch[@]}" -ctk $t -ctv $t >> "$OUT/kv_quality.jsonl" || rc=1
                echo "}" >> "$OUT/kv_quality.jsonl"
            done
        done; done
        cut -c1-160 "$OUT/kv_quality.jsonl"
        python3 -m ggml_rerope.bench kv-decode "$GGML_REROPE_TEST_MODEL" --ctx 32768 -ngl -1 --json \
            > "$OUT/kv_decode_gpu.json" || rc=1
        ;;
    oneshot)  # what one short call can do, most needed first: the ggml-cuda build and the 8B-shaped model in
        # the background, then several sequences on the GPU, the server benchmark (1..8 clients), partial offload
        lcp_cuda_start
        (python3 -c "from ggml_rerope.bench.random_llama_gguf import ensure_model as e; e('/tmp/llama3-8b-random-q4_0.gguf')" \
            > "$OUT/model_write.log" 2>&1; echo "written rc=$?" >> "$OUT/model_write.log") &
        writer=$!
        build_lib
        python3 -m pytest -q -rs tests/test_multi_sequence.py -k gpu 2>&1 | tee "$OUT/multi_sequence_gpu.log" || rc=1
        wait "$writer"  # that job only: a bare `wait` also waits for the log's tee, which never ends
        cat "$OUT/model_write.log"
        timeout 150 python3 -m ggml_rerope.bench server --model /tmp/llama3-8b-random-q4_0.gguf -ngl -1 --clients 1,2,4,8 \
            --max-tokens 32 --requests-per-client 1 -c 2048 --endpoint completion --no-peer --json "$OUT/server_gpu.json" \
            2>&1 | tee "$OUT/server_gpu.log" || rc=1
        python3 -m pytest -q -rs tests/test_cuda_offload.py 2>&1 | tee "$OUT/offload_gpu.log" || rc=1
        ;;
    cache-a)  # the cache issue's first call: the ggml-cuda build and the 8B-shaped model in the background, the
        # rotated-key kernel tests against .dev/ggml meanwhile; then, against the ggml-cuda build, the GPU runtime
        # tests and the 8B-shaped model at 32k with f16 and q8_0 caches, both engines
        lcp_cuda_start
        (python3 -c "from ggml_rerope.bench.random_llama_gguf import ensure_model as e; e('/tmp/llama3-8b-random-q4_0.gguf')" \
            > "$OUT/model_write.log" 2>&1; echo "written rc=$?" >> "$OUT/model_write.log") &
        writer=$!
        BUILD=/tmp/build-kernels build_lib
        python3 -m pytest -q -rs tests/test_cuda_hadamard.py 2>&1 | tail -8 | tee "$OUT/kernel_tests.log" || rc=1
        lcp_cuda_wait; build_lib
        python3 -m pytest -q -rs tests/test_cuda_offload.py tests/test_multi_sequence.py -k "gpu or cuda or offload" 2>&1 \
            | tail -25 | tee "$OUT/runtime_gpu_tests.log" || rc=1
        wait "$writer"; cat "$OUT/model_write.log"
        for t in f16 q8_0; do
            python3 python/bench_gpu_model.py --out /tmp/llama3-8b-random-q4_0.gguf --contexts 32768 -ctk $t -ctv $t \
                --json "$OUT/bench_model_32k_$t.json" 2>&1 | tail -6 || rc=1
        done
        ;;
    cache-b)  # second call (the default model in GGML_REROPE_TEST_MODEL): the GPU runtime vs llama.cpp CUDA logits,
        # losses per cache type at 16k / 32k, decode at 32k per type (rows rotated and not), -ngl 24 on the 8B shape
        lcp_cuda_wait; build_lib
        python3 -m pytest -q -rs tests/test_cuda_runtime.py 2>&1 | tail -6 | tee "$OUT/cuda_runtime.log" || rc=1
        "$0" kv-quality || rc=1
        GGML_REROPE_ATTN_ROT_DISABLE=1 python3 -m ggml_rerope.bench kv-decode "$GGML_REROPE_TEST_MODEL" --ctx 32768 -ngl -1 \
            --json > "$OUT/kv_decode_gpu_unrotated.json" || rc=1
        python3 python/bench_gpu_model.py --out /tmp/llama3-8b-random-q4_0.gguf --contexts 8192 --ngl 24 \
            --json "$OUT/bench_model_ngl24.json" 2>&1 | tail -6 || rc=1
        ;;
    cache-c)  # third call: fit_table's rows checked on the GPU, both models, both engines
        lcp_cuda_wait; build_lib
        timeout 200 python3 python/fit_check.py /tmp/llama3-8b-random-q4_0.gguf --json "$OUT/fit_check_8b.json" || rc=1
        timeout 150 python3 python/fit_check.py "$GGML_REROPE_TEST_MODEL" --json "$OUT/fit_check_smol.json" || rc=1
        ;;
    cache-d)  # one fresh call: the GPU runtime tests, then the 8B-shaped model at 32k with f16 / q8_0 caches (both
        # engines; q8_0 with rows unrotated too), then fit_table's rows of that model checked, as long as time lasts
        lcp_cuda_start
        (python3 -c "from ggml_rerope.bench.random_llama_gguf import ensure_model as e; e('/tmp/llama3-8b-random-q4_0.gguf')" \
            > "$OUT/model_write.log" 2>&1; echo "written rc=$?" >> "$OUT/model_write.log") &
        writer=$!
        lcp_cuda_wait; build_lib
        python3 -m pytest -q -rs tests/test_cuda_offload.py tests/test_multi_sequence.py -k "gpu or cuda or offload" 2>&1 \
            | grep -v warmup | tail -12 | tee "$OUT/runtime_gpu_tests.log" || rc=1
        wait "$writer"; cat "$OUT/model_write.log"
        M8=/tmp/llama3-8b-random-q4_0.gguf
        for t in q8_0 f16; do
            python3 python/bench_gpu_model.py --out $M8 --contexts 32768 -ctk $t -ctv $t --json "$OUT/bench_model_32k_$t.json" \
                2>&1 | grep -v warmup | tail -4 || rc=1
        done
        GGML_REROPE_ATTN_ROT_DISABLE=1 python3 python/bench_gpu_model.py --out $M8 --contexts 32768 -ctk q8_0 -ctv q8_0 \
            --engines ours --json "$OUT/bench_model_32k_q8_0_unrotated.json" 2>&1 | grep -v warmup | tail -3 || rc=1
        timeout 300 python3 python/fit_check.py $M8 --gib 24,8 --json "$OUT/fit_check_8b.json" | tee "$OUT/fit_check_8b.jsonl" || rc=1
        ;;
    first-call)  # a fresh machine's first call: every CUDA kernel test against .dev/ggml while ggml-cuda builds and the
        # 8B-shaped model is written, the default model's first half kept for the next call, the decode kernels per cache
        # type (keys rotated as the runtime stores them), then the GPU runtime tests of several sequences (diag-seq if
        # they fail) and the 8B-shaped model at 32k with q8_0 (both engines) and f16 caches, while time lasts
        lcp_cuda_start
        [ -d .dev/m1 ] && mkdir -p /tmp/m && cp .dev/m1/* /tmp/m/
        M8=/tmp/llama3-8b-random-q4_0.gguf
        (python3 -c "from ggml_rerope.bench.random_llama_gguf import ensure_model as e; e('$M8')" \
            > "$OUT/model_write.log" 2>&1; echo "written rc=$?" >> "$OUT/model_write.log") &
        writer=$!
        BUILD=/tmp/build-kernels build_lib
        timeout 240 python3 -m pytest -q tests/test_cuda.py tests/test_cuda_quant.py tests/test_cuda_hadamard.py 2>&1 \
            | grep -E "passed|failed|FAILED|Error" | tail -25 || rc=1
        for h in 128 0; do  # keys rotated as the runtime stores them, and not: the in-tile undo's cost
            timeout 60 python3 python/bench_cuda_attention.py --prefill "" --decode 32768 --kv-type f16,q8_0,q4_0 \
                --k-hadamard $h 2>&1 | tail -5 || rc=1
        done
        lcp_cuda_wait; build_lib
        [ "${MODEL_BENCH:-1}" = 1 ] || { wait "$writer"; echo "== done rc=$rc (MODEL_BENCH=0: no sequences / 8B run)"; exit $rc; }
        if ! timeout 120 python3 -m pytest -q -rs tests/test_multi_sequence.py -k gpu 2>&1 | tail -8; then
            rc=1; timeout 120 python3 python/diag_sequences_gpu.py 2>&1 | grep -v warmup
        fi
        wait "$writer"; cat "$OUT/model_write.log"
        if [ "${PROFILE:-0}" = 1 ]; then  # the breakdown of one decode step and one micro-batch, both engines
            timeout 150 python3 python/profile_gpu_step.py --out $M8 --contexts 8192,32768 \
                --json "$OUT/profile_gpu_step.json" 2>&1 | grep -v warmup | tail -12 || rc=1
        fi
        for t in q8_0 f16; do
            [ "$SECONDS" -lt 470 ] || { echo "skipped: 8B at 32k with $t (time)"; continue; }
            engines=ours,llama.cpp; [ $t = f16 ] && engines=ours
            timeout $((580 - SECONDS)) python3 python/bench_gpu_model.py --out $M8 --contexts 32768 -ctk $t -ctv $t \
                --engines $engines --json "$OUT/bench_model_32k_$t.json" 2>&1 | grep -v warmup | tail -4 || rc=1
        done
        ;;
    diag-seq)  # sequences together vs alone, teacher-forced logits, rotated caches and not (one fresh call, ~6 min)
        lcp_cuda_start; lcp_cuda_wait; build_lib
        python3 python/diag_sequences_gpu.py 2>&1 | grep -v warmup || rc=1
        GGML_REROPE_ATTN_ROT_DISABLE=1 python3 python/diag_sequences_gpu.py --types q8_0 2>&1 | grep -v warmup || rc=1
        ;;
    quality)  # the long-context quality report on the GPU (-ngl -1), one resumable slice: QUALITY_ARGS picks the
        # measures / schemes / contexts, QUALITY_BUDGET the seconds after which no new job starts, QUALITY_BATCH the batch. The cache
        # (docs/quality/cache_v2.jsonl and its _nll folder) travels with the tree and comes back as one tarball:
        # unpack it into the checkout before the next call (tar xzf quality_cache.tgz).
        lcp_cuda_start; lcp_cuda_wait; build_lib
        [ -f /tmp/quality_cache.tgz ] && tar xzf /tmp/quality_cache.tgz  # a warm machine's cache is the newest
        if [ "${QUALITY_TESTS:-1}" = 1 ]; then
            python3 -m pytest -q tests/test_cuda.py -k "chunk or sliding" 2>&1 | tail -3 || rc=1
        fi
        # shellcheck disable=SC2086  # QUALITY_ARGS is a list of flags
        python3 python/quality_report.py --model "$GGML_REROPE_TEST_MODEL" --text "$GGML_REROPE_TEST_TEXT" -ngl -1 \
            --batch "${QUALITY_BATCH:-2048}" --time-budget "${QUALITY_BUDGET:-400}" --no-render --no-progress ${QUALITY_ARGS:-} \
            ${QUALITY_SCHEMES:+--schemes "$QUALITY_SCHEMES"} 2>&1 \
            | grep -v warmup | tail -25 || rc=1
        tar czf /tmp/quality_cache.tgz docs/quality/cache_v2.jsonl docs/quality/cache_v2_nll 2>/dev/null \
            && cp /tmp/quality_cache.tgz "$OUT/"
        ;;
    longrope)  # LongRoPE's search for the default model on the GPU at LR_CTX tokens (default 65536), one resumable
        # slice of at most LR_SECONDS (default 480). The state lives in /tmp/longrope on a warm machine, else starts from
        # docs/quality/longrope (the committed state of an earlier slice); the factors, log and state come back in $OUT.
        lcp_cuda_start; lcp_cuda_wait; build_lib
        LR=/tmp/longrope; LR_CTX=${LR_CTX:-65536}; NAME=longrope_$((LR_CTX / 1024))k; mkdir -p $LR
        [ -f $LR/$NAME.state.json ] || cp docs/quality/longrope/$NAME.* $LR/ 2>/dev/null
        # shellcheck disable=SC2086  # LR_ARGS is a list of flags
        timeout -s INT "${LR_SECONDS:-480}" python3 -m ggml_rerope.longrope_search "$GGML_REROPE_TEST_MODEL" \
            "$GGML_REROPE_TEST_TEXT" --target-ctx "$LR_CTX" -ngl -1 --batch 2048 --calib-windows 1 --score-last 4096 \
            --population 24 --parents 12 --generations "${LR_GENERATIONS:-16}" --seed 0 --no-progress ${LR_ARGS:-} \
            --out $LR/$NAME.json 2>&1 | grep -v warmup | tail -5
        grep '"event": "generation"' $LR/$NAME.jsonl | cut -c1-200 | tail -20
        cp $LR/$NAME.* "$OUT/"
        ;;
    profile)  # python/profile_gpu_step.py: where a decode step and a prefill micro-batch go, ours and llama.cpp, at
        # PROFILE_CTX (default 8k and 32k) on the 8B-shaped model (written here when missing)
        lcp_cuda_start; lcp_cuda_wait; build_lib
        python3 python/profile_gpu_step.py --out /tmp/llama3-8b-random-q4_0.gguf --contexts "${PROFILE_CTX:-8192,32768}" \
            --json "$OUT/profile_gpu_step.json" 2>&1 | grep -v warmup | tail -20 || rc=1
        ;;
    gpu-server)  # the server benchmark on the GPU (-ngl -1): SERVER_MODEL (default: the 8B-shaped random model)
        [ -f /tmp/dev/build_lcp_cuda.sh ] && lcp_cuda_wait
        python3 -m ggml_rerope.bench server --model "${SERVER_MODEL:-/tmp/llama3-8b-random-q4_0.gguf}" -ngl -1 \
            --clients 1,2,4,8 --max-tokens "${SERVER_TOKENS:-64}" --requests-per-client 2 -c 4096 --endpoint completion \
            ${SERVER_PEER:---no-peer} --json "$OUT/server_gpu.json" || rc=1
        ;;
    cpu-server)  # the server benchmark on 2 pinned cores, ours vs llama-cpp-python's server (CUDA hidden)
        [ -f /tmp/dev/build_lcp_cuda.sh ] && lcp_cuda_wait
        build_lib  # the CUDA build runs on the CPU alone when no device is visible
        CUDA_VISIBLE_DEVICES="" taskset -c 2,3 python3 -m ggml_rerope.bench server --model "$GGML_REROPE_TEST_MODEL" \
            -t 2 --clients 1,2,4,8 --max-tokens 64 --requests-per-client 2 -c 2048 --peer \
            --json "$OUT/server_cpu.json" || rc=1
        CUDA_VISIBLE_DEVICES="" taskset -c 2,3 python3 -m ggml_rerope.bench kv-decode "$GGML_REROPE_TEST_MODEL" \
            --ctx 32768 --threads 2 --json > "$OUT/kv_decode_cpu.json" || rc=1
        ;;
    model)
        python3 python/bench_gpu_model.py --out /tmp/llama3-8b-random-q4_0.gguf --json "$OUT/bench_model.json" || rc=1
        ;;
    all)  # the whole GPU check in one command (~11 min on an H100: more than one 10-minute device
        # call, so run it there as `lcp-cuda` + `full`, then `runtime`)
        "$0" lcp-cuda && "$0" full && "$0" runtime || rc=1
        ;;
    full)
        python3 -m pytest -q -rs tests/test_cuda.py 2>&1 | tee "$OUT/verify.log" || rc=1
        python3 python/bench_cuda_attention.py --profile --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" || rc=1
        ;;
esac
echo "== done rc=$rc $(date -u +%H:%M:%SZ)"
exit $rc
