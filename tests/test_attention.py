"""The CPU operator against the float64 reference, on fresh random inputs, for every SIMD
path this machine has plus plain C; and the properties that follow from the math.

Tile sizes of the kernel (src/op/kernel.h): RR_BK = 64 keys, query tiles of 256 / (H/H_kv)
tokens; split-K decode for n_q <= 4 and n_kv >= 1024. Windows around 64 hit the tile edges.
"""

from __future__ import annotations

import numpy as np
import pytest

import ggml_rerope
from attention_inputs import random_qkv, rel_err
from ggml_rerope import _binding, reference

BK = 64
_lib = _binding.lib
TOL = {np.float32: 1e-4, np.float16: 2e-3}



def make(n_q, n_kv, h, h_kv, d, kv_dtype=np.float32, seed=None):
    return random_qkv(n_q, n_kv, h, h_kv, d, kv_dtype, seed)


def check(q, k, v, seed, rows=None, **kw):
    """Kernel vs reference (on the same f16-rounded K/V), relative error under the tolerance."""
    out = ggml_rerope.rerope_attention(q, k, v, **kw)
    kw.pop("threads", None)
    ref = reference.rerope_attention(q, k, v, rows=rows, **kw)
    got = out if rows is None else out[rows]
    err = rel_err(got, ref)
    assert err < TOL[k.dtype.type], f"rel err {err:.3g} (seed {seed}, {kw})"
    return out


@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize(
    "n, h, h_kv, d, window",
    [(1, 4, 4, 64, 1), (7, 4, 2, 64, 3), (63, 8, 2, 128, 63), (64, 9, 3, 64, 64), (65, 4, 4, 128, 65),
     (1000, 8, 2, 128, 300), (4096, 2, 1, 64, 1024)],
)
def test_sizes(simd, kv_dtype, n, h, h_kv, d, window):
    q, k, v, rng, seed = make(n, n, h, h_kv, d, kv_dtype)
    rows = np.sort(rng.choice(n, 12, replace=False)) if n >= 1000 else None
    check(q, k, v, seed, rows=rows, window=window, threads=2)


@pytest.mark.parametrize("h, h_kv", [(1, 1), (4, 4), (8, 2), (9, 3), (32, 8)])
@pytest.mark.parametrize("d", [64, 128])
def test_heads(simd, h, h_kv, d):
    q, k, v, _, seed = make(90, 90, h, h_kv, d, np.float16)
    check(q, k, v, seed, window=40)


@pytest.mark.parametrize("window", [1, BK - 1, BK, BK + 1, 199, 200, 201, 5000])
def test_windows(simd, window):
    q, k, v, _, seed = make(200, 200, 8, 2, 64)
    check(q, k, v, seed, window=window, threads=2)


@pytest.mark.parametrize("far", [{}, {"leaky": 2.0}, {"leaky": 16.0}, {"group": 4}, {"group": 7}],
                         ids=["clamp", "leaky2", "leaky16", "group4", "group7"])
@pytest.mark.parametrize("mode", ["norm", "neox"])
@pytest.mark.parametrize("logn", [None, 64])
def test_far_modes(simd, far, mode, logn):
    q, k, v, _, seed = make(260, 260, 4, 2, 64, np.float16)
    check(q, k, v, seed, window=70, mode=mode, logn_train_len=logn, **far)


@pytest.mark.parametrize("mode", ["norm", "neox"])
def test_partial_rotation_and_freq_factors(simd, mode):
    q, k, v, rng, seed = make(150, 150, 4, 2, 96)
    ff = rng.uniform(0.25, 4.0, size=16)
    check(q, k, v, seed, window=50, mode=mode, n_rot=32, freq_factors=ff, base=500000.0, scale=0.07)
    check(q, k, v, seed, window=50, mode=mode, n_rot=0)


@pytest.mark.parametrize("far", [{}, {"leaky": 3.0}, {"group": 3}], ids=["clamp", "leaky", "group"])
def test_explicit_positions(simd, far):
    """Gapped, unsorted key positions (no contiguous tiles) and arbitrary query positions."""
    q, k, v, rng, seed = make(40, 300, 4, 2, 64)
    k_pos = np.sort(rng.choice(2000, 300, replace=False)) + 7
    k_pos[100:140] = k_pos[100:140][::-1].copy()
    q_pos = rng.integers(0, 2100, size=40)
    check(q, k, v, seed, window=150, q_pos=q_pos, k_pos=k_pos, **far)
    check(q, k, v, seed, window=150, q_pos=q_pos, k_pos=k_pos, causal=False, **far)


@pytest.mark.parametrize("n_q, h, h_kv", [(1, 2, 2), (1, 4, 2), (1, 6, 2), (2, 4, 2), (4, 3, 3)],
                         ids=["rows1", "rows2", "rows3", "rows4", "rows4-tokens"])
@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_decode_fast_path_row_counts(simd, n_q, h, h_kv, kv_dtype):
    """The cache-direct decode tile has one variant per real row count (n_q * H/H_kv = 1..4)."""
    q, k, v, _, seed = make(n_q, 1500, h, h_kv, 64, kv_dtype)
    check(q, k, v, seed, window=200, threads=2)


def test_no_visible_key_gives_zeros(simd):
    q, k, v, _, _ = make(3, 100, 2, 1, 64)
    out = ggml_rerope.rerope_attention(q, k, v, window=10, q_pos=[5, 0, 1000], k_pos=np.arange(100) + 50)
    assert np.all(out[:2] == 0.0) and np.all(np.isfinite(out))


@pytest.mark.parametrize("n_q", [1, 3])
@pytest.mark.parametrize("far", [{}, {"leaky": 2.0}, {"group": 8}], ids=["clamp", "leaky", "group"])
@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_decode_split_k(simd, n_q, far, kv_dtype):
    """n_q <= 4 with a long cache takes the split-K path (partials + merge); with one row block
    (n_q * H/H_kv <= 4) far clamp tiles read K/V straight from the cache."""
    n_kv = 3000
    q, k, v, _, seed = make(n_q, n_kv, 9, 3, 64, kv_dtype)
    check(q, k, v, seed, window=1000, threads=2, **far)
    q, k, v, _, seed = make(1, 2100, 8, 2, 128, kv_dtype)
    check(q, k, v, seed, window=300, threads=3, **far)


@pytest.mark.parametrize("n_q, n_kv", [(1, 1500), (3, 2100), (70, 70)], ids=["decode", "split-k", "prefill"])
@pytest.mark.parametrize("k_dtype, v_dtype", [(np.float32, np.float16), (np.float16, np.float32)],
                         ids=["k32-v16", "k16-v32"])
def test_k_and_v_of_different_types(simd, n_q, n_kv, k_dtype, v_dtype):
    """K and V types are separate (k_type / v_type); the decode fast path needs one type, the
    tile loader takes each on its own."""
    q, k, v, _, seed = make(n_q, n_kv, 4, 1, 64, np.float32)
    k, v = k.astype(k_dtype), v.astype(v_dtype)
    out = ggml_rerope.rerope_attention(q, k, v, window=200, threads=2)
    ref = reference.rerope_attention(q, k, v, window=200)
    err = rel_err(out, ref)
    assert err < TOL[np.float16], f"rel err {err:.3g} (seed {seed})"


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("mode", ["norm", "neox"])
def test_window_beyond_n_is_plain_rope(simd, mode):
    q, k, v, _, seed = make(150, 150, 4, 2, 64)
    out = ggml_rerope.rerope_attention(q, k, v, window=150, mode=mode)
    ref = reference.rope_attention(q, k, v, mode=mode)
    assert rel_err(out, ref) < 1e-4, f"seed {seed}"


def test_leaky_k1_is_plain_rope(simd):
    q, k, v, _, seed = make(200, 200, 8, 2, 64)
    out = ggml_rerope.rerope_attention(q, k, v, window=5, leaky=1.0)
    ref = reference.rope_attention(q, k, v)
    assert rel_err(out, ref) < 1e-4, f"seed {seed}"


@pytest.mark.parametrize("n", [300, 2000])
def test_decode_row_equals_prefill_row(simd, n):
    q, k, v, rng, seed = make(n, n, 8, 2, 64, np.float16)
    full = ggml_rerope.rerope_attention(q, k, v, window=100)
    for i in rng.choice(n, 3, replace=False):
        row = ggml_rerope.rerope_attention(q[i:i + 1], k, v, window=100, q_pos=[i])
        assert rel_err(row[0], full[i]) < 1e-5, f"row {i}, seed {seed}"


def test_chunked_prefill_equals_one_shot(simd):
    n = 400
    q, k, v, _, seed = make(n, n, 9, 3, 64, np.float16)
    full = ggml_rerope.rerope_attention(q, k, v, window=90, leaky=4.0)
    for a, b in [(0, 100), (100, 101), (101, 333), (333, 400)]:
        part = ggml_rerope.rerope_attention(q[a:b], k[:b], v[:b], window=90, leaky=4.0, q_pos=np.arange(a, b))
        assert rel_err(part, full[a:b]) < 1e-5, f"chunk {a}:{b}, seed {seed}"


def test_gqa_equals_repeated_mha(simd):
    q, k, v, _, seed = make(180, 180, 8, 2, 64)
    out = ggml_rerope.rerope_attention(q, k, v, window=60)
    mha = ggml_rerope.rerope_attention(q, np.repeat(k, 4, axis=1), np.repeat(v, 4, axis=1), window=60)
    assert rel_err(out, mha) < 1e-6, f"seed {seed}"


def test_threads_do_not_change_the_result():
    q, k, v, _, _ = make(300, 300, 4, 2, 64)
    one = ggml_rerope.rerope_attention(q, k, v, window=70, threads=1)
    for t in (2, 3, 7):
        assert np.array_equal(one, ggml_rerope.rerope_attention(q, k, v, window=70, threads=t))


def test_env_threads_default(monkeypatch):
    q, k, v, _, _ = make(20, 20, 2, 1, 64)
    monkeypatch.setenv("GGML_REROPE_THREADS", "1")
    out = ggml_rerope.rerope_attention(q, k, v, window=8)
    assert out.shape == q.shape and out.dtype == np.float32
