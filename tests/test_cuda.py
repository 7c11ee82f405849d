"""The CUDA operator (src/cuda/) against the float64 reference and against the CPU operator,
on fresh random inputs. Needs a CUDA build (GGML_REROPE_CUDA=ON) and a visible GPU; otherwise
every GPU test is skipped with the reason, and only the 'no device' error path runs.

Kernels: n_q <= 4 runs a decode (split-K) kernel -- tensor cores for f16 K/V (16-key tiles),
scalar f32 math for f32 K/V -- more queries the prefill kernel (tensor cores, f16 operands, f32
accumulation, 128-query x 64-key tiles), so windows of 31/32/33/63/64/65 hit tile edges. The library poisons the
device output with NaN before each run, so an unwritten element fails the finiteness check.
"""

from __future__ import annotations

import numpy as np
import pytest

import ggml_rerope
from attention_inputs import random_qkv, rel_err, shuffled_positions
from ggml_rerope import _binding, reference
from ggml_rerope.errors import CudaError, UnsupportedError

HAVE_GPU = bool(_binding.lib.ggml_rerope_cuda_available())
needs_gpu = pytest.mark.skipif(
    not HAVE_GPU, reason="no CUDA device visible, or the library was built with GGML_REROPE_CUDA=OFF")

# Relative error bounds: prefill and f16 decode round q, rotated keys and P to f16 (tensor-core
# operands, f32 accumulation) over short key ranges here; f32 decode computes in f32.
TOL_PREFILL = 5e-3
TOL_DECODE = 2e-3


def make(n_q, n_kv, h, h_kv, d, kv_dtype=np.float16, seed=None):
    return random_qkv(n_q, n_kv, h, h_kv, d, kv_dtype, seed)


def sample_rows(rng, n_q, n_max=24):
    """All rows for small inputs; else the first, the last and random ones (the reference is slow)."""
    if n_q <= n_max:
        return None
    return np.unique(np.concatenate([[0, n_q - 1], rng.choice(n_q, n_max - 2, replace=False)]))


def check(q, k, v, seed, rows=None, tol=None, **kw):
    out = ggml_rerope.rerope_attention(q, k, v, device="cuda", **kw)
    assert np.isfinite(out).all(), f"non-finite output (unwritten rows?) seed {seed}"
    ref = reference.rerope_attention(q, k, v, rows=rows, **kw)
    got = out if rows is None else out[rows]
    tol = tol or (TOL_DECODE if q.shape[0] <= 4 else TOL_PREFILL)
    err = rel_err(got, ref)
    assert err < tol, f"rel err {err:.3g} > {tol} (seed {seed}, {kw})"
    return out


@pytest.mark.skipif(HAVE_GPU, reason="a GPU is present: the no-device path cannot be exercised")
def test_without_device_raises_cuda_error():
    q, k, v, _, _ = make(4, 4, 2, 2, 64)
    with pytest.raises(CudaError):
        ggml_rerope.rerope_attention(q, k, v, window=2, device="cuda")


@needs_gpu
@pytest.mark.parametrize("kv_dtype", [np.float16, np.float32], ids=["f16", "f32"])
@pytest.mark.parametrize(
    "n, h, h_kv, d, window",
    [(1, 4, 4, 64, 1), (7, 4, 2, 64, 3), (63, 8, 2, 128, 63), (64, 9, 3, 64, 64), (65, 4, 4, 128, 65),
     (1000, 8, 2, 128, 300), (1000, 1, 1, 64, 33), (4096, 32, 8, 128, 1024)])
def test_prefill_vs_reference(n, h, h_kv, d, window, kv_dtype):
    q, k, v, rng, seed = make(n, n, h, h_kv, d, kv_dtype)
    check(q, k, v, seed, rows=sample_rows(rng, n), window=window)


@needs_gpu
@pytest.mark.parametrize("kv_dtype", [np.float16, np.float32], ids=["f16", "f32"])
@pytest.mark.parametrize("n_q", [1, 2, 4])
@pytest.mark.parametrize(
    "n_kv, h, h_kv, d, window",
    [(1, 1, 1, 64, 1), (31, 4, 2, 64, 32), (33, 9, 3, 64, 31), (65, 8, 2, 128, 64), (2000, 32, 8, 128, 1024),
     (5000, 9, 3, 64, 33)])
def test_decode_vs_reference(n_q, n_kv, h, h_kv, d, window, kv_dtype):
    if n_q > n_kv:
        pytest.skip("more queries than keys needs explicit positions")
    q, k, v, _, seed = make(n_q, n_kv, h, h_kv, d, kv_dtype)
    check(q, k, v, seed, window=window)


SCHEMES = {
    "leaky": dict(window=64, leaky=4.0),
    "leaky_k1": dict(window=20, leaky=1.0),
    "group": dict(window=128, group=8),
    "logn": dict(window=100, logn_train_len=128),
    "neox": dict(window=65, mode="neox"),
    "neox_partial_rot": dict(window=65, mode="neox", n_rot=32),
    "norm_partial_rot": dict(window=127, n_rot=48),
    "no_rot": dict(window=7, n_rot=0),
    "base_500k": dict(window=200, base=500000.0),
    "scale": dict(window=64, scale=0.3),
    "noncausal": dict(window=50, causal=False),
    "leaky_logn_neox": dict(window=96, leaky=2.5, logn_train_len=64, mode="neox"),
    "chunk": dict(window=150, chunk=100),
    "chunk_tile_edge": dict(window=127, chunk=64, logn_train_len=64, mode="neox"),
    "chunk_noncausal": dict(window=90, chunk=60, causal=False),
    "sliding_sinks": dict(window=128, sliding_window=128, sink_tokens=10),
    "sliding_leaky": dict(window=64, leaky=4.0, sliding_window=200, sink_tokens=1),
    "sliding_chunk": dict(window=150, chunk=100, sliding_window=300, sink_tokens=64),
}


@needs_gpu
@pytest.mark.parametrize("n_q", [3, 300], ids=["decode", "prefill"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_schemes(scheme, n_q):
    kw = dict(SCHEMES[scheme])
    d = 64
    q, k, v, rng, seed = make(n_q, 700, 9, 3, d)
    if scheme in ("leaky", "neox"):
        kw["freq_factors"] = rng.uniform(0.25, 2.0, size=(kw.get("n_rot", d) // 2,)).astype(np.float32)
    check(q, k, v, seed, rows=sample_rows(rng, n_q), **kw)


@needs_gpu
@pytest.mark.parametrize("n_q", [2, 200], ids=["decode", "prefill"])
def test_custom_positions(n_q):
    """Shuffled key positions with gaps, queries at arbitrary later positions (tile bounds
    come from the position ranges, not the indices)."""
    n_kv, d = 500, 128
    q, k, v, rng, seed = make(n_q, n_kv, 8, 2, d)
    q_pos, k_pos = shuffled_positions(rng, n_q, n_kv)
    check(q, k, v, seed, rows=sample_rows(rng, n_q), window=100, q_pos=q_pos, k_pos=k_pos)


@needs_gpu
def test_window_beyond_context_is_rope():
    q, k, v, rng, seed = make(130, 130, 4, 2, 64)
    out = ggml_rerope.rerope_attention(q, k, v, window=10_000, device="cuda")
    ref = reference.rope_attention(q, k, v)
    assert rel_err(out, ref) < TOL_PREFILL, f"seed {seed}"


@needs_gpu
@pytest.mark.parametrize("window", [64, 1024])
def test_decode_equals_last_prefill_row(window):
    n, d = 2048, 128
    q, k, v, _, seed = make(n, n, 32, 8, d)
    full = ggml_rerope.rerope_attention(q, k, v, window=window, device="cuda")
    last = ggml_rerope.rerope_attention(q[-1:], k, v, window=window, device="cuda")
    err = rel_err(last[0], full[-1])
    assert err < TOL_PREFILL, f"decode vs prefill row: {err:.3g} (seed {seed})"


@needs_gpu
@pytest.mark.parametrize("n_q, n_kv", [(1, 3000), (4, 300), (257, 257), (1000, 1000)])
@pytest.mark.parametrize("kv_dtype", [np.float16, np.float32], ids=["f16", "f32"])
def test_cpu_vs_cuda(n_q, n_kv, kv_dtype):
    q, k, v, _, seed = make(n_q, n_kv, 32, 8, 128, kv_dtype)
    kw = dict(window=128, logn_train_len=256, mode="neox")
    cpu = ggml_rerope.rerope_attention(q, k, v, device="cpu", **kw)
    gpu = ggml_rerope.rerope_attention(q, k, v, device="cuda", **kw)
    err = rel_err(gpu, cpu)
    assert err < TOL_PREFILL, f"CPU vs CUDA {err:.3g} (seed {seed})"


@needs_gpu
def test_unsupported_head_size():
    q, k, v, _, _ = make(8, 8, 2, 2, 96)
    with pytest.raises(UnsupportedError, match="head_dim"):
        ggml_rerope.rerope_attention(q, k, v, window=4, device="cuda")
