"""K/V caches in ggml's block formats (and bf16) through the CPU operator, for every SIMD path this
machine has plus plain C: fresh random K/V are quantized (ggml_rerope.kv_quant, checked against
gguf's quantizers), the kernel runs on the blocks, and its output is compared with the float64
reference on the DEQUANTIZED inputs (reference.dequantize, checked against gguf's dequantizers).
Also: the ggml node on block tensors (and views of a larger cache), and the error cases."""

from __future__ import annotations

import gguf
import gguf.quants
import numpy as np
import pytest

import ggml_rerope
from attention_inputs import random_qkv, rel_err
from ggml_rerope import _binding, kv_quant, reference
from ggml_rerope.bench.ggml_graphs import GgmlContext

ffi, lib = _binding.ffi, _binding.lib
TYPES = ["f32", "f16", "bf16", *kv_quant.BLOCK_TYPES]
TOL = 1e-4  # the kernel reads exactly the dequantized values: only float32 arithmetic is left



def quantized(n_q, n_kv, h, h_kv, d, k_type, v_type, scale=1.0):
    q, k, v, rng, seed = random_qkv(n_q, n_kv, h, h_kv, d, np.float32)
    # per-row magnitudes spread over decades: the scales of the blocks differ
    k *= rng.uniform(0.05, 3.0, (n_kv, h_kv, 1)).astype(np.float32) * scale
    v *= rng.uniform(0.05, 3.0, (n_kv, h_kv, 1)).astype(np.float32)
    kq, vq = kv_quant.quantize(k, k_type), kv_quant.quantize(v, v_type)
    return q, kq, vq, seed


def check(q, kq, vq, k_type, v_type, seed, rows=None, **kw):
    d = q.shape[2]
    out = ggml_rerope.rerope_attention(q, kq, vq, k_type=k_type, v_type=v_type, **kw)
    kw.pop("threads", None)
    ref = reference.rerope_attention(q, reference.dequantize(kq, k_type, d), reference.dequantize(vq, v_type, d),
                                     rows=rows, **kw)
    got = out if rows is None else out[rows]
    err = rel_err(got, ref)
    assert err < TOL, f"{k_type}/{v_type}: rel err {err:.3g} (seed {seed}, {kw})"
    return out


# ---------------------------------------------------------------- numpy formats vs gguf


@pytest.mark.parametrize("name", ["bf16", *kv_quant.BLOCK_TYPES])
def test_quantizer_and_dequantizer_match_gguf(name):
    rng = np.random.default_rng()
    x = (rng.standard_normal((40, 3, 128)) * rng.uniform(1e-3, 20.0, (40, 3, 1))).astype(np.float32)
    x[0, 0, :32] = 0.0  # an all-zero block: scale 0
    x[1, 1, 5] = -x[1, 1, :32].__abs__().max() * 1.5  # a block whose largest element is negative
    rows = kv_quant.quantize(x, name)
    assert rows.shape == (40, 3, kv_quant.row_bytes(name, 128)) and rows.dtype == np.uint8
    qtype = getattr(gguf.GGMLQuantizationType, name.upper())
    assert rows.shape[2] == 128 // gguf.GGML_QUANT_SIZES[qtype][0] * gguf.GGML_QUANT_SIZES[qtype][1]
    if name != "iq4_nl":  # gguf has no iq4_nl quantizer (ggml's searches the scale; ours is documented)
        np.testing.assert_array_equal(gguf.quants.quantize(x, qtype).reshape(rows.shape), rows)
    ours = reference.dequantize(rows, name, 128)
    theirs = gguf.quants.dequantize(rows.reshape(-1, rows.shape[2]), qtype).reshape(x.shape)
    np.testing.assert_array_equal(ours.astype(np.float32), theirs)
    assert np.abs(ours - x).max() <= 0.13 * np.abs(x).max()  # the format really holds x


def test_row_bytes_agree_with_the_library():
    for name, type_id in kv_quant.TYPE_IDS.items():
        for d in (32, 64, 96, 128, 256):
            assert lib.ggml_rerope_kv_row_bytes(type_id, d) == kv_quant.row_bytes(name, d)
        assert ffi.string(lib.ggml_rerope_kv_type_name(type_id)).decode() == name
        assert lib.ggml_rerope_kv_type_supported(type_id, 64) == 1
    assert lib.ggml_rerope_kv_row_bytes(lib.GGML_REROPE_KV_Q8_0, 48) == 0
    assert lib.ggml_rerope_kv_type_supported(lib.GGML_REROPE_KV_Q8_0, 48) == 0
    assert lib.ggml_rerope_kv_row_bytes(12, 64) == 0  # q4_K: not a K/V type here
    assert ffi.string(lib.ggml_rerope_kv_type_name(12)) == b"unknown"


# ---------------------------------------------------------------- kernel vs reference


@pytest.mark.parametrize("kv_type", TYPES)
@pytest.mark.parametrize(
    "n_q, n_kv, h, h_kv, d, window",
    [(1, 1500, 8, 2, 64, 200),    # split-K decode, far clamp tiles on the fast path
     (1, 300, 4, 4, 128, 100),    # decode without split
     (77, 77, 9, 3, 64, 30),      # odd prefill, GQA
     (130, 130, 4, 1, 96, 64)],   # head_dim 96 (3 blocks), windows at the tile edge
    ids=["decode-split", "decode", "prefill-77", "prefill-d96"])
def test_every_type(simd, kv_type, n_q, n_kv, h, h_kv, d, window):
    q, kq, vq, seed = quantized(n_q, n_kv, h, h_kv, d, kv_type, kv_type)
    check(q, kq, vq, kv_type, kv_type, seed, window=window, threads=2)


@pytest.mark.parametrize("k_type, v_type", [("q8_0", "q4_0"), ("q4_0", "f16"), ("f16", "q8_0"), ("q4_1", "bf16"),
                                            ("iq4_nl", "q5_1"), ("f32", "q5_0")])
@pytest.mark.parametrize("n_q, n_kv", [(1, 1100), (3, 2000), (65, 65)], ids=["decode", "decode-3", "prefill"])
def test_mixed_k_and_v_types(simd, k_type, v_type, n_q, n_kv):
    q, kq, vq, seed = quantized(n_q, n_kv, 8, 2, 64, k_type, v_type)
    check(q, kq, vq, k_type, v_type, seed, window=90, threads=2)


@pytest.mark.parametrize("far", [{}, {"leaky": 2.0}, {"group": 4}], ids=["clamp", "leaky", "group"])
@pytest.mark.parametrize("mode", ["norm", "neox"])
@pytest.mark.parametrize("k_type, v_type", [("q8_0", "q8_0"), ("q4_0", "q4_0")])
def test_far_modes(simd, far, mode, k_type, v_type):
    q, kq, vq, seed = quantized(200, 200, 4, 2, 64, k_type, v_type)
    check(q, kq, vq, k_type, v_type, seed, window=70, mode=mode, logn_train_len=64, **far)
    q, kq, vq, seed = quantized(2, 1300, 4, 2, 128, k_type, v_type)
    check(q, kq, vq, k_type, v_type, seed, window=300, mode=mode, threads=2, **far)


def test_positions_and_partial_rotation(simd):
    q, kq, vq, seed = quantized(40, 300, 6, 2, 64, "q8_0", "q4_0")
    rng = np.random.default_rng(seed)
    k_pos = np.sort(rng.choice(2000, 300, replace=False)).astype(np.int32)
    q_pos = np.sort(rng.integers(0, 2100, 40)).astype(np.int32)
    check(q, kq, vq, "q8_0", "q4_0", seed, window=50, q_pos=q_pos, k_pos=k_pos, n_rot=32, mode="neox", leaky=3.0)


def test_decode_row_equals_prefill_row(simd):
    q, kq, vq, _ = quantized(600, 600, 8, 2, 64, "q4_0", "q8_0")
    full = ggml_rerope.rerope_attention(q, kq, vq, window=100, k_type="q4_0", v_type="q8_0", threads=2)
    last = ggml_rerope.rerope_attention(q[-1:], kq, vq, window=100, k_type="q4_0", v_type="q8_0", threads=2)
    np.testing.assert_allclose(last[0], full[-1], rtol=2e-5, atol=2e-6)


def test_float_input_and_block_input_agree():
    """A float array with k_type is quantized by the wrapper: the same call as the blocks."""
    q, k, v, _, _ = random_qkv(30, 100, 4, 2, 64, np.float32)
    a = ggml_rerope.rerope_attention(q, k, v, window=40, k_type="q8_0", v_type="q4_0")
    b = ggml_rerope.rerope_attention(q, kv_quant.quantize(k, "q8_0"), kv_quant.quantize(v, "q4_0"), window=40,
                                     k_type="q8_0", v_type="q4_0")
    np.testing.assert_array_equal(a, b)
    c = ggml_rerope.rerope_attention(q, k, v.astype(np.float16), window=40, k_type="f16")
    np.testing.assert_array_equal(c, ggml_rerope.rerope_attention(q, k.astype(np.float16), v.astype(np.float16),
                                                                  window=40))


# ---------------------------------------------------------------- errors


def test_python_rejects():
    q, k, v, _, _ = random_qkv(4, 20, 4, 2, 64, np.float32)
    with pytest.raises(ValueError, match="k_type must be one of"):
        ggml_rerope.rerope_attention(q, k, v, window=8, k_type="q4_K")
    with pytest.raises(TypeError, match="v_type"):
        ggml_rerope.rerope_attention(q, k, v, window=8, v_type=8)
    q48, k48, v48, _, _ = random_qkv(4, 20, 4, 2, 48, np.float32)
    with pytest.raises(ValueError, match="multiple of 32, got 48"):
        ggml_rerope.rerope_attention(q48, k48, v48, window=8, k_type="q8_0")
    rows = kv_quant.quantize(k, "q8_0")
    with pytest.raises(ValueError, match="68 bytes, got 67"):
        ggml_rerope.rerope_attention(q, rows[..., :67], v, window=8, k_type="q8_0")
    bad = rows.copy()
    bad[3, 1, 0:2] = np.array([np.inf], np.float16).view(np.uint8)  # a scale of +inf
    with pytest.raises(ValueError, match="k must be finite"):
        ggml_rerope.rerope_attention(q, bad, v, window=8, k_type="q8_0")
    with pytest.raises(ValueError, match="v must have the shape"):
        ggml_rerope.rerope_attention(q, rows, kv_quant.quantize(v[:-1], "q4_0"), window=8, k_type="q8_0",
                                     v_type="q4_0")


def raw_call(d, k_type, v_type):
    """The C entry on a valid-looking call of these types (buffers large enough for any of them)."""
    q = np.zeros((2, 2, d), np.float32)
    kv = np.zeros((8, 1, 4 * d), np.uint8)
    out = np.zeros_like(q)
    c = ffi.new("ggml_rerope_attn_call *")
    c.params = lib.ggml_rerope_default_params(d)
    c.q, c.out = ffi.cast("const float *", q.ctypes.data), ffi.cast("float *", out.ctypes.data)
    c.k = c.v = ffi.cast("const void *", kv.ctypes.data)
    c.n_q, c.n_head, c.n_kv, c.n_head_kv, c.k_type, c.v_type = 2, 2, 8, 1, k_type, v_type
    st = lib.ggml_rerope_attn_host(c, 1)
    return st, _binding.last_error(), lib.ggml_rerope_check_call(c), (q, kv, out)


@pytest.mark.parametrize("d, k_type, v_type, text", [
    (48, lib.GGML_REROPE_KV_Q8_0, lib.GGML_REROPE_KV_F16, "k_type q8_0 (blocks of 32) needs head_dim % 32 == 0, got"),
    (48, lib.GGML_REROPE_KV_F16, lib.GGML_REROPE_KV_Q4_0, "v_type q4_0 (blocks of 32) needs head_dim % 32 == 0, got"),
    (64, 12, lib.GGML_REROPE_KV_F16, "k_type 12 (unknown) is not a K/V type"),
    (64, lib.GGML_REROPE_KV_F16, -1, "v_type -1 (unknown) is not a K/V type"),
])
def test_c_entry_refuses_unsupported_types(d, k_type, v_type, text):
    st, msg, checked, _ = raw_call(d, k_type, v_type)
    assert st == lib.GGML_REROPE_ERR_UNSUPPORTED and checked == st
    assert text in msg


def test_head_dim_48_runs_for_element_types():
    st, msg, _, _ = raw_call(48, lib.GGML_REROPE_KV_F16, lib.GGML_REROPE_KV_BF16)
    assert st == lib.GGML_REROPE_OK, msg


# ---------------------------------------------------------------- ggml node


def block_tensor(g, rows, name, shape_ne):
    """A ggml tensor of a block type holding `rows` (uint8, rows contiguous)."""
    t = g.base.ggml_new_tensor_3d(g.ctx, kv_quant.TYPE_IDS[name], *shape_ne)
    assert g.base.ggml_nbytes(t) == rows.nbytes
    ffi.memmove(g.base.ggml_get_data(t), memoryview(np.ascontiguousarray(rows)).cast("B"), rows.nbytes)
    return t


@pytest.mark.parametrize("k_type, v_type", [("q8_0", "q4_0"), ("q4_0", "q4_0"), ("bf16", "q5_1")])
@pytest.mark.parametrize("n_q, n_kv", [(50, 120), (1, 2500)], ids=["prefill", "split-K"])
def test_node_on_block_tensors_equals_raw_call(k_type, v_type, n_q, n_kv):
    q, kq, vq, _ = quantized(n_q, n_kv, 6, 2, 64, k_type, v_type)
    p = ffi.new("ggml_rerope_params *", lib.ggml_rerope_default_params(64))
    p.window = 80
    with GgmlContext(q.nbytes * 2 + kq.nbytes + vq.nbytes + (64 << 20)) as g:
        tk = block_tensor(g, kq, k_type, (64, 2, n_kv))
        tv = block_tensor(g, vq, v_type, (64, 2, n_kv))
        out = lib.ggml_rerope_attn(g.ctx, g.tensor(q), tk, tv, ffi.NULL, ffi.NULL, p)
        assert out != ffi.NULL, _binding.last_error()
        g.compute(g.graph(out), 2)
        node = g.array(out, q.shape)
    raw = ggml_rerope.rerope_attention(q, kq, vq, window=80, k_type=k_type, v_type=v_type, threads=2)
    np.testing.assert_allclose(node, raw, rtol=1e-6, atol=1e-7)


def test_node_on_a_view_of_a_block_cache():
    """The first n_kv tokens of a larger q8_0 / q4_0 cache (row strides nb[1], nb[2] of the cache)."""
    n_ctx, n_kv, d = 400, 230, 128
    q, kq, vq, _ = quantized(20, n_ctx, 4, 2, d, "q8_0", "q4_0")
    p = ffi.new("ggml_rerope_params *", lib.ggml_rerope_default_params(d))
    p.window = 60
    with GgmlContext(64 << 20) as g:
        tk, tv = block_tensor(g, kq, "q8_0", (d, 2, n_ctx)), block_tensor(g, vq, "q4_0", (d, 2, n_ctx))
        views = [g.base.ggml_view_3d(g.ctx, t, d, 2, n_kv, rows.shape[2], rows.shape[2] * 2, 0)
                 for t, rows in ((tk, kq), (tv, vq))]
        out = lib.ggml_rerope_attn(g.ctx, g.tensor(q), views[0], views[1], ffi.NULL, ffi.NULL, p)
        assert out != ffi.NULL, _binding.last_error()
        g.compute(g.graph(out), 2)
        node = g.array(out, q.shape)
    raw = ggml_rerope.rerope_attention(q, kq[:n_kv], vq[:n_kv], window=60, k_type="q8_0", v_type="q4_0")
    np.testing.assert_allclose(node, raw, rtol=1e-6, atol=1e-7)


def test_node_refuses_types_it_cannot_read():
    """(ggml itself makes no block tensor whose rows are not whole blocks: head_dim 48 with q8_0
    cannot reach the node, the raw entry's test above covers that rule.)"""
    with GgmlContext(16 << 20) as g:
        q = g.tensor(np.zeros((4, 4, 64), np.float32))
        q4k = g.base.ggml_new_tensor_3d(g.ctx, 12, 256, 2, 8)  # q4_K
        v = g.tensor(np.zeros((8, 2, 64), np.float16))
        p = ffi.new("ggml_rerope_params *", lib.ggml_rerope_default_params(64))
        assert lib.ggml_rerope_attn(g.ctx, q, q4k, v, ffi.NULL, ffi.NULL, p) == ffi.NULL
        assert "k must be f32, f16, bf16, q8_0" in _binding.last_error() and "got q4_K" in _binding.last_error()
