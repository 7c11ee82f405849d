"""The CUDA operator on K/V caches in ggml's storage formats (q8_0, q4_0, bf16, and K / V of
different types), against the float64 reference on the DEQUANTIZED inputs, on fresh random
inputs quantized by ggml_rerope.kv_quant (ggml's reference quantizers). Needs a CUDA build and a
visible GPU; otherwise every test is skipped with the reason.

The kernels read such caches through staged tiles (src/cuda/kv_staging.cuh): raw rows copied to
shared memory, dequantized there to f16. Decode (n_q <= 4) then runs the tensor-core decode kernel
(16-key tiles), prefill the prefill kernel (64-key tiles), so windows and lengths sit at and
around those edges. A dequantized value rounds to f16 exactly as an f16 cache of it would, so the
tolerances are the f16 ones of test_cuda.py, and decode on q8_0 rows must agree with decode on
f16 rows of the same values far more closely than that. Cache views that start at any row (not
16-byte aligned, as a multi-sequence cache hands the kernels) run on device pointers.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

import ggml_rerope
from attention_inputs import random_qkv, rel_err, shuffled_positions
from ggml_rerope import _binding, kv_quant, reference
from ggml_rerope.errors import InvalidArgumentError, UnsupportedError, raise_for_status

HAVE_GPU = bool(_binding.lib.ggml_rerope_cuda_available())
needs_gpu = pytest.mark.skipif(
    not HAVE_GPU, reason="no CUDA device visible, or the library was built with GGML_REROPE_CUDA=OFF")

TOL_PREFILL = 5e-3
TOL_DECODE = 2e-3

# (k_type, v_type): the same type for both, and mixed pairs (one half straight f16, or two types).
PAIRS = [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("bf16", "bf16"), ("q8_0", "f16"), ("f16", "q4_0"),
         ("q4_0", "q8_0")]
PAIR_IDS = [f"{k}-{v}" for k, v in PAIRS]


def sample_rows(rng, n_q, n_max=24):
    """All rows for small inputs; else the first, the last and random ones (the reference is slow)."""
    if n_q <= n_max:
        return None
    return np.unique(np.concatenate([[0, n_q - 1], rng.choice(n_q, n_max - 2, replace=False)]))


def stored(x, kv_type):
    """x (n, heads, d) floats -> (rows in kv_type as uint8, their float64 values)."""
    rows = kv_quant.quantize(x, kv_type)
    return rows, reference.dequantize(rows, kv_type, x.shape[-1])


def check(q, k, v, k_type, v_type, seed, rows=None, tol=None, **kw):
    kr, kd = stored(k, k_type)
    vr, vd = stored(v, v_type)
    out = ggml_rerope.rerope_attention(q, kr, vr, k_type=k_type, v_type=v_type, device="cuda", **kw)
    assert np.isfinite(out).all(), f"non-finite output (unwritten rows?) seed {seed}"
    ref = reference.rerope_attention(q, kd, vd, rows=rows, **kw)
    got = out if rows is None else out[rows]
    tol = tol or (TOL_DECODE if q.shape[0] <= 4 else TOL_PREFILL)
    err = rel_err(got, ref)
    assert err < tol, f"rel err {err:.3g} > {tol} ({k_type}/{v_type}, seed {seed}, {kw})"
    return out


@needs_gpu
@pytest.mark.parametrize("k_type, v_type", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize(
    "n, h, h_kv, d, window",
    [(63, 8, 2, 128, 63), (65, 4, 4, 64, 64), (129, 9, 3, 64, 65), (300, 4, 2, 128, 31), (1000, 8, 2, 128, 300)])
def test_prefill_vs_reference(n, h, h_kv, d, window, k_type, v_type):
    q, k, v, rng, seed = random_qkv(n, n, h, h_kv, d, np.float32)
    check(q, k, v, k_type, v_type, seed, rows=sample_rows(rng, n), window=window)


@needs_gpu
@pytest.mark.parametrize("k_type, v_type", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("n_q", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "n_kv, h, h_kv, d, window",
    [(1, 1, 1, 64, 1), (33, 9, 3, 64, 31), (65, 8, 2, 128, 64), (1001, 32, 8, 128, 500), (5003, 9, 3, 64, 33)])
def test_decode_vs_reference(n_q, n_kv, h, h_kv, d, window, k_type, v_type):
    if n_q > n_kv:
        pytest.skip("more queries than keys needs explicit positions")
    q, k, v, _, seed = random_qkv(n_q, n_kv, h, h_kv, d, np.float32)
    check(q, k, v, k_type, v_type, seed, window=window)


SCHEMES = {
    "leaky": dict(window=64, leaky=4.0),
    "group": dict(window=128, group=8),
    "logn": dict(window=100, logn_train_len=128),
    "neox_partial_rot": dict(window=65, mode="neox", n_rot=32),
    "norm_partial_rot": dict(window=127, n_rot=48),
    "noncausal": dict(window=50, causal=False),
    "leaky_logn_neox": dict(window=96, leaky=2.5, logn_train_len=64, mode="neox"),
}


@needs_gpu
@pytest.mark.parametrize("k_type, v_type", [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "f16")],
                         ids=["q8_0", "q4_0", "q8_0-f16"])
@pytest.mark.parametrize("n_q", [3, 300], ids=["decode", "prefill"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_schemes(scheme, n_q, k_type, v_type):
    """Every far mode (CLAMP above, LEAKY, GROUP), NEOX pairs and partial rotation: the far keys
    come raw from the cache (CLAMP) or rotated from the dequantized ones."""
    kw = dict(SCHEMES[scheme])
    d = 64
    q, k, v, rng, seed = random_qkv(n_q, 701, 9, 3, d, np.float32)
    if scheme == "leaky":
        kw["freq_factors"] = rng.uniform(0.25, 2.0, size=(d // 2,)).astype(np.float32)
    check(q, k, v, k_type, v_type, seed, rows=sample_rows(rng, n_q), **kw)


@needs_gpu
@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0"])
@pytest.mark.parametrize("n_q", [2, 200], ids=["decode", "prefill"])
def test_custom_positions(n_q, kv_type):
    """Shuffled key positions with gaps (tile bounds from the position ranges)."""
    n_kv, d = 500, 128
    q, k, v, rng, seed = random_qkv(n_q, n_kv, 8, 2, d, np.float32)
    q_pos, k_pos = shuffled_positions(rng, n_q, n_kv)
    check(q, k, v, kv_type, kv_type, seed, rows=sample_rows(rng, n_q), window=100, q_pos=q_pos, k_pos=k_pos)


@needs_gpu
@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0", "bf16"])
@pytest.mark.parametrize("n_q, n_kv, window", [(1, 4099, 1000), (4, 777, 33), (257, 257, 64)])
def test_same_as_f16_cache_of_the_values(n_q, n_kv, window, kv_type):
    """The staged tiles hold exactly the f16 values an f16 cache of the dequantized numbers holds,
    so decode must agree with the f16 kernel to rounding of the summation order (here: the same
    order); prefill rotates keys from the unrounded values, so it agrees to f16 rounding."""
    d = 128
    q, k, v, _, seed = random_qkv(n_q, n_kv, 32, 8, d, np.float32)
    kr, kd = stored(k, kv_type)
    vr, vd = stored(v, kv_type)
    kw = dict(window=window, logn_train_len=256)
    got = ggml_rerope.rerope_attention(q, kr, vr, k_type=kv_type, v_type=kv_type, device="cuda", **kw)
    f16 = ggml_rerope.rerope_attention(q, kd.astype(np.float16), vd.astype(np.float16), device="cuda", **kw)
    err = rel_err(got, f16)
    tol = 1e-5 if n_q <= 4 else 2e-3
    assert err < tol, f"{kv_type} vs f16 of its values: {err:.3g} (seed {seed})"


@needs_gpu
@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0"])
@pytest.mark.parametrize("n_q", [1, 300], ids=["decode", "prefill"])
def test_cpu_vs_cuda(n_q, kv_type):
    q, k, v, _, seed = random_qkv(n_q, 1000, 32, 8, 128, np.float32)
    kr, _ = stored(k, kv_type)
    vr, _ = stored(v, kv_type)
    kw = dict(window=128, logn_train_len=256, mode="neox", k_type=kv_type, v_type=kv_type)
    cpu = ggml_rerope.rerope_attention(q, kr, vr, device="cpu", **kw)
    gpu = ggml_rerope.rerope_attention(q, kr, vr, device="cuda", **kw)
    err = rel_err(gpu, cpu)
    assert err < TOL_PREFILL, f"CPU vs CUDA {err:.3g} ({kv_type}, seed {seed})"


@needs_gpu
@pytest.mark.parametrize("k_type, v_type, what", [("q4_1", "q4_1", "k_type is q4_1"),
                                                  ("q8_0", "q5_0", "v_type is q5_0"),
                                                  ("f32", "q8_0", "f32 K only with f32 V")])
def test_types_the_kernels_do_not_read(k_type, v_type, what):
    q, k, v, _, _ = random_qkv(4, 64, 4, 2, 64, np.float32)
    with pytest.raises(UnsupportedError, match=what):
        ggml_rerope.rerope_attention(q, k, v, k_type=k_type, v_type=v_type, window=8, device="cuda")


# ---------------------------------------------------------------- device pointers


class Cudart:
    """The CUDA runtime the library was linked with (found among the process's mapped files)."""

    def __init__(self):
        path = None
        with open("/proc/self/maps") as maps:
            for line in maps:
                if "libcudart.so" in line:
                    path = line.split()[-1]
                    break
        if path is None:
            pytest.skip("libcudart is not mapped into the process (static CUDA runtime?)")
        self.rt = ctypes.CDLL(path)

    def _ok(self, err, what):
        assert err == 0, f"{what}: cuda error {err}"

    def malloc(self, n):
        p = ctypes.c_void_p()
        self._ok(self.rt.cudaMalloc(ctypes.byref(p), ctypes.c_size_t(n)), "cudaMalloc")
        return p.value

    def upload(self, dev, arr):
        arr = np.ascontiguousarray(arr)
        self._ok(self.rt.cudaMemcpy(ctypes.c_void_p(dev), arr.ctypes.data_as(ctypes.c_void_p),
                                    ctypes.c_size_t(arr.nbytes), 1), "cudaMemcpy H2D")

    def download(self, arr, dev):
        self._ok(self.rt.cudaMemcpy(arr.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(dev),
                                    ctypes.c_size_t(arr.nbytes), 2), "cudaMemcpy D2H")

    def free(self, dev):
        self.rt.cudaFree(ctypes.c_void_p(dev))


def run_on_device(cuda, q, k_rows, v_rows, k_type, v_type, window, k_skip, v_skip):
    """ggml_rerope_attn_cuda on views that begin k_skip / v_skip bytes into their allocations; the
    bytes before and after each view are 0xFF (a NaN scale, were a kernel to read them as data)."""
    ffi, lib = _binding.ffi, _binding.lib
    n_q, n_head, d = q.shape
    n_kv, n_head_kv, _ = k_rows.shape
    out = np.empty_like(q)
    bufs = []
    try:
        def place(arr, skip):
            raw = np.full(skip + arr.nbytes + 64, 0xFF, np.uint8)
            raw[skip:skip + arr.nbytes] = np.ascontiguousarray(arr).view(np.uint8).ravel()
            dev = cuda.malloc(raw.nbytes)
            bufs.append(dev)
            cuda.upload(dev, raw)
            return dev + skip

        call = ffi.new("ggml_rerope_attn_call *")
        call.params = lib.ggml_rerope_default_params(d)
        call.params.window = window
        call.q = ffi.cast("const float *", place(q, 0))
        call.k = ffi.cast("const void *", place(k_rows, k_skip))
        call.v = ffi.cast("const void *", place(v_rows, v_skip))
        dev_out = place(out, 0)
        call.out = ffi.cast("float *", dev_out)
        call.n_q, call.n_head, call.n_kv, call.n_head_kv = n_q, n_head, n_kv, n_head_kv
        call.k_type, call.v_type = kv_quant.TYPE_IDS[k_type], kv_quant.TYPE_IDS[v_type]
        st = lib.ggml_rerope_attn_cuda(call, ffi.NULL)
        if st == 0:
            st = lib.ggml_rerope_cuda_synchronize(ffi.NULL)
        raise_for_status(st, _binding.last_error())
        cuda.download(out, dev_out)
        return out
    finally:
        for b in bufs:
            cuda.free(b)


@needs_gpu
@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0", "bf16"])
@pytest.mark.parametrize("n_q", [1, 3, 130], ids=["decode1", "decode3", "prefill"])
@pytest.mark.parametrize("d", [64, 128])
def test_cache_views_at_any_row(kv_type, n_q, d):
    """A view of a cache that starts at row r of a [tokens][heads] array begins r * heads *
    row_bytes bytes in: 4-, 8- or 12-byte aligned for block types (K and V shifted apart by a few
    more 4-byte steps, which also puts bf16 rows off 16 bytes). Same result as aligned rows."""
    n_kv, h, h_kv, window = 301, 6, 3, 40
    q, k, v, _, seed = random_qkv(n_q, n_kv, h, h_kv, d, np.float32)
    kr, _ = stored(k, kv_type)
    vr, _ = stored(v, kv_type)
    aligned = ggml_rerope.rerope_attention(q, kr, vr, k_type=kv_type, v_type=kv_type, window=window, device="cuda")
    cuda = Cudart()
    row = kv_quant.row_bytes(kv_type, d)
    for tokens_before, k_extra, v_extra in ((1, 0, 4), (2, 4, 8), (3, 8, 12), (7, 12, 0)):
        skip = tokens_before * h_kv * row
        got = run_on_device(cuda, q, kr, vr, kv_type, kv_type, window, skip + k_extra, skip + v_extra)
        assert np.isfinite(got).all(), f"{kv_type}: bytes outside the view were read (seed {seed})"
        err = rel_err(got, aligned)
        assert err < 1e-6, f"{kv_type} view {skip} bytes in (+{k_extra}, +{v_extra}): {err:.3g} (seed {seed})"


@needs_gpu
@pytest.mark.parametrize("kv_type, skip, alignment", [("f16", 8, "16-byte"), ("q8_0", 2, "4-byte")])
def test_misaligned_device_pointer(kv_type, skip, alignment):
    q, k, v, _, _ = random_qkv(1, 64, 4, 2, 64, np.float32)
    kr, _ = stored(k, kv_type)
    vr, _ = stored(v, kv_type)
    with pytest.raises(InvalidArgumentError, match=alignment):
        run_on_device(Cudart(), q, kr, vr, kv_type, kv_type, 8, skip, 0)
