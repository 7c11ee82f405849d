"""Bad input: the Python API raises ValueError/TypeError naming the argument before any C
call; the C entry (through the binding) returns a status with a message and leaves a
preallocated output untouched."""

from __future__ import annotations

import numpy as np
import pytest

import ggml_rerope
from ggml_rerope import _binding
from ggml_rerope.errors import CudaError

ffi, lib = _binding.ffi, _binding.lib
OK, INVALID, UNSUPPORTED = 0, 1, 2


def arrays(n_q=5, n_kv=9, h=4, h_kv=2, d=64, kv=np.float32):
    rng = np.random.default_rng()
    return (rng.standard_normal((n_q, h, d)).astype(np.float32), rng.standard_normal((n_kv, h_kv, d)).astype(kv),
            rng.standard_normal((n_kv, h_kv, d)).astype(kv))


# ---------------------------------------------------------------- Python API

BAD_CALLS = [
    # (description, change to apply, exception, text the message must contain)
    ("q list", lambda a: a.update(q=a["q"].tolist()), TypeError, "q"),
    ("q float64", lambda a: a.update(q=a["q"].astype(np.float64)), TypeError, "q"),
    ("k int", lambda a: a.update(k=a["k"].astype(np.int32)), TypeError, "k"),
    ("v float64", lambda a: a.update(v=a["v"].astype(np.float64)), TypeError, "v"),
    ("k/v dtypes differ", lambda a: a.update(v=a["v"].astype(np.float16)), TypeError, "v"),
    ("q 2-D", lambda a: a.update(q=a["q"][0]), ValueError, "q"),
    ("k 4-D", lambda a: a.update(k=a["k"][None]), ValueError, "k"),
    ("empty q", lambda a: a.update(q=a["q"][:0]), ValueError, "q"),
    ("v shape", lambda a: a.update(v=a["v"][:-1]), ValueError, "v"),
    ("q NaN", lambda a: a["q"].__setitem__((0, 0, 0), np.nan), ValueError, "q must be finite"),
    ("k inf", lambda a: a["k"].__setitem__((1, 0, 0), np.inf), ValueError, "k must be finite"),
    ("v NaN f16", lambda a: a.update(v=np.full((9, 2, 64), np.nan, np.float16), k=a["k"].astype(np.float16)),
     ValueError, "v must be finite"),
    ("head size", lambda a: a.update(k=a["k"][..., :32], v=a["v"][..., :32]), ValueError, "head size"),
    ("k head size only", lambda a: a.update(k=a["k"][..., :32]), ValueError, "k head size 32 differs from q head size 64"),
    ("heads not multiple", lambda a: a.update(q=np.zeros((5, 3, 64), np.float32)), ValueError, "heads"),
    ("window 0", lambda a: a.update(window=0), ValueError, "window"),
    ("window float", lambda a: a.update(window=3.5), TypeError, "window"),
    ("leaky < 1", lambda a: a.update(leaky=0.5), ValueError, "leaky"),
    ("leaky str", lambda a: a.update(leaky="2"), TypeError, "leaky"),
    ("leaky and group", lambda a: a.update(leaky=2.0, group=4), ValueError, "group"),
    ("group 0", lambda a: a.update(group=0), ValueError, "group"),
    ("logn 1", lambda a: a.update(logn_train_len=1), ValueError, "logn_train_len"),
    ("base 0", lambda a: a.update(base=0.0), ValueError, "base"),
    ("base nan", lambda a: a.update(base=float("nan")), ValueError, "base"),
    ("mode", lambda a: a.update(mode="gptj"), ValueError, "mode"),
    ("n_rot odd", lambda a: a.update(n_rot=31), ValueError, "n_rot"),
    ("n_rot > d", lambda a: a.update(n_rot=66), ValueError, "n_rot"),
    ("q_pos shape", lambda a: a.update(q_pos=np.arange(4)), ValueError, "q_pos"),
    ("q_pos float", lambda a: a.update(q_pos=np.arange(5.0)), TypeError, "q_pos"),
    ("k_pos negative", lambda a: a.update(k_pos=np.arange(9) - 1), ValueError, "k_pos"),
    ("freq_factors shape", lambda a: a.update(freq_factors=np.ones(31)), ValueError, "freq_factors"),
    ("freq_factors <= 0", lambda a: a.update(freq_factors=np.zeros(32)), ValueError, "freq_factors"),
    ("scale negative", lambda a: a.update(scale=-1.0), ValueError, "scale"),
    ("threads 0", lambda a: a.update(threads=0), ValueError, "threads"),
    ("causal str", lambda a: a.update(causal="yes"), TypeError, "causal"),
    ("device", lambda a: a.update(device="tpu"), ValueError, "device"),
    ("n_q > n_kv without q_pos", lambda a: a.update(q=np.zeros((10, 4, 64), np.float32)), ValueError, "q_pos"),
]


@pytest.mark.parametrize("what, change, exc, text", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_python_api_rejects(what, change, exc, text):
    q, k, v = arrays()
    args = dict(q=q, k=k, v=v, window=4)
    change(args)
    with pytest.raises(exc, match=text):
        ggml_rerope.rerope_attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


def test_cuda_device_raises_cuda_error_when_unavailable():
    if lib.ggml_rerope_cuda_available():
        pytest.skip("a CUDA device is present: device='cuda' is covered by the CUDA tests")
    q, k, v = arrays()
    with pytest.raises(CudaError):
        ggml_rerope.rerope_attention(q, k, v, window=4, device="cuda")


# ---------------------------------------------------------------- C entry

def c_call(params=None, q=None, n_q=5, n_head=4, q_pos=None, k=None, v=None, kv_type=0, n_kv=9, n_head_kv=2,
           k_pos=None, out=None, threads=2, d=64):
    """ggml_rerope_attn_host with valid arguments unless overridden; returns (status, message)."""
    qa, ka, va = arrays(d=d)
    keep = [qa, ka, va]

    def p(ctype, x, default):
        if x is None:
            x = default
        if isinstance(x, str) and x == "NULL":
            return ffi.NULL
        if isinstance(x, np.ndarray):
            keep.append(x)
            return ffi.cast(ctype, x.ctypes.data)
        return x

    if params is None:
        params = ffi.new("ggml_rerope_params *", lib.ggml_rerope_default_params(d))
        params.window = 4
    status = lib.ggml_rerope_attn_host(
        params, p("const float *", q, qa), n_q, n_head, p("const int32_t *", q_pos, "NULL"),
        p("const void *", k, ka), p("const void *", v, va), kv_type, n_kv, n_head_kv,
        p("const int32_t *", k_pos, "NULL"), p("float *", out, "NULL"), threads)
    return status, _binding.last_error()


def params_with(**fields):
    params = ffi.new("ggml_rerope_params *", lib.ggml_rerope_default_params(fields.pop("head_dim", 64)))
    params.window = 4
    for key, value in fields.items():
        setattr(params, key, value)
    return params


BAD_C = [
    ("params NULL", dict(params=ffi.NULL), INVALID, "params"),
    ("q NULL", dict(q="NULL"), INVALID, "q is NULL"),
    ("k NULL", dict(k="NULL"), INVALID, "k is NULL"),
    ("v NULL", dict(v="NULL"), INVALID, "v is NULL"),
    ("n_q 0", dict(n_q=0), INVALID, "n_q"),
    ("n_kv 0", dict(n_kv=0), INVALID, "n_kv"),
    ("n_head 0", dict(n_head=0), INVALID, "n_head"),
    ("n_head_kv 0", dict(n_head_kv=0), INVALID, "n_head_kv"),
    ("gqa", dict(n_head=4, n_head_kv=3), INVALID, "multiple"),
    ("kv_type", dict(kv_type=8), UNSUPPORTED, "kv_type"),
    ("n_q > n_kv", dict(n_q=10), INVALID, "q_pos"),
    ("q_pos < 0", dict(q_pos=np.array([0, 1, -2, 3, 4], np.int32)), INVALID, "q_pos"),
    ("k_pos < 0", dict(k_pos=np.array([0] * 8 + [-1], np.int32)), INVALID, "k_pos"),
    ("window 0", dict(params=params_with(window=0)), INVALID, "window"),
    ("leaky k < 1", dict(params=params_with(far_mode=1, leaky_k=0.5)), INVALID, "leaky_k"),
    ("group 0", dict(params=params_with(far_mode=2, group_size=0)), INVALID, "group_size"),
    ("far_mode", dict(params=params_with(far_mode=7)), INVALID, "far_mode"),
    ("head_dim", dict(params=params_with(head_dim=0)), INVALID, "head_dim"),
    ("n_rot odd", dict(params=params_with(n_rot=3)), INVALID, "n_rot"),
    ("rope_mode", dict(params=params_with(rope_mode=1)), INVALID, "rope_mode"),
    ("base", dict(params=params_with(rope_base=-1.0)), INVALID, "rope_base"),
    ("logn", dict(params=params_with(logn_train_len=1)), INVALID, "logn_train_len"),
    ("scale", dict(params=params_with(scale=-1.0)), INVALID, "scale"),
]


@pytest.mark.parametrize("what, kw, status, text", BAD_C, ids=[b[0] for b in BAD_C])
def test_c_entry_rejects_and_leaves_output_untouched(what, kw, status, text):
    out = np.full((5, 4, 64), 123.0, dtype=np.float32)
    got, msg = c_call(out=out, **kw)
    assert got == status, msg
    assert text in msg
    assert np.all(out == 123.0), "output was written on error"


def test_c_entry_out_null():
    got, msg = c_call(out="NULL")
    assert got == INVALID and "out" in msg


def test_c_entry_ok_clears_message():
    c_call(n_q=0)
    out = np.zeros((5, 4, 64), np.float32)
    got, msg = c_call(out=out)
    assert got == OK and msg == ""


def test_simd_settings():
    assert lib.ggml_rerope_set_simd(9) == INVALID
    assert lib.ggml_rerope_simd_supported(0) == 1
    for s in (1, 2, 3):
        if not lib.ggml_rerope_simd_supported(s):
            assert lib.ggml_rerope_set_simd(s) == UNSUPPORTED
    assert lib.ggml_rerope_set_simd(-1) == OK
    assert ffi.string(lib.ggml_rerope_simd_name(lib.ggml_rerope_get_simd())).decode() in ("scalar", "avx2", "avx512", "neon")
