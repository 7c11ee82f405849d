"""Partial offload on a GPU: N of the L + 1 layers (llama.cpp's count: the output head first, then the
last layers) on the GPU, the rest on the CPU, one graph run in pieces per device with the activations
copied where the device changes (src/runtime/attn_outside.c).

Bound: our mixed run vs our CPU run no further apart than llama.cpp's own run at the same
n_gpu_layers vs its CPU run (same file, tokens and cache type; llama.cpp places the layers by the same
rule, so both compare the same placement). CPU checks of this path: tests/test_offload.py."""

from __future__ import annotations

import numpy as np
import pytest

import ggml_rerope
import gguf_factory
from ggml_rerope._internals import KV_TYPES, Runtime
from ggml_rerope.placement import memory_plan
from logit_checks import compare, llama_cpp_logits
from test_cuda_runtime import assert_within_gap

pytestmark = pytest.mark.needs_cuda_runtime

L = 4  # layers of the test model: n_gpu_layers 1 (head only), 2 (head + layer 3), 3 (head + layers 2, 3)


def ours(path, tokens, ngl, kv, n_seq=1):
    """All logits of tokens, one sequence; with n_seq 2, sequence s gets tokens rolled by s and the
    rows are those of sequence 0 then 1 (the prompt in one batch, both sequences together)."""
    n = len(tokens)
    with Runtime(path, n_ctx=n_seq * (n + 8), n_batch=64, type_k=KV_TYPES[kv], type_v=KV_TYPES[kv], n_gpu_layers=ngl,
                 n_seq_max=n_seq) as rt:
        rt.set_scheme(window=9, logn_train_len=64)
        toks = np.concatenate([np.roll(tokens, s) for s in range(n_seq)])
        out = rt.ctx.decode(toks, np.repeat(np.arange(n_seq), n), np.ones(toks.size))
        return out


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
@pytest.mark.parametrize("ngl", [1, L // 2, L - 1])
def test_partial_offload_within_llama_cpp_gap(tmp_path, ngl, kv):
    path = gguf_factory.write_model(tmp_path / "m.gguf", "qwen2", "Q8_0", seed=5, n_layer=L)
    tokens = np.random.default_rng(4).integers(3, gguf_factory.DEFAULT_SHAPE["n_vocab"], 160)
    lcpp_mixed = llama_cpp_logits(path, tokens, flash_attn=True, kv_type=KV_TYPES[kv], n_gpu_layers=ngl)
    floor = compare(lcpp_mixed, llama_cpp_logits(path, tokens, flash_attn=True, kv_type=KV_TYPES[kv]))
    assert floor["mean_abs"] > 0, "llama.cpp's mixed run computed nothing on the GPU: the bound would be void"
    for n_seq in (1, 2):
        cpu = ours(path, tokens, 0, kv, n_seq)
        mixed = ours(path, tokens, ngl, kv, n_seq)
        assert np.isfinite(mixed).all()
        assert_within_gap(mixed, cpu, floor, f"ngl {ngl} of {L + 1}, {kv}, {n_seq} sequence(s): ours mixed vs CPU")


def test_decode_steps_on_a_split_model_equal_one_prefill(tmp_path):
    """Decode steps cross the CPU -> GPU boundary once per token: prefill 100 + 10 steps = 110 in one go."""
    path = gguf_factory.write_model(tmp_path / "m.gguf", "llama", "F16", seed=6, n_layer=L)
    tokens = np.random.default_rng(8).integers(3, 384, 110)
    with Runtime(path, n_ctx=120, n_batch=64, n_gpu_layers=L // 2) as rt:
        rt.set_scheme(window=20, logn_train_len=64)
        full = rt.eval(tokens, all_logits=True)
        rt.truncate(0)
        rows = [rt.eval(tokens[:100], all_logits=True)]
        rows += [rt.eval(tokens[i:i + 1]).reshape(1, -1) for i in range(100, 110)]
    c = compare(np.concatenate(rows), full)
    assert c["rel_mean"] < 2e-3 and c["agree"][c["margin"] >= 0.05].all(), (c["rel_mean"], c["argmax"])


def test_gpu_too_small_for_its_share_names_the_device(tmp_path):
    path = gguf_factory.write_model(tmp_path / "m.gguf", seed=1, n_layer=L)
    with pytest.raises(ggml_rerope.OutOfMemoryError, match=r"CUDA0 cannot hold its share .*needed, \d+ bytes .*free"):
        Runtime(path, n_ctx=1 << 30, n_batch=64, n_gpu_layers=-1)


def test_verbose_plan_names_the_gpu(tmp_path, capfd):
    path = gguf_factory.write_model(tmp_path / "m.gguf", seed=1, n_layer=L)
    plan = memory_plan(path, n_ctx=256, n_gpu_layers=2)
    assert [d.name for d in plan] == ["CPU", "CUDA0"] and plan[1].layers == range(3, 4) and plan[1].has_output
    assert plan[1].free_bytes > 0 and plan[1].fits
    with ggml_rerope.Model(path, n_ctx=256, n_gpu_layers=2, verbose=True):
        pass
    assert "plan CUDA0: layers 3..3 + output head" in capfd.readouterr().err
