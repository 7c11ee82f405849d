"""ReRoPE with w < n inside the runtime: token-by-token decode after a prefill, chunked prefill and
truncate-and-continue all equal one eval of the whole sequence (all logits).

These compare our graph with itself, so only float summation order differs (the operator's decode
path splits the keys across threads, prefill tiles them): F32 weights agree to ~1e-6 relative, and
the bound is 1e-4 of the logits' std. With Q4_0 (repacked, gemv vs gemm kernels, activations quantized
per row in both) the same holds up to one-step 8-bit activation rounding flips: bound 1e-2 of the std
(mean) — still far below what a changed context or window gives, which the last test checks."""

from __future__ import annotations

import numpy as np
import pytest

import gguf_factory
from ggml_rerope._internals import KV_F16, KV_F32, Runtime

SCHEMES = {
    "rerope-w16-logn": dict(window=16, logn_train_len=32),  # log-n scaling active past position 31
    "leaky-w8-k4": dict(window=8, far_mode=1, leaky_k=4.0, logn_train_len=0),
    "dual-chunk-12-8": dict(window=12, far_mode=3, chunk_len=8, logn_train_len=32),
    "lambda-16-sinks-3": dict(window=16, sliding_window=16, sink_tokens=3, logn_train_len=0),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("dec")
    return {
        "qwen3_F32": gguf_factory.write_model(d / "q3.gguf", "qwen3", "F32", seed=3),
        "llama_Q4_0": gguf_factory.write_model(d / "l.gguf", "llama", "Q4_0", seed=4),
    }


def full(path, tokens, scheme, kv_type, n_batch=512):
    with Runtime(path, n_ctx=len(tokens) + 4, n_batch=n_batch, kv_type=kv_type) as rt:
        rt.set_scheme(**scheme)
        return rt.eval(tokens, all_logits=True)


def bound(model):
    return (1e-4, 1e-3) if model.endswith("F32") else (1e-2, 0.2)  # (mean, max) relative to the std


@pytest.mark.parametrize("scheme", SCHEMES, ids=list(SCHEMES))
@pytest.mark.parametrize("model", ["qwen3_F32", "llama_Q4_0"])
@pytest.mark.parametrize("kv_type", [KV_F16, KV_F32], ids=["f16", "f32"])
def test_decode_after_prefill_equals_full_eval(models, model, scheme, kv_type):
    tokens = np.random.default_rng(5).integers(3, 384, 100)
    ref = full(models[model], tokens, SCHEMES[scheme], kv_type)
    with Runtime(models[model], n_ctx=104, kv_type=kv_type) as rt:
        rt.set_scheme(**SCHEMES[scheme])
        rows = [rt.eval(tokens[:40])]
        rows += [rt.eval(tokens[i : i + 1]) for i in range(40, 100)]
        assert rt.n_past == 100
    dec = np.stack(rows)
    d = np.abs(dec - ref[39:])
    mean_b, max_b = bound(model)
    assert d.mean() < mean_b * ref.std() and d.max() < max_b * ref.std(), (d.mean(), d.max(), ref.std())
    assert (dec.argmax(1) == ref[39:].argmax(1)).mean() >= 0.98


@pytest.mark.parametrize("model", ["qwen3_F32", "llama_Q4_0"])
def test_chunked_prefill_equals_one_shot(models, model):
    tokens = np.random.default_rng(6).integers(3, 384, 150)
    scheme = SCHEMES["rerope-w16-logn"]
    one = full(models[model], tokens, scheme, KV_F16, n_batch=512)
    chunked = full(models[model], tokens, scheme, KV_F16, n_batch=37)
    d = np.abs(one - chunked)
    mean_b, max_b = bound(model)
    assert d.mean() < mean_b * one.std() and d.max() < max_b * one.std()


def test_truncate_then_continue_equals_full_eval(models):
    tokens = np.random.default_rng(7).integers(3, 384, 90)
    other = np.random.default_rng(8).integers(3, 384, 30)
    scheme = SCHEMES["rerope-w16-logn"]
    ref = full(models["qwen3_F32"], tokens, scheme, KV_F16)
    with Runtime(models["qwen3_F32"], n_ctx=128) as rt:
        rt.set_scheme(**scheme)
        rt.eval(np.concatenate([tokens[:60], other]))  # a different continuation, then dropped
        rt.truncate(60)
        assert rt.n_past == 60
        cont = rt.eval(tokens[60:], all_logits=True)
    np.testing.assert_allclose(cont, ref[60:], rtol=0, atol=1e-3 * ref.std())


def test_positions_matter(models):
    """The bounds above are meaningful: one extra prefix token, or another window, changes the logits
    by far more than they allow."""
    tokens = np.random.default_rng(9).integers(3, 384, 80)
    scheme = SCHEMES["rerope-w16-logn"]
    a = full(models["qwen3_F32"], tokens, scheme, KV_F16)
    b = full(models["qwen3_F32"], np.concatenate([[5], tokens]), scheme, KV_F16)[1:]
    c = full(models["qwen3_F32"], tokens, dict(window=24, logn_train_len=32), KV_F16)
    assert np.abs(a - b)[20:].mean() > 1e-2 * a.std()
    assert np.abs(a - c)[30:].mean() > 1e-2 * a.std()
