"""rerope_attention: the fused ReRoPE attention operator on NumPy arrays.

Every argument is checked here (ValueError / TypeError naming it) before the C call;
the C entry checks again and its status maps to a typed exception.
"""

from __future__ import annotations

import numbers
import os

import numpy as np

from . import _binding
from .errors import CudaError, raise_for_status

FAR_CLAMP, FAR_LEAKY, FAR_GROUP = 0, 1, 2
MODES = {"norm": 0, "neox": 2}
KV_TYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}
_INT32_MAX = 2**31 - 1


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _array3(name, x, dtypes):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in dtypes:
        allowed = " or ".join(str(np.dtype(t)) for t in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}, got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"{name} must have 3 dimensions (tokens, heads, head_dim), got shape {x.shape}")
    if 0 in x.shape:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    # the kernel's online softmax drops NaN scores (a NaN row came back as zeros): refuse them here
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite: it holds NaN or infinity")
    return np.ascontiguousarray(x)


def _positions(name, pos, n):
    if pos is None:
        return None
    arr = np.asarray(pos)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if n and (arr.min() < 0 or arr.max() > _INT32_MAX):
        raise ValueError(f"{name} must hold positions in 0 .. 2^31-1")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _build_params(d, *, window, leaky, group, logn_train_len, base, mode, n_rot, freq_factors, scale, causal):
    """Checks the scalar parameters; returns (cffi params, keep-alive objects)."""
    if not _is_int(window):
        raise TypeError(f"window must be an int, got {type(window).__name__}")
    if window < 1 or window > _INT32_MAX:
        raise ValueError(f"window must be >= 1, got {window}")
    if leaky is not None and group is not None:
        raise ValueError("leaky and group are exclusive: pass at most one of them")
    if leaky is not None:
        if not _is_real(leaky):
            raise TypeError(f"leaky must be a number, got {type(leaky).__name__}")
        if not np.isfinite(leaky) or leaky < 1:
            raise ValueError(f"leaky (the slope divisor k) must be finite and >= 1, got {leaky}")
    if group is not None:
        if not _is_int(group):
            raise TypeError(f"group must be an int, got {type(group).__name__}")
        if group < 1 or group > _INT32_MAX:
            raise ValueError(f"group must be >= 1, got {group}")
    if logn_train_len is not None:
        if not _is_int(logn_train_len):
            raise TypeError(f"logn_train_len must be an int, got {type(logn_train_len).__name__}")
        if logn_train_len != 0 and not 2 <= logn_train_len <= _INT32_MAX:
            raise ValueError(f"logn_train_len must be 0 / None (off) or >= 2, got {logn_train_len}")
    if not _is_real(base):
        raise TypeError(f"base must be a number, got {type(base).__name__}")
    if not np.isfinite(base) or base <= 0:
        raise ValueError(f"base must be finite and > 0, got {base}")
    if not isinstance(mode, str):
        raise TypeError(f"mode must be 'norm' or 'neox', got {type(mode).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be 'norm' or 'neox', got {mode!r}")
    if n_rot is None:
        n_rot = d
    if not _is_int(n_rot):
        raise TypeError(f"n_rot must be an int, got {type(n_rot).__name__}")
    if n_rot < 0 or n_rot > d or n_rot % 2:
        raise ValueError(f"n_rot must be even and in 0..{d}, got {n_rot}")
    if scale is not None:
        if not _is_real(scale):
            raise TypeError(f"scale must be a number, got {type(scale).__name__}")
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be finite and > 0, got {scale}")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")

    ffi, lib = _binding.ffi, _binding.lib
    params = ffi.new("ggml_rerope_params *", lib.ggml_rerope_default_params(d))
    keep = []
    params.n_rot = n_rot
    params.rope_mode = MODES[mode]
    params.rope_base = float(base)
    params.window = int(window)
    if leaky is not None:
        params.far_mode = FAR_LEAKY
        params.leaky_k = float(leaky)
    elif group is not None:
        params.far_mode = FAR_GROUP
        params.group_size = int(group)
    else:
        params.far_mode = FAR_CLAMP
    params.logn_train_len = int(logn_train_len or 0)
    params.scale = 0.0 if scale is None else float(scale)
    params.causal = 1 if causal else 0
    if freq_factors is not None:
        ff = np.asarray(freq_factors)
        if ff.dtype.kind not in "fiu":
            raise TypeError(f"freq_factors must be numbers, got dtype {ff.dtype}")
        ff = np.ascontiguousarray(ff, dtype=np.float32)
        if ff.shape != (n_rot // 2,):
            raise ValueError(f"freq_factors must have shape ({n_rot // 2},) (n_rot / 2), got {ff.shape}")
        if not np.all(np.isfinite(ff)) or np.any(ff <= 0):
            raise ValueError("freq_factors must be finite and > 0")
        keep.append(ff)
        params.freq_factors = ffi.cast("const float *", ff.ctypes.data)
    return params, keep


def rerope_attention(q, k, v, *, window, leaky=None, logn_train_len=None, base=10000.0, mode="norm",
                     q_pos=None, k_pos=None, freq_factors=None, scale=None, threads=None, group=None,
                     n_rot=None, causal=True, device="cpu") -> np.ndarray:
    """Fused ReRoPE attention (see src/ggml_rerope.h for the math).

    q: (n_q, H, d) float32; k, v: (n_kv, H_kv, d) float32 or float16, keys unrotated,
    H % H_kv == 0. Default positions: keys 0..n_kv-1, queries the last n_q of them.
    window: w >= 1 (w >= context length is plain RoPE). leaky: Leaky ReRoPE slope
    divisor k >= 1; group: Self-Extend group size G (exclusive with leaky).
    logn_train_len: log-n query scaling with this training length (None/0: off).
    scale: score scale (None: 1/sqrt(d)). threads: CPU threads (None: GGML_REROPE_THREADS
    or all cores). device: "cpu", or "cuda" (ggml_rerope._cuda.run_cuda).
    Returns (n_q, H, d) float32.
    """
    q = _array3("q", q, (np.float32,))
    k = _array3("k", k, (np.float32, np.float16))
    v = _array3("v", v, (np.float32, np.float16))
    if k.dtype != v.dtype:
        raise TypeError(f"k and v must have the same dtype, got {k.dtype} and {v.dtype}")
    n_q, n_head, d = q.shape
    n_kv, n_head_kv, dk = k.shape
    if dk != d:  # before the v check: a wrong k must not be reported as a wrong v
        raise ValueError(f"k head size {dk} differs from q head size {d}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {k.shape}, got {v.shape}")
    if not 1 <= d <= 256:
        raise ValueError(f"q head size must be in 1..256, got {d}")
    if n_head % n_head_kv:
        raise ValueError(f"q heads ({n_head}) must be a multiple of k/v heads ({n_head_kv})")
    if max(n_q * n_head, n_kv * n_head_kv) * d > _INT32_MAX or n_kv > _INT32_MAX:
        raise ValueError("q, k or v is too large")
    qp = _positions("q_pos", q_pos, n_q)
    kp = _positions("k_pos", k_pos, n_kv)
    if qp is None and n_q > n_kv:
        raise ValueError(f"q_pos is required when q has more tokens ({n_q}) than k ({n_kv})")
    params, keep = _build_params(d, window=window, leaky=leaky, group=group, logn_train_len=logn_train_len,
                                 base=base, mode=mode, n_rot=n_rot, freq_factors=freq_factors, scale=scale,
                                 causal=causal)
    if threads is None:
        threads = int(os.environ.get("GGML_REROPE_THREADS", "0") or 0)
    elif not _is_int(threads):
        raise TypeError(f"threads must be an int, got {type(threads).__name__}")
    elif threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")

    out = np.empty((n_q, n_head, d), dtype=np.float32)
    if device == "cuda":
        _run_cuda(params, q, k, v, qp, kp, out)
        return out

    ffi, lib = _binding.ffi, _binding.lib

    def ptr(ctype, arr):
        return ffi.NULL if arr is None else ffi.cast(ctype, arr.ctypes.data)

    status = lib.ggml_rerope_attn_host(
        params, ptr("const float *", q), n_q, n_head, ptr("const int32_t *", qp),
        ptr("const void *", k), ptr("const void *", v), KV_TYPES[k.dtype], n_kv, n_head_kv,
        ptr("const int32_t *", kp), ptr("float *", out), int(threads))
    raise_for_status(status, _binding.last_error())
    del keep
    return out


def _run_cuda(params, q, k, v, q_pos, k_pos, out):
    """device="cuda": ggml_rerope._cuda.run_cuda(params, q, k, v, q_pos, k_pos, out) copies in,
    runs ggml_rerope_attn_cuda and writes `out` (params: cffi ggml_rerope_params *;
    q_pos/k_pos: int32 arrays or None)."""
    try:
        from ._cuda import run_cuda
    except ImportError as exc:
        raise CudaError(f"device='cuda' is not available: ggml_rerope._cuda.run_cuda cannot be imported ({exc})") from exc
    run_cuda(params, q, k, v, q_pos, k_pos, out)
