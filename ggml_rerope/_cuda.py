"""device="cuda" for rerope_attention: copies NumPy inputs to the GPU, runs the CUDA kernel
(ggml_rerope_attn_cuda_from_host), copies the result back.

attention.py checks every argument first and calls run_cuda(params, q, k, v, q_pos, k_pos, out).
"""

from __future__ import annotations

import numpy as np

from . import _binding
from .errors import CudaError, raise_for_status

_KV_TYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}


def cuda_available() -> bool:
    """True if the library has CUDA kernels and a device is visible."""
    return bool(_binding.lib.ggml_rerope_cuda_available())


def run_cuda(params, q, k, v, q_pos, k_pos, out) -> None:
    """Runs the CUDA operator on host arrays and writes `out` (n_q, H, d) float32.

    params: cffi `ggml_rerope_params *`; q: (n_q, H, d) float32 C-contiguous; k, v:
    (n_kv, H_kv, d) float32 or float16 C-contiguous, same dtype; q_pos / k_pos: int32
    arrays or None (defaults). Raises CudaError without a CUDA build or device,
    UnsupportedError for a head size the kernels are not built for (64 and 128 are).
    """
    ffi, lib = _binding.ffi, _binding.lib
    if not lib.ggml_rerope_cuda_available():
        raise CudaError("no CUDA device is visible, or this build of ggml_rerope has no CUDA kernels")
    for name, arr in (("q", q), ("k", k), ("v", v), ("out", out)):
        if not (isinstance(arr, np.ndarray) and arr.flags.c_contiguous):
            raise TypeError(f"{name} must be a C-contiguous numpy.ndarray")
    if q.dtype != np.float32 or out.dtype != np.float32:
        raise TypeError("q and out must be float32")
    if k.dtype != v.dtype or k.dtype not in _KV_TYPES:
        raise TypeError(f"k and v must both be float32 or float16, got {k.dtype} and {v.dtype}")
    n_q, n_head, _ = q.shape
    n_kv, n_head_kv, _ = k.shape

    def ptr(ctype, arr):
        return ffi.NULL if arr is None else ffi.cast(ctype, arr.ctypes.data)

    qp = None if q_pos is None else np.ascontiguousarray(q_pos, dtype=np.int32)
    kp = None if k_pos is None else np.ascontiguousarray(k_pos, dtype=np.int32)
    status = lib.ggml_rerope_attn_cuda_from_host(
        params, ptr("const float *", q), n_q, n_head, ptr("const int32_t *", qp),
        ptr("const void *", k), ptr("const void *", v), _KV_TYPES[k.dtype], n_kv, n_head_kv,
        ptr("const int32_t *", kp), ptr("float *", out))
    raise_for_status(status, _binding.last_error())
