"""The CUDA operator on keys stored Hadamard-rotated (ggml_rerope_attn_call.k_hadamard = B: each
block of B dims of a stored key row is H_B k), against the float64 reference on the keys the
stored rows stand for: H_B of the dequantized rows (H_B is its own inverse). Needs a CUDA build and
a visible GPU, except the contract test, which runs on every machine.

Prefill, the f32 decode and the all-f16 decode read keys unrotated by a pre-pass (src/cuda/
unrotate_keys.cu) into f16 rows (f32 for f32 keys) of the call's workspace. The staged tensor-core
decode (bf16, q8_0, q4_0 or mixed pairs) undoes Q in its tile loads instead, only for tiles whose
keys it needs (far CLAMP tiles score the stored keys against a rotated far query). Either way the
tolerances are the f16 ones of test_cuda.py. Decode (n_q <= 4) runs split-K over ~3000 keys;
prefill an odd length; windows at and off the kernels' 16- and 64-key tile edges; every far mode;
GQA.
"""

from __future__ import annotations

import numpy as np
import pytest

import ggml_rerope
from attention_inputs import random_qkv, rel_err, shuffled_positions
from ggml_rerope import _binding, kv_quant, reference
from ggml_rerope.errors import InvalidArgumentError

HAVE_GPU = bool(_binding.lib.ggml_rerope_cuda_available())
needs_gpu = pytest.mark.skipif(
    not HAVE_GPU, reason="no CUDA device visible, or the library was built with GGML_REROPE_CUDA=OFF")

TOL_PREFILL = 5e-3
TOL_DECODE = 2e-3

# (k_type, v_type): f32 K only goes with f32 V on CUDA; f16 / f16 is the pre-pass's all-f16 decode,
# the others the staged decode (q4_0 K beside f16 V: a mixed pair).
PAIRS = [("f32", "f32"), ("f16", "f16"), ("bf16", "bf16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q4_0", "f16"),
         ("f16", "q8_0")]
PAIR_IDS = [f"{k}-{v}" for k, v in PAIRS]
# (head_dim, B): a block of the whole head, and 64 of 128.
BLOCKS = [(64, 64), (128, 64), (128, 128)]
BLOCK_IDS = [f"d{d}-B{b}" for d, b in BLOCKS]


def sample_rows(rng, n_q, n_max=24):
    """All rows for small inputs; else the first, the last and random ones (the reference is slow)."""
    if n_q <= n_max:
        return None
    return np.unique(np.concatenate([[0, n_q - 1], rng.choice(n_q, n_max - 2, replace=False)]))


def rotated_keys(k, k_type, b):
    """Keys k (n, heads, d) stored as H_b k in k_type -> (the rows, the float64 keys they hold)."""
    rows = kv_quant.quantize(reference.hadamard(k, b), k_type)
    return rows, reference.hadamard(reference.dequantize(rows, k_type, k.shape[-1]), b)


def stored(x, kv_type):
    rows = kv_quant.quantize(x, kv_type)
    return rows, reference.dequantize(rows, kv_type, x.shape[-1])


def check(q, k, v, k_type, v_type, b, seed, rows=None, **kw):
    kr, kd = rotated_keys(k, k_type, b)
    vr, vd = stored(v, v_type)
    out = ggml_rerope.rerope_attention(q, kr, vr, k_type=k_type, v_type=v_type, k_hadamard=b, device="cuda", **kw)
    assert np.isfinite(out).all(), f"non-finite output (unwritten rows?) seed {seed}"
    ref = reference.rerope_attention(q, kd, vd, rows=rows, **kw)
    got = out if rows is None else out[rows]
    tol = TOL_DECODE if q.shape[0] <= 4 else TOL_PREFILL
    err = rel_err(got, ref)
    assert err < tol, f"rel err {err:.3g} > {tol} ({k_type}/{v_type}, B {b}, seed {seed}, {kw})"


# ---------------------------------------------------------------- the contract, on every machine


@pytest.mark.parametrize("b", [1, 3, 256, -2, 48])
def test_bad_block_is_invalid_argument_on_cuda(b):
    """The contract check runs before the device is looked at (ggml_rerope_check_call), so a bad
    block is an InvalidArgumentError through device='cuda' with or without a GPU or CUDA build,
    with the CPU's message."""
    q, k, v, _, _ = random_qkv(2, 64, 4, 2, 128, np.float32)
    kw = dict(k_type="q8_0", v_type="q8_0", k_hadamard=b, window=16)
    with pytest.raises(InvalidArgumentError, match="k_hadamard") as on_cuda:
        ggml_rerope.rerope_attention(q, k, v, device="cuda", **kw)
    with pytest.raises(InvalidArgumentError) as on_cpu:
        ggml_rerope.rerope_attention(q, k, v, device="cpu", **kw)
    assert str(on_cuda.value) == str(on_cpu.value)


# ---------------------------------------------------------------- against the reference


@needs_gpu
@pytest.mark.parametrize("k_type, v_type", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("d, b", BLOCKS, ids=BLOCK_IDS)
@pytest.mark.parametrize("n_q", [1, 2, 3, 4])
def test_decode_vs_reference(n_q, d, b, k_type, v_type):
    q, k, v, _, seed = random_qkv(n_q, 3001, 8, 2, d, np.float32)
    check(q, k, v, k_type, v_type, b, seed, window=100)


@needs_gpu
@pytest.mark.parametrize("k_type, v_type", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("d, b", BLOCKS, ids=BLOCK_IDS)
def test_prefill_vs_reference(d, b, k_type, v_type):
    n = 777
    q, k, v, rng, seed = random_qkv(n, n, 8, 2, d, np.float32)
    check(q, k, v, k_type, v_type, b, seed, rows=sample_rows(rng, n), window=64)


@needs_gpu
@pytest.mark.parametrize("k_type", ["f16", "q8_0", "q4_0"])
@pytest.mark.parametrize("n_q", [2, 777], ids=["decode", "prefill"])
@pytest.mark.parametrize("window, far", [
    (64, {}), (100, {}), (64, dict(leaky=4.0)), (100, dict(leaky=2.5)), (96, dict(group=8)),
    (300, dict(chunk=256)), (2048, dict(sliding_window=500, sink_tokens=4))],
    ids=["clamp64", "clamp100", "leaky64", "leaky100", "group", "chunk", "sliding"])
def test_windows_and_far_modes(window, far, n_q, k_type):
    """Far modes other than CLAMP rotate far keys too: the prefill's second rotated copy, read from
    the unrotated rows; in the staged decode every visible tile is undone, and the far query is not
    rotated. A sliding window drops most tiles."""
    q, k, v, rng, seed = random_qkv(n_q, 2999 if n_q <= 4 else n_q, 9, 3, 128, np.float32)
    check(q, k, v, k_type, k_type, 64, seed, rows=sample_rows(rng, n_q), window=window, **far)


@needs_gpu
@pytest.mark.parametrize("d, b", [(64, 64), (128, 128)], ids=["d64-B64", "d128-B128"])
@pytest.mark.parametrize("far", [{}, dict(leaky=3.0), dict(group=4), dict(chunk=64)],
                         ids=["clamp", "leaky", "group", "chunk"])
def test_decode_far_modes_per_head_size(far, d, b):
    """The staged decode's in-tile undo at both head sizes, the block the whole head."""
    q, k, v, _, seed = random_qkv(3, 2500, 8, 2, d, np.float32)
    check(q, k, v, "q8_0", "q4_0", b, seed, window=96, **far)


@needs_gpu
@pytest.mark.parametrize("k_type", ["q8_0", "q4_0"])
def test_decode_of_several_row_chunks(k_type):
    """3 queries x a group of 8 heads = 24 rows: two chunks of 16 rows, the query transform in both."""
    q, k, v, _, seed = random_qkv(3, 2100, 32, 4, 128, np.float32)
    check(q, k, v, k_type, k_type, 128, seed, window=200)


@needs_gpu
@pytest.mark.parametrize("d, b", [(64, 2), (128, 2), (128, 4), (128, 8), (64, 32)],
                         ids=["d64-B2", "d128-B2", "d128-B4", "d128-B8", "d64-B32"])
@pytest.mark.parametrize("n_q", [1, 300], ids=["decode", "prefill"])
def test_small_blocks(n_q, d, b):
    """Blocks of 2 .. 8 stay inside one lane's elements of the pre-pass, 32 spans lanes but not the row."""
    q, k, v, rng, seed = random_qkv(n_q, 1500 if n_q <= 4 else n_q, 4, 2, d, np.float32)
    check(q, k, v, "q8_0", "q8_0", b, seed, rows=sample_rows(rng, n_q), window=64)


@needs_gpu
@pytest.mark.parametrize("k_type", ["q8_0", "f32"])
@pytest.mark.parametrize("n_q", [2, 200], ids=["decode", "prefill"])
def test_custom_positions(n_q, k_type):
    """Shuffled key positions with gaps: the tile bounds' pass and the unrotated rows share the workspace."""
    n_kv, d = 1200, 128
    q, k, v, rng, seed = random_qkv(n_q, n_kv, 8, 2, d, np.float32)
    q_pos, k_pos = shuffled_positions(rng, n_q, n_kv)
    v_type = "f32" if k_type == "f32" else k_type
    check(q, k, v, k_type, v_type, 64, seed, rows=sample_rows(rng, n_q), window=100, q_pos=q_pos, k_pos=k_pos)


@needs_gpu
@pytest.mark.parametrize("k_type", ["q8_0", "q4_0"])
@pytest.mark.parametrize("n_q, n_kv", [(1, 3001), (4, 2000), (333, 333)])
def test_same_as_f16_cache_of_the_unrotated_keys(n_q, n_kv, k_type):
    """Against the same call on an f16 cache of the keys the rows hold (rounded once from float64
    here). Prefill: the pre-pass hands the kernels f16 rows of H_B (dequantized rows), so they agree
    to rounding (an element here and there one f16 ulp apart). Decode: far scores read the stored
    rows against a rotated query, rounded to f16 at other places: the f16 decode tolerance."""
    d, b = 128, 64
    q, k, v, _, seed = random_qkv(n_q, n_kv, 16, 4, d, np.float32)
    kr, kd = rotated_keys(k, k_type, b)
    vr, _ = stored(v, k_type)
    kw = dict(window=80, logn_train_len=256, k_type=k_type, v_type=k_type, device="cuda")
    got = ggml_rerope.rerope_attention(q, kr, vr, k_hadamard=b, **kw)
    kw["k_type"] = "f16"
    plain = ggml_rerope.rerope_attention(q, kd.astype(np.float16), vr, **kw)
    err = rel_err(got, plain)
    tol = TOL_DECODE if n_q <= 4 else 1e-3
    assert err < tol, f"{k_type} B {b} vs an f16 cache of its unrotated keys: {err:.3g} (seed {seed})"


@needs_gpu
@pytest.mark.parametrize("n_q", [1, 300], ids=["decode", "prefill"])
def test_cpu_vs_cuda(n_q):
    q, k, v, _, seed = random_qkv(n_q, 1000, 8, 2, 128, np.float32)
    kr, _ = rotated_keys(k, "q4_0", 64)
    vr, _ = stored(v, "q4_0")
    kw = dict(window=128, mode="neox", k_type="q4_0", v_type="q4_0", k_hadamard=64)
    cpu = ggml_rerope.rerope_attention(q, kr, vr, device="cpu", **kw)
    gpu = ggml_rerope.rerope_attention(q, kr, vr, device="cuda", **kw)
    err = rel_err(gpu, cpu)
    assert err < TOL_PREFILL, f"CPU vs CUDA {err:.3g} (seed {seed})"
