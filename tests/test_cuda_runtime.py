"""The runtime on the GPU (n_gpu_layers = -1): weights, KV cache and compute on the device, the
attention by our CUDA kernel between the graph's pieces (src/runtime/attn_outside.c).

Needs an NVIDIA GPU, libggml_rerope built with CUDA and llama-cpp-python built with
CMAKE_ARGS="-DGGML_CUDA=on"; otherwise skipped with that reason (the CPU check of the same
execution path is tests/test_runtime_outside.py).

Bounds: a GPU program is not the CPU's float program (ggml-cuda's matmuls round activations and
partial sums differently; our kernel rounds q and P to f16 for the tensor cores), so our GPU-vs-CPU
gap is bounded by llama.cpp's own GPU-vs-CPU gap on the same file and tokens, measured in the same
test, as tests/test_runtime_vs_llama_cpp.py does for flash attention on vs off.
"""

from __future__ import annotations

import numpy as np
import pytest

import gguf_factory
from ggml_rerope._internals import INT32_MAX, KV_F16, Runtime
from logit_checks import assert_within_llama_cpp_noise, compare, llama_cpp_logits, text_tokens

pytestmark = pytest.mark.needs_cuda_runtime


def ours(path, tokens, ngl, n_batch=64, **scheme):
    with Runtime(path, n_ctx=len(tokens) + 8, n_batch=n_batch, kv_type=KV_F16, n_gpu_layers=ngl) as rt:
        if scheme:
            rt.set_scheme(**scheme)
        return rt.eval(tokens, all_logits=True)


def assert_within_gap(got, ref, gap, label):
    """got vs ref no further apart than llama.cpp's own `gap` (compare() of two llama.cpp runs): mean |d|
    within 1.5x (+ 0.2% of the logits' spread); the same argmax on every row whose top-2 margin in ref
    exceeds twice llama.cpp's largest deviation; elsewhere (near-ties of a random model, where the flips
    of 160 rows are noise: 6 vs 2 seen between equal mean gaps) at most 5 points fewer agreeing rows."""
    c = compare(got, ref)
    clear = c["margin"] > 2 * gap["max_abs"]
    print(f"{label}: mean|d| {c['mean_abs']:.4g} (llama.cpp {gap['mean_abs']:.4g}), argmax {c['argmax']:.3f} "
          f"(llama.cpp {gap['argmax']:.3f}), {c['agree'][clear].sum()} of {clear.sum()} clear rows agree")
    assert c["mean_abs"] <= 1.5 * gap["mean_abs"] + 2e-3 * ref.std(), (c["mean_abs"], gap["mean_abs"])
    assert c["agree"][clear].all()
    assert c["argmax"] >= gap["argmax"] - 0.05


@pytest.mark.parametrize("arch, wtype", [("llama", "Q4_0"), ("qwen2", "Q8_0"), ("qwen3", "F16"), ("llama", "Q4_K")])
def test_gpu_matches_cpu_within_llama_cpp_gpu_cpu_gap(tmp_path, arch, wtype):
    path = gguf_factory.write_model(tmp_path / "m.gguf", arch, wtype, seed=5)
    tokens = np.random.default_rng(4).integers(3, gguf_factory.DEFAULT_SHAPE["n_vocab"], 160)
    lcpp_gpu = llama_cpp_logits(path, tokens, flash_attn=True, kv_type=KV_F16, n_gpu_layers=-1)
    floor = compare(lcpp_gpu, llama_cpp_logits(path, tokens, flash_attn=True, kv_type=KV_F16))
    assert floor["mean_abs"] > 0, "llama.cpp's 'CPU' run used the GPU: the bound would be void"
    for scheme in (dict(window=INT32_MAX, logn_train_len=0), dict(window=9, logn_train_len=64)):
        cpu = ours(path, tokens, 0, **scheme)
        gpu = ours(path, tokens, -1, **scheme)
        assert np.isfinite(gpu).all()
        assert_within_gap(gpu, cpu, floor, f"{arch} {wtype} {scheme}: ours GPU vs CPU")
        if scheme["window"] == INT32_MAX:  # plain RoPE: the same model as llama.cpp's, on the same GPU
            alt = llama_cpp_logits(path, tokens, flash_attn=False, kv_type=KV_F16, n_gpu_layers=-1)
            assert_within_gap(gpu, lcpp_gpu, compare(alt, lcpp_gpu), "  ours GPU vs llama.cpp CUDA (FA on/off gap)")


def test_gpu_decode_after_prefill_equals_one_prefill(tmp_path):
    """Prefill 150 then decode 10 one by one (decode kernel) = the same 160 tokens in one prefill,
    with the window (20) far below the length: near, far and mixed tiles on both kernels."""
    path = gguf_factory.write_model(tmp_path / "m.gguf", "qwen2", "F16", seed=6)
    tokens = np.random.default_rng(8).integers(3, 384, 160)
    full = ours(path, tokens, -1, window=20, logn_train_len=64)
    with Runtime(path, n_ctx=170, n_batch=64, n_gpu_layers=-1) as rt:
        rt.set_scheme(window=20, logn_train_len=64)
        rows = [rt.eval(tokens[:150], all_logits=True)]
        rows += [rt.eval(tokens[i:i + 1]).reshape(1, -1) for i in range(150, 160)]
        assert rt.n_past == 160
    step = np.concatenate(rows)
    c = compare(step, full)
    assert c["rel_mean"] < 2e-3 and c["agree"][c["margin"] >= 0.05].all(), (c["rel_mean"], c["argmax"])


def test_smollm2_gpu_matches_llama_cpp_cuda(default_model_file, shared_text):
    """SmolLM2 (head size 64), 1000 tokens, window covering them: ours on the GPU vs llama.cpp CUDA
    with flash attention, bounded by llama.cpp CUDA's own flash-attention on/off gap."""
    path = default_model_file
    tokens = text_tokens(path, shared_text, 1000)
    ref = llama_cpp_logits(path, tokens, flash_attn=True, kv_type=KV_F16, n_gpu_layers=-1)
    alt = llama_cpp_logits(path, tokens, flash_attn=False, kv_type=KV_F16, n_gpu_layers=-1)
    got = ours(path, tokens, -1, n_batch=512, window=INT32_MAX, logn_train_len=0)
    assert_within_llama_cpp_noise(got, ref, alt, "SmolLM2 on the GPU vs llama.cpp CUDA")
