"""Bad input. The Python API raises TypeError/ValueError for what only Python checks (types,
dtypes, shapes) and passes every value rule to C, whose message it raises (ValueError for a bad
argument). The C entries (CPU, CUDA from host, CUDA on device pointers) run one validator: the
same status and message for the same bad call, with or without CUDA, and the output untouched."""

from __future__ import annotations

import cffi
import numpy as np
import pytest

import ggml_rerope
from ggml_rerope import _binding
from ggml_rerope.errors import CudaError

ffi, lib = _binding.ffi, _binding.lib
OK, INVALID, UNSUPPORTED, CUDA = (lib.GGML_REROPE_OK, lib.GGML_REROPE_ERR_INVALID_ARG, lib.GGML_REROPE_ERR_UNSUPPORTED,
                                  lib.GGML_REROPE_ERR_CUDA)


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
    ("q 2-D", lambda a: a.update(q=a["q"][0]), ValueError, "q"),
    ("k 4-D", lambda a: a.update(k=a["k"][None]), ValueError, "k"),
    ("empty q", lambda a: a.update(q=a["q"][:0]), ValueError, "q"),
    ("v shape", lambda a: a.update(v=a["v"][:-1]), ValueError, "v"),
    ("q NaN", lambda a: a["q"].__setitem__((0, 0, 0), np.nan), ValueError, "q must be finite"),
    ("k inf", lambda a: a["k"].__setitem__((1, 0, 0), np.inf), ValueError, "k must be finite"),
    ("v NaN f16", lambda a: a.update(v=np.full((9, 2, 64), np.nan, np.float16), k=a["k"].astype(np.float16)),
     ValueError, "v must be finite"),
    ("head size", lambda a: a.update(k=a["k"][..., :32], v=a["v"][..., :32]), ValueError, "head size"),
    ("k head size only", lambda a: a.update(k=a["k"][..., :32]), ValueError,
     "k head size 32 differs from q head size 64"),
    ("heads not multiple", lambda a: a.update(q=np.zeros((5, 3, 64), np.float32)), ValueError, "multiple"),
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


# ---------------------------------------------------------------- C entries

class Call:
    """A ggml_rerope_attn_call with valid arguments unless overridden, and the arrays it points to."""

    def __init__(self, n_q=5, n_head=4, n_kv=9, n_head_kv=2, kv_type=lib.GGML_REROPE_KV_F32, d=64, v_type=None,
                 **fields):
        qa, ka, va = arrays(d=d)
        self.out = np.full((5, 4, d), 123.0, dtype=np.float32)
        self.keep = [qa, ka, va]
        self.c = c = ffi.new("ggml_rerope_attn_call *")
        c.params = lib.ggml_rerope_default_params(d)
        c.params.window = 4
        c.q, c.k, c.v = self.ptr("const float *", qa), self.ptr("const void *", ka), self.ptr("const void *", va)
        c.out = self.ptr("float *", self.out)
        c.n_q, c.n_head, c.n_kv, c.n_head_kv = n_q, n_head, n_kv, n_head_kv
        c.k_type, c.v_type = kv_type, kv_type if v_type is None else v_type
        for key, value in fields.items():
            if key in ("q", "k", "v", "out", "q_pos", "k_pos"):
                setattr(c, key, ffi.NULL if value is None else self.ptr(ffi.typeof(getattr(c, key)), value))
            else:
                setattr(c.params, key, value)

    def ptr(self, ctype, arr):
        self.keep.append(arr)
        return ffi.cast(ctype, arr.ctypes.data)


def host(call):
    return lib.ggml_rerope_attn_host(call.c, 2), _binding.last_error()


def cuda_from_host(call):
    return lib.ggml_rerope_attn_cuda_from_host(call.c), _binding.last_error()


def cuda_device(call):
    """The device-pointer entry on host pointers: only meaningful where validation must stop it."""
    return lib.ggml_rerope_attn_cuda(call.c, ffi.NULL), _binding.last_error()


NEG_Q_POS = np.array([0, 1, -2, 3, 4], np.int32)
NEG_K_POS = np.array([0] * 8 + [-1], np.int32)
BAD_C = [
    # (description, Call arguments, status, text the message must contain)
    ("q NULL", dict(q=None), INVALID, "q is NULL"),
    ("k NULL", dict(k=None), INVALID, "k is NULL"),
    ("v NULL", dict(v=None), INVALID, "v is NULL"),
    ("out NULL", dict(out=None), INVALID, "out is NULL"),
    ("n_q 0", dict(n_q=0), INVALID, "n_q"),
    ("n_kv 0", dict(n_kv=0), INVALID, "n_kv"),
    ("n_head 0", dict(n_head=0), INVALID, "n_head"),
    ("n_head_kv 0", dict(n_head_kv=0), INVALID, "n_head_kv"),
    ("gqa", dict(n_head=4, n_head_kv=3), INVALID, "multiple"),
    ("k_type", dict(kv_type=99), UNSUPPORTED, "k_type 99"),
    ("v_type", dict(v_type=99), UNSUPPORTED, "v_type 99"),
    ("n_q > n_kv", dict(n_q=10), INVALID, "q_pos"),
    ("q_pos < 0", dict(q_pos=NEG_Q_POS), INVALID, "q_pos[2] is -2"),
    ("k_pos < 0", dict(k_pos=NEG_K_POS), INVALID, "k_pos[8] is -1"),
    ("window 0", dict(window=0), INVALID, "window"),
    ("leaky k < 1", dict(far_mode=lib.GGML_REROPE_FAR_LEAKY, leaky_k=0.5), INVALID, "leaky_k"),
    ("group 0", dict(far_mode=lib.GGML_REROPE_FAR_GROUP, group_size=0), INVALID, "group_size"),
    ("far_mode", dict(far_mode=7), INVALID, "far_mode"),
    ("chunk_len 0", dict(far_mode=lib.GGML_REROPE_FAR_CHUNK, chunk_len=0), INVALID, "chunk_len"),
    ("chunk_len half", dict(far_mode=lib.GGML_REROPE_FAR_CHUNK, window=64, chunk_len=32), INVALID, "chunk_len"),
    ("sliding_window", dict(sliding_window=-1), INVALID, "sliding_window"),
    ("sink_tokens", dict(sink_tokens=-1), INVALID, "sink_tokens"),
    ("head_dim", dict(head_dim=0), INVALID, "head_dim"),
    ("n_rot odd", dict(n_rot=3), INVALID, "n_rot"),
    ("rope_mode", dict(rope_mode=1), INVALID, "rope_mode"),
    ("base", dict(rope_base=-1.0), INVALID, "rope_base"),
    ("logn", dict(logn_train_len=1), INVALID, "logn_train_len"),
    ("scale", dict(scale=-1.0), INVALID, "scale"),
]
READS_POSITIONS = {"q_pos < 0", "k_pos < 0"}  # ggml_rerope_attn_cuda cannot read device positions


@pytest.mark.parametrize("what, kw, status, text", BAD_C, ids=[b[0] for b in BAD_C])
def test_c_entries_reject_alike_and_leave_output_untouched(what, kw, status, text):
    """The CPU entry and the CUDA entries (a CUDA build with or without a device, or a build
    without CUDA) return the same status and message: one validator runs first in each."""
    entries = [host, cuda_from_host] + ([] if what in READS_POSITIONS else [cuda_device])
    results = {}
    for entry in entries:
        call = Call(**kw)
        results[entry.__name__] = entry(call)
        assert np.all(call.out == 123.0), f"{entry.__name__} wrote the output on error"
    got, msg = results["host"]
    assert got == status, msg
    assert text in msg
    assert all(r == (got, msg) for r in results.values()), results


def test_c_entries_null_call():
    assert lib.ggml_rerope_attn_host(ffi.NULL, 1) == INVALID and _binding.last_error() == "call is NULL"
    assert lib.ggml_rerope_attn_cuda_from_host(ffi.NULL) == INVALID and _binding.last_error() == "call is NULL"
    assert lib.ggml_rerope_check_call(ffi.NULL) == INVALID


def test_check_call_is_the_entries_validator():
    for what, kw, _, _ in BAD_C:
        if what in READS_POSITIONS:
            continue
        call = Call(**kw)
        got = lib.ggml_rerope_check_call(call.c), _binding.last_error()
        assert got == host(Call(**kw)), what
    assert lib.ggml_rerope_check_call(Call(q_pos=NEG_Q_POS).c) == OK  # does not read buffers


def test_valid_call_on_cuda_entries_without_a_device():
    """A valid call: OK on the CPU; on CUDA OK with a device, else ERR_CUDA (also in a build
    without CUDA), and the CUDA-only limits come before the device check."""
    call = Call()
    assert host(call) == (OK, "")
    if lib.ggml_rerope_cuda_available():
        pytest.skip("a CUDA device is present: valid calls are covered by tests/test_cuda.py")
    got, msg = cuda_from_host(Call())
    assert got == CUDA and ("no CUDA device" in msg or "no CUDA kernels" in msg), msg
    assert cuda_device(Call())[0] == CUDA


def test_host_entry_reports_failed_workspace_allocation():
    hooks = cffi.FFI()
    hooks.cdef("void ggml_rerope_test_fail_allocs(int32_t n);")
    hook = hooks.dlopen(str(lib.path))
    call = Call()
    hook.ggml_rerope_test_fail_allocs(1)
    try:
        got, msg = host(call)
    finally:
        hook.ggml_rerope_test_fail_allocs(0)
    assert got == lib.GGML_REROPE_ERR_NO_MEMORY and "workspace" in msg
    assert np.all(call.out == 123.0)
    assert host(Call()) == (OK, "")


def test_c_entry_ok_clears_message():
    host(Call(n_q=0))
    assert host(Call()) == (OK, "")


def test_python_value_errors_carry_the_c_message():
    """One message source: a value rule broken through Python reads as the C entry reports it."""
    q, k, v = arrays()
    cases = [(dict(window=0), dict(window=0)), (dict(leaky=0.5), dict(far_mode=lib.GGML_REROPE_FAR_LEAKY, leaky_k=0.5)),
             (dict(k_pos=NEG_K_POS), dict(k_pos=NEG_K_POS)), (dict(n_rot=31), dict(n_rot=31))]
    for py_kw, c_kw in cases:
        with pytest.raises(ValueError) as info:
            ggml_rerope.rerope_attention(q, k, v, **{"window": 4, **py_kw})
        assert str(info.value) == host(Call(**c_kw))[1], py_kw


def test_simd_settings():
    assert lib.ggml_rerope_set_simd(lib.GGML_REROPE_SIMD_NEON + 1) == INVALID
    assert lib.ggml_rerope_simd_supported(lib.GGML_REROPE_SIMD_SCALAR) == 1
    for s in (lib.GGML_REROPE_SIMD_AVX2, lib.GGML_REROPE_SIMD_AVX512, lib.GGML_REROPE_SIMD_NEON):
        if not lib.ggml_rerope_simd_supported(s):
            assert lib.ggml_rerope_set_simd(s) == UNSUPPORTED
    assert lib.ggml_rerope_set_simd(lib.GGML_REROPE_SIMD_AUTO) == OK
    name = ffi.string(lib.ggml_rerope_simd_name(lib.ggml_rerope_get_simd())).decode()
    assert name in ("scalar", "avx2", "avx512", "neon")
