"""Dual Chunk Attention (FAR_CHUNK) and the sliding window with attention sinks (LM-Infinite's
Lambda-shaped attention) on every CPU SIMD path, against the float64 reference: odd lengths,
chunks and windows at tile edges, GQA, both rope modes, log-n, decode vs prefill, split-K,
explicit positions, quantized and Hadamard-rotated keys, and the parameter checks."""

from __future__ import annotations

import numpy as np
import pytest

import ggml_rerope
from attention_inputs import random_qkv, rel_err, shuffled_positions
from ggml_rerope import reference
from ggml_rerope._binding import lib as _lib
from ggml_rerope.errors import InvalidArgumentError
from test_attention import BK, TOL


def check(q, k, v, seed, rows=None, tol=None, **kw):
    out = ggml_rerope.rerope_attention(q, k, v, **kw)
    kw.pop("threads", None)
    kw.pop("k_type", None)
    kw.pop("v_type", None)
    ref = reference.rerope_attention(q, k, v, rows=rows, **kw)
    got = out if rows is None else out[rows]
    err = rel_err(got, ref)
    assert err < (tol or TOL[k.dtype.type]), f"rel err {err:.3g} (seed {seed}, {kw})"
    return out


def dca_rel(i, j, chunk_size, chunk_len):
    """Dual Chunk Attention's relative positions as the paper states them: keys at j mod s;
    queries of the same chunk at i mod s, of the next chunk at min(s + i mod s, C), of later
    chunks at C (C = chunk_size, the largest relative position; s = chunk_len)."""
    s, C = chunk_len, chunk_size
    ci, cj = i // s, j // s
    if ci == cj:
        return i - j
    if ci == cj + 1:
        return min(s + i % s, C) - j % s
    return C - j % s


@pytest.mark.parametrize("window, chunk", [(12, 7), (12, 12), (100, 51), (127, 64), (129, 65), (6144, 5632)])
def test_reference_chunk_map_is_the_papers(window, chunk):
    """The contract's near rule + far formula give exactly the paper's three position maps."""
    rng = np.random.default_rng(window)
    i = rng.integers(0, 8 * window, 400)
    j = np.minimum(i, rng.integers(0, 8 * window, 400))
    j[:40] = i[:40] - rng.integers(0, window, 40).clip(max=i[:40])  # near the query
    got = reference.relative_positions(i, j, window, chunk=chunk)
    want = np.array([dca_rel(a, b, window, chunk) for a, b in zip(i, j)])
    np.testing.assert_array_equal(got, want)
    assert got.max() <= window


@pytest.mark.parametrize("n, window, chunk", [(7, 5, 3), (130, 40, 21), (200, 70, BK - 1), (200, 70, BK),
                                              (333, 127, BK + 1), (700, 127, 64), (1000, 300, 151)])
@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_chunk_sizes(simd, n, window, chunk, kv_dtype):
    q, k, v, _, seed = random_qkv(n, n, 4, 2, 64, kv_dtype)
    check(q, k, v, seed, window=window, chunk=chunk, threads=2)


@pytest.mark.parametrize("mode", ["norm", "neox"])
@pytest.mark.parametrize("logn", [None, 64])
@pytest.mark.parametrize("h, h_kv, d", [(4, 2, 64), (9, 3, 128), (6, 6, 96)])
def test_chunk_heads_modes_logn(simd, mode, logn, h, h_kv, d):
    q, k, v, _, seed = random_qkv(260, 260, h, h_kv, d, np.float16)
    check(q, k, v, seed, window=90, chunk=60, mode=mode, logn_train_len=logn)


@pytest.mark.parametrize("n_q", [1, 3])
@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_chunk_decode_split_k(simd, n_q, kv_dtype):
    q, k, v, _, seed = random_qkv(n_q, 3000, 9, 3, 64, kv_dtype)
    check(q, k, v, seed, window=1000, chunk=700, threads=2)
    q, k, v, _, seed = random_qkv(1, 2100, 8, 2, 128, kv_dtype)
    check(q, k, v, seed, window=300, chunk=190, threads=3)


def test_chunk_decode_row_equals_prefill_row(simd):
    q, k, v, _, _ = random_qkv(900, 900, 4, 2, 64, np.float32)
    full = ggml_rerope.rerope_attention(q, k, v, window=256, chunk=200, threads=2)
    for i in (0, 199, 200, 455, 456, 899):
        one = ggml_rerope.rerope_attention(q[i:i + 1], k[:i + 1], v[:i + 1], window=256, chunk=200, threads=2)
        assert rel_err(one[0], full[i]) < 1e-5


@pytest.mark.parametrize("causal", [True, False])
def test_chunk_explicit_positions(simd, causal):
    q, k, v, rng, seed = random_qkv(40, 300, 4, 2, 64, np.float32)
    q_pos, k_pos = shuffled_positions(rng, 40, 300)
    check(q, k, v, seed, window=150, chunk=100, q_pos=q_pos, k_pos=k_pos, causal=causal)


@pytest.mark.parametrize("far", [{}, {"leaky": 3.0}, {"group": 4}, {"chunk": 50}],
                         ids=["clamp", "leaky", "group", "chunk"])
@pytest.mark.parametrize("sliding, sinks", [(1, 0), (BK, 4), (75, 1), (130, BK + 3), (5000, 10)])
def test_sliding_window_and_sinks(simd, far, sliding, sinks):
    q, k, v, _, seed = random_qkv(300, 300, 4, 2, 64, np.float16)
    check(q, k, v, seed, window=70, sliding_window=sliding, sink_tokens=sinks, threads=2, **far)


@pytest.mark.parametrize("n_q", [1, 2, 4])
@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_sliding_window_decode(simd, n_q, kv_dtype):
    """Decode over a long cache: whole tiles dropped, the sinks' tile kept (split-K and direct tiles)."""
    q, k, v, _, seed = random_qkv(n_q, 3000, 4, 2, 64, kv_dtype)
    check(q, k, v, seed, window=512, sliding_window=512, sink_tokens=10, threads=2)
    check(q, k, v, seed, window=512, sliding_window=700, sink_tokens=0, threads=2)


def test_sliding_window_explicit_positions(simd):
    q, k, v, rng, seed = random_qkv(40, 300, 4, 2, 64, np.float32)
    q_pos, k_pos = shuffled_positions(rng, 40, 300)
    check(q, k, v, seed, window=150, sliding_window=200, sink_tokens=30, q_pos=q_pos, k_pos=k_pos)
    check(q, k, v, seed, window=150, sliding_window=200, sink_tokens=30, q_pos=q_pos, k_pos=k_pos, causal=False)


def test_sliding_window_covering_everything_changes_nothing(simd):
    q, k, v, _, _ = random_qkv(200, 200, 4, 2, 64, np.float32)
    a = ggml_rerope.rerope_attention(q, k, v, window=50, threads=2)
    b = ggml_rerope.rerope_attention(q, k, v, window=50, sliding_window=200, threads=2)
    np.testing.assert_array_equal(a, b)


def test_sinks_are_what_the_window_keeps(simd):
    """With a window of 1 and k sinks, each query sees itself and the first k keys only."""
    q, k, v, _, _ = random_qkv(100, 100, 2, 1, 64, np.float32)
    out = ggml_rerope.rerope_attention(q, k, v, window=20, sliding_window=1, sink_tokens=3, threads=2)
    keep = np.r_[0:3, 50]
    one = ggml_rerope.rerope_attention(q[50:51], k[keep], v[keep], window=20, q_pos=[50], k_pos=keep)
    assert rel_err(out[50], one[0]) < 1e-5


@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0"])
@pytest.mark.parametrize("scheme", [dict(chunk=150), dict(sliding_window=200, sink_tokens=8)], ids=["chunk", "lambda"])
def test_quantized_and_rotated_keys(simd, kv_type, scheme):
    """Block-type caches, plain and Hadamard-rotated keys (as the runtime stores them)."""
    from ggml_rerope import kv_quant

    q, k, v, _, seed = random_qkv(300, 300, 4, 2, 64, np.float32)
    for b in (0, 64):
        kr = reference.hadamard(k, b) if b else k
        rows_k, rows_v = kv_quant.quantize(kr, kv_type), kv_quant.quantize(v, kv_type)
        k_deq = reference.dequantize(rows_k, kv_type, 64)
        k_deq = reference.hadamard(k_deq, b) if b else k_deq
        v_deq = reference.dequantize(rows_v, kv_type, 64)
        out = ggml_rerope.rerope_attention(q, rows_k, rows_v, window=200, k_type=kv_type, v_type=kv_type,
                                           k_hadamard=b, threads=2, **scheme)
        ref = reference.rerope_attention(q, k_deq, v_deq, window=200, **scheme)
        assert rel_err(out, ref) < 1e-4, (seed, b)


@pytest.mark.parametrize("kw, what", [
    (dict(window=100, chunk=50), "chunk_len"), (dict(window=100, chunk=101), "chunk_len"),
    (dict(window=100, chunk=0), "chunk_len"), (dict(window=100, sliding_window=-1), "sliding_window"),
    (dict(window=100, sink_tokens=-2), "sink_tokens")])
def test_bad_parameters_are_refused(kw, what):
    q, k, v, _, _ = random_qkv(4, 10, 2, 1, 64, np.float32)
    with pytest.raises(InvalidArgumentError, match=what):
        ggml_rerope.rerope_attention(q, k, v, **kw)


def test_chunk_is_exclusive_with_leaky_and_group():
    q, k, v, _, _ = random_qkv(4, 10, 2, 1, 64, np.float32)
    with pytest.raises(ValueError, match="exclusive"):
        ggml_rerope.rerope_attention(q, k, v, window=10, chunk=8, leaky=2.0)


def test_far_mode_enum_is_the_headers():
    assert _lib.GGML_REROPE_FAR_CHUNK == 3
