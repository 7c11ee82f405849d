"""ggml_rerope_attn as a node of a real ggml graph, computed by ggml's CPU threads, equals the
raw host call (prefill: one node; decode: split-K partials node + merge node), and refuses bad
input with the host entry's status and message (at build, or at compute for position values,
reported by ggml_rerope_graph_status). A failed workspace allocation inside the compute is
tested in tests/c/test_node_errors.c (it needs the library's test hook)."""

from __future__ import annotations

import numpy as np
import pytest

import ggml_rerope
from ggml_rerope import _binding
from ggml_rerope.bench.ggml_graphs import GgmlContext, rerope_node

ffi, lib = _binding.ffi, _binding.lib


def params_for(d, window, **fields):
    p = ffi.new("ggml_rerope_params *", lib.ggml_rerope_default_params(d))
    p.window = window
    for key, value in fields.items():
        setattr(p, key, value)
    return p


@pytest.mark.parametrize("kv", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("n_q, n_kv, threads", [(200, 200, 2), (77, 300, 3), (1, 2500, 2), (3, 4000, 4)])
def test_node_equals_raw_call(kv, n_q, n_kv, threads):
    rng = np.random.default_rng()
    d, h, h_kv = 64, 9, 3
    q = rng.standard_normal((n_q, h, d)).astype(np.float32)
    k = rng.standard_normal((n_kv, h_kv, d)).astype(kv)
    v = rng.standard_normal((n_kv, h_kv, d)).astype(kv)
    p = params_for(d, 100, far_mode=lib.GGML_REROPE_FAR_LEAKY, leaky_k=4.0, logn_train_len=64)
    node = rerope_node(q, k, v, p, threads=threads)
    raw = ggml_rerope.rerope_attention(q, k, v, window=100, leaky=4.0, logn_train_len=64, threads=2)
    np.testing.assert_allclose(node, raw, rtol=1e-6, atol=1e-7)


def test_node_with_positions_and_neox():
    rng = np.random.default_rng()
    d = 128
    q = rng.standard_normal((40, 8, d)).astype(np.float32)
    k = rng.standard_normal((500, 2, d)).astype(np.float16)
    v = rng.standard_normal((500, 2, d)).astype(np.float16)
    q_pos = np.arange(460, 500, dtype=np.int32) + 1000
    k_pos = np.arange(500, dtype=np.int32) + 1000
    p = params_for(d, 64, rope_mode=lib.GGML_REROPE_MODE_NEOX)
    node = rerope_node(q, k, v, p, q_pos=q_pos, k_pos=k_pos, threads=2)
    raw = ggml_rerope.rerope_attention(q, k, v, window=64, mode="neox", q_pos=q_pos, k_pos=k_pos)
    np.testing.assert_allclose(node, raw, rtol=1e-6, atol=1e-7)


def test_node_on_a_cache_view():
    """K/V as views of a larger cache (first n_kv tokens), as a runtime passes them."""
    rng = np.random.default_rng()
    d, n_ctx, n_kv = 64, 300, 180
    q = rng.standard_normal((20, 4, d)).astype(np.float32)
    kc = rng.standard_normal((n_ctx, 2, d)).astype(np.float16)
    vc = rng.standard_normal((n_ctx, 2, d)).astype(np.float16)
    p = params_for(d, 50)
    with GgmlContext(64 << 20) as g:
        tq, tk, tv = g.tensor(q), g.tensor(kc), g.tensor(vc)
        views = [g.base.ggml_view_3d(g.ctx, t, d, 2, n_kv, d * 2, d * 2 * 2, 0) for t in (tk, tv)]
        out = lib.ggml_rerope_attn(g.ctx, tq, views[0], views[1], ffi.NULL, ffi.NULL, p)
        assert out != ffi.NULL, _binding.last_error()
        g.compute(g.graph(out), 2)
        node = g.array(out, q.shape)
    raw = ggml_rerope.rerope_attention(q, kc[:n_kv], vc[:n_kv], window=50)
    np.testing.assert_allclose(node, raw, rtol=1e-6, atol=1e-7)


def test_node_rejects_bad_input():
    with GgmlContext(16 << 20) as g:
        q = g.tensor(np.zeros((4, 4, 64), np.float32))
        k = g.tensor(np.zeros((8, 3, 64), np.float16))
        assert lib.ggml_rerope_attn(g.ctx, q, k, k, ffi.NULL, ffi.NULL, params_for(64, 8)) == ffi.NULL
        assert "multiple" in _binding.last_error()
        k2 = g.tensor(np.zeros((8, 2, 64), np.int32))
        assert lib.ggml_rerope_attn(g.ctx, q, k2, k2, ffi.NULL, ffi.NULL, params_for(64, 8)) == ffi.NULL
        assert "k must be f32, f16, bf16, q8_0" in _binding.last_error()
        assert "got i32" in _binding.last_error()
        k3 = g.tensor(np.zeros((8, 2, 64), np.float16))
        assert lib.ggml_rerope_attn(g.ctx, q, k3, k3, ffi.NULL, ffi.NULL, params_for(64, 0)) == ffi.NULL
        assert "window" in _binding.last_error()
        bad_pos = g.tensor(np.zeros(3, np.int32))
        assert lib.ggml_rerope_attn(g.ctx, q, k3, k3, bad_pos, ffi.NULL, params_for(64, 8)) == ffi.NULL
        assert "q_pos" in _binding.last_error()
        assert lib.ggml_rerope_attn(g.ctx, q, k3, k3, ffi.NULL, ffi.NULL, ffi.NULL) == ffi.NULL


def host_message(q, k, p, **fields):
    """Status and message of the host entry for the call the node would make."""
    call = ffi.new("ggml_rerope_attn_call *")
    call.params = p[0]
    out = np.zeros(q.shape, np.float32)
    call.q = ffi.cast("const float *", q.ctypes.data)
    call.k = call.v = ffi.cast("const void *", k.ctypes.data)
    call.out = ffi.cast("float *", out.ctypes.data)
    call.n_q, call.n_head, call.n_kv, call.n_head_kv = q.shape[0], q.shape[1], k.shape[0], k.shape[1]
    call.k_type = call.v_type = lib.GGML_REROPE_KV_F16
    keep = []
    for name, arr in fields.items():
        keep.append(arr)
        setattr(call, name, ffi.cast("const int32_t *", arr.ctypes.data))
    return lib.ggml_rerope_attn_host(call, 1), _binding.last_error()


@pytest.mark.parametrize("n_q, n_head, n_kv, n_head_kv, window", [(4, 4, 8, 3, 8), (4, 4, 8, 2, 0), (9, 4, 8, 2, 8)],
                         ids=["gqa", "window", "default q_pos"])
def test_node_refuses_like_the_host_entry(n_q, n_head, n_kv, n_head_kv, window):
    q = np.zeros((n_q, n_head, 64), np.float32)
    k = np.zeros((n_kv, n_head_kv, 64), np.float16)
    p = params_for(64, window)
    with GgmlContext(16 << 20) as g:
        assert lib.ggml_rerope_attn(g.ctx, g.tensor(q), g.tensor(k), g.tensor(k), ffi.NULL, ffi.NULL, p) == ffi.NULL
        node = (lib.GGML_REROPE_ERR_INVALID_ARG, _binding.last_error())
    assert node == host_message(q, k, p)


@pytest.mark.parametrize("n_q, n_kv", [(6, 40), (1, 2048)], ids=["prefill", "split-K"])
def test_negative_position_is_reported_after_compute(n_q, n_kv):
    rng = np.random.default_rng()
    q = rng.standard_normal((n_q, 4, 64)).astype(np.float32)
    k = rng.standard_normal((n_kv, 2, 64)).astype(np.float16)
    k_pos = np.arange(n_kv, dtype=np.int32)
    k_pos[n_kv // 2] = -7
    p = params_for(64, 16)
    with pytest.raises(ValueError) as info:
        rerope_node(q, k, k, p, k_pos=k_pos, threads=2)
    assert (lib.GGML_REROPE_ERR_INVALID_ARG, str(info.value)) == host_message(q, k, p, k_pos=k_pos)
    assert f"k_pos[{n_kv // 2}] is -7" in str(info.value)


def test_node_status_of_other_tensors():
    with GgmlContext(1 << 20) as g:
        t = g.tensor(np.zeros(4, np.float32))
        assert lib.ggml_rerope_node_status(t) == lib.GGML_REROPE_ERR_INVALID_ARG
        assert lib.ggml_rerope_graph_status(g.graph(t)) == lib.GGML_REROPE_OK
