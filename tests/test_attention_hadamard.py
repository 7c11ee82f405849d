"""Keys stored Hadamard-rotated (ggml_rerope_attn_call.k_hadamard): every CPU path against the float64
reference on the unrotated keys, for plain and quantized rows, every far mode (the clamp path scores the
stored keys against rotated queries, the others unrotate key tiles), windows at tile edges, decode and
prefill; the ggml node; and the parameter's checks."""

from __future__ import annotations

import numpy as np
import pytest

import ggml_rerope
from attention_inputs import random_qkv, rel_err
from ggml_rerope import _binding, kv_quant, reference
from ggml_rerope.bench.ggml_graphs import GgmlContext
from ggml_rerope.errors import InvalidArgumentError

ffi, lib = _binding.ffi, _binding.lib
SCHEMES = {"clamp": {}, "leaky": {"leaky": 3.0}, "group": {"group": 4}}



def stored_keys(k, block, k_type):
    """(rows the kernel reads, the unrotated keys they hold in float64)."""
    rotated = reference.hadamard(k, block).astype(np.float32)
    if k_type == "f32":
        return rotated, reference.hadamard(rotated, block)
    rows = kv_quant.quantize(rotated, k_type)
    return rows, reference.hadamard(reference.dequantize(rows, k_type, k.shape[2]), block)


def check(n_q, n_kv, h, h_kv, d, block, k_type, window, scheme, tol, mode="norm", n_rot=None, q_pos=None):
    q, k, v, _, seed = random_qkv(n_q, n_kv, h, h_kv, d, np.float32)
    k[:, :, 3] *= 20.0  # one outlier dim, what the rotation is for
    rows, k_ref = stored_keys(k, block, k_type)
    kw = dict(window=window, mode=mode, n_rot=n_rot, q_pos=q_pos, **SCHEMES[scheme])
    out = ggml_rerope.rerope_attention(q, rows, v, k_type=k_type, k_hadamard=block, **kw)
    ref = reference.rerope_attention(q, k_ref, v, **kw)
    err = rel_err(out, ref)
    assert err < tol, f"{k_type} B={block} {scheme} w={window}: rel err {err:.3g} (seed {seed})"


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("k_type", ["f32", "f16", "q8_0", "q4_0"])
def test_prefill_and_decode_match_the_reference(simd, k_type, scheme):
    d = 64
    for block in (64, 16):
        check(97, 97, 4, 2, d, block, k_type, 64, scheme, 1e-4)  # window at a tile edge
        check(3, 1500, 8, 2, d, block, k_type, 100, scheme, 1e-4)  # split-K decode
    check(1, 700, 4, 4, 128, 128, k_type, 700, scheme, 1e-4)  # window covering everything: near only


@pytest.mark.parametrize("mode", ["norm", "neox"])
def test_partial_rotary_and_no_rotary(simd, mode):
    check(40, 130, 2, 1, 64, 32, "q8_0", 50, "clamp", 1e-4, mode=mode, n_rot=32)
    check(40, 130, 2, 1, 64, 64, "q8_0", 50, "leaky", 1e-4, mode=mode, n_rot=0)


def test_explicit_positions(simd):
    q_pos = np.array([5000, 5001, 9000], np.int32)
    check(3, 2100, 4, 2, 64, 64, "q4_0", 256, "clamp", 1e-4, q_pos=q_pos)


def test_rotation_is_what_makes_q4_keys_accurate():
    """The point of the rotation: with an outlier dim, q4_0 of H k loses less than q4_0 of k."""
    q, k, v, _, _ = random_qkv(64, 512, 4, 2, 64, np.float32)
    k[:, :, 3] *= 20.0
    kw = dict(window=128)
    exact = reference.rerope_attention(q, k, v, **kw)
    plain = ggml_rerope.rerope_attention(q, k, v, k_type="q4_0", **kw)
    rows = kv_quant.quantize(reference.hadamard(k, 64).astype(np.float32), "q4_0")
    rotated = ggml_rerope.rerope_attention(q, rows, v, k_type="q4_0", k_hadamard=64, **kw)
    assert rel_err(rotated, exact) < 0.7 * rel_err(plain, exact)


def test_ggml_node_reads_rotated_keys():
    q, k, v, _, _ = random_qkv(1, 1300, 4, 2, 64, np.float32)  # decode-sized: partials + merge nodes
    rows, k_ref = stored_keys(k, 64, "q8_0")
    p = ffi.new("ggml_rerope_params *", lib.ggml_rerope_default_params(64))
    p.window = 200
    with GgmlContext(q.nbytes * 2 + rows.nbytes + v.nbytes + (64 << 20)) as g:
        tk = g.base.ggml_new_tensor_3d(g.ctx, kv_quant.TYPE_IDS["q8_0"], 64, 2, 1300)
        ffi.memmove(g.base.ggml_get_data(tk), memoryview(rows).cast("B"), rows.nbytes)
        out = lib.ggml_rerope_attn_hadamard_k(g.ctx, g.tensor(q), tk, g.tensor(v), ffi.NULL, ffi.NULL, p, 64)
        assert out != ffi.NULL, _binding.last_error()
        g.compute(g.graph(out), 2)
        node = g.array(out, q.shape)
        bad = lib.ggml_rerope_attn_hadamard_k(g.ctx, g.tensor(q), tk, g.tensor(v), ffi.NULL, ffi.NULL, p, 24)
        assert bad == ffi.NULL
        assert "k_hadamard" in _binding.last_error()
    ref = reference.rerope_attention(q, k_ref, v, window=200)
    assert rel_err(node, ref) < 1e-4


@pytest.mark.parametrize("block", [-2, 1, 3, 48, 128])
def test_bad_block_is_an_invalid_argument(block):
    q, k, v, _, _ = random_qkv(2, 8, 2, 1, 64, np.float32)
    with pytest.raises(InvalidArgumentError, match="k_hadamard"):
        ggml_rerope.rerope_attention(q, k, v, window=4, k_hadamard=block)


def test_reference_hadamard_is_orthonormal_and_its_own_inverse():
    h = reference.hadamard_matrix(32)
    np.testing.assert_allclose(h @ h, np.eye(32), atol=1e-12)
    np.testing.assert_allclose(h, h.T)
    x = np.random.default_rng().standard_normal((3, 64))
    np.testing.assert_allclose(reference.hadamard(reference.hadamard(x, 16), 16), x, atol=1e-12)
    with pytest.raises(ValueError):
        reference.hadamard_matrix(12)
