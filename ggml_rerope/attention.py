"""rerope_attention: the fused ReRoPE attention operator on NumPy arrays.

This layer checks what only Python can: argument types, dtypes, array shapes, that values fit
the C fields, and finiteness of q/k/v (C does not scan them). Every value rule (window >= 1,
n_rot even, positions >= 0, heads a multiple of kv heads, ...) is the C validator's, whose
status maps to a typed exception (ValueError for a bad argument) with its message, so there is
one message for one rule on the CPU and on CUDA.
"""

from __future__ import annotations

import numbers
import os

import numpy as np

from . import _binding, kv_quant
from .errors import raise_for_status

_lib = _binding.lib
MODES = {"norm": _lib.GGML_REROPE_MODE_NORM, "neox": _lib.GGML_REROPE_MODE_NEOX}
KV_TYPES = {np.dtype(np.float32): _lib.GGML_REROPE_KV_F32, np.dtype(np.float16): _lib.GGML_REROPE_KV_F16}
_KV_DTYPES = {"f32": np.float32, "f16": np.float16}
_INT32_MAX = 2**31 - 1


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _int32(name, x):
    """An int for an int32_t field: the type here, the value range C's (only the width here)."""
    if not _is_int(x):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if not -_INT32_MAX - 1 <= x <= _INT32_MAX:
        raise ValueError(f"{name} must fit in 32 bits, got {x}")
    return int(x)


def _real(name, x):
    if not _is_real(x):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    return float(x)


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


def _kv_rows(name, x, kv_type, head_dim):
    """k or v for the call: (array the buffer points into, ggml_rerope_kv_type id).
    kv_type None: x is float32 / float16, passed as it is. A type name: a float array
    (tokens, heads, head_dim) is converted to it here (kv_quant.quantize), a uint8 array
    (tokens, heads, row bytes) is taken as rows already in it."""
    if kv_type is None:
        return _array3(name, x, (np.float32, np.float16)), None
    if not isinstance(kv_type, str):
        raise TypeError(f"{name}_type must be a str such as 'q8_0', got {type(kv_type).__name__}")
    if kv_type not in kv_quant.TYPE_IDS:
        raise ValueError(f"{name}_type must be one of {', '.join(kv_quant.TYPE_IDS)}, got {kv_type!r}")
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        rows = _array3(name, x, (np.uint8,))
        nbytes = kv_quant.row_bytes(kv_type, head_dim)
        if rows.shape[2] != nbytes:
            raise ValueError(f"{name} rows of {kv_type} at head_dim {head_dim} are {nbytes} bytes, got {rows.shape[2]}")
        if not kv_quant.scales_finite(rows, kv_type):
            raise ValueError(f"{name} must be finite: it holds NaN or infinity")
        return rows, kv_quant.TYPE_IDS[kv_type]
    x = _array3(name, x, (np.float32, np.float16))
    if x.shape[2] != head_dim:
        return x, None  # the caller reports the head size
    if kv_type in _KV_DTYPES:
        return np.ascontiguousarray(x, dtype=_KV_DTYPES[kv_type]), kv_quant.TYPE_IDS[kv_type]
    kv_quant.row_bytes(kv_type, head_dim)  # ValueError for a head_dim the blocks cannot take
    return kv_quant.quantize(x, kv_type), kv_quant.TYPE_IDS[kv_type]


def _positions(name, pos, n):
    if pos is None:
        return None
    arr = np.asarray(pos)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if n and (arr.min() < -_INT32_MAX - 1 or arr.max() > _INT32_MAX):
        raise ValueError(f"{name} must fit in 32 bits")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _fill_params(params, *, window, leaky, group, chunk, logn_train_len, base, mode, n_rot, freq_factors, scale,
                 causal, sliding_window, sink_tokens):
    """Writes the scalar arguments into a cffi ggml_rerope_params (types here, values in C);
    returns the arrays the params point into (keep them alive until the call)."""
    if sum(x is not None for x in (leaky, group, chunk)) > 1:
        raise ValueError("leaky, group and chunk are exclusive: pass at most one of them")
    if not isinstance(mode, str):
        raise TypeError(f"mode must be 'norm' or 'neox', got {type(mode).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be 'norm' or 'neox', got {mode!r}")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    params.window = _int32("window", window)
    if leaky is not None:
        params.far_mode = _lib.GGML_REROPE_FAR_LEAKY
        params.leaky_k = _real("leaky", leaky)
    elif group is not None:
        params.far_mode = _lib.GGML_REROPE_FAR_GROUP
        params.group_size = _int32("group", group)
    elif chunk is not None:
        params.far_mode = _lib.GGML_REROPE_FAR_CHUNK
        params.chunk_len = _int32("chunk", chunk)
    else:
        params.far_mode = _lib.GGML_REROPE_FAR_CLAMP
    params.logn_train_len = 0 if logn_train_len is None else _int32("logn_train_len", logn_train_len)
    params.rope_base = _real("base", base)
    params.rope_mode = MODES[mode]
    if n_rot is not None:
        params.n_rot = _int32("n_rot", n_rot)
    params.scale = 0.0 if scale is None else _real("scale", scale)
    params.causal = 1 if causal else 0
    params.sliding_window = _int32("sliding_window", sliding_window)
    params.sink_tokens = _int32("sink_tokens", sink_tokens)
    keep = []
    if freq_factors is not None:
        ff = np.asarray(freq_factors)
        if ff.dtype.kind not in "fiu":
            raise TypeError(f"freq_factors must be numbers, got dtype {ff.dtype}")
        ff = np.ascontiguousarray(ff, dtype=np.float32)
        half = params.n_rot // 2
        if ff.shape != (half,):  # C cannot see the length of the array
            raise ValueError(f"freq_factors must have shape ({half},) (n_rot / 2), got {ff.shape}")
        keep.append(ff)
        params.freq_factors = _binding.ffi.cast("const float *", ff.ctypes.data)
    return keep


def rerope_attention(q, k, v, *, window, leaky=None, logn_train_len=None, base=10000.0, mode="norm",
                     q_pos=None, k_pos=None, freq_factors=None, scale=None, threads=None, group=None,
                     n_rot=None, causal=True, device="cpu", k_type=None, v_type=None, k_hadamard=0, chunk=None,
                     sliding_window=0, sink_tokens=0) -> np.ndarray:
    """Fused ReRoPE attention (see src/ggml_rerope.h for the math).

    q: (n_q, H, d) float32; k, v: (n_kv, H_kv, d) float32 or float16, keys unrotated,
    H % H_kv == 0. Default positions: keys 0..n_kv-1, queries the last n_q of them.
    k_type, v_type: the cache type of K / V, ggml's names ("f32", "f16", "bf16", "q8_0", "q4_0",
    "q4_1", "q5_0", "q5_1", "iq4_nl"; None: the array's dtype). With a type, k / v is either floats
    of (n_kv, H_kv, d), converted to it here (ggml's reference quantizers, kv_quant.quantize), or
    uint8 (n_kv, H_kv, row bytes): rows already in that type. Block types need d % 32 == 0.
    k_hadamard: 0, or a block size B (a power of two dividing d): k holds H_B of each block of B
    dims of the keys (reference.hadamard; ggml_rerope.h), which the kernel undoes.
    window: w >= 1 (w >= context length is plain RoPE). leaky: Leaky ReRoPE slope
    divisor k >= 1; group: Self-Extend group size G; chunk: Dual Chunk Attention's chunk length s
    (w/2 < s <= w); at most one of leaky, group and chunk.
    sliding_window: 0 (every key counts), or keys at distance >= it are dropped except those at
    positions < sink_tokens (LM-Infinite's Lambda-shaped attention).
    logn_train_len: log-n query scaling with this training length (None/0: off).
    scale: score scale (None or 0: 1/sqrt(d)). threads: CPU threads (None: GGML_REROPE_THREADS
    or all cores). device: "cpu", or "cuda" (ggml_rerope_attn_cuda_from_host: copies to the
    GPU and back; CudaError without a CUDA build or device).
    Returns (n_q, H, d) float32.
    """
    q = _array3("q", q, (np.float32,))
    n_q, n_head, d = q.shape
    k, k_id = _kv_rows("k", k, k_type, d)
    v, v_id = _kv_rows("v", v, v_type, d)
    n_kv, n_head_kv = k.shape[:2]
    if k_id is None and k.shape[2] != d:  # before the v check: a wrong k must not be reported as a wrong v
        raise ValueError(f"k head size {k.shape[2]} differs from q head size {d}")
    if v.shape[:2] != k.shape[:2] or (v_id is None and v.shape[2] != d):
        raise ValueError(f"v must have the shape of k {(n_kv, n_head_kv, d)}, got {v.shape}")
    if max(n_q * n_head, n_kv * n_head_kv) * d > _INT32_MAX or n_kv > _INT32_MAX:
        raise ValueError("q, k or v is too large")
    qp = _positions("q_pos", q_pos, n_q)
    kp = _positions("k_pos", k_pos, n_kv)
    if threads is None:
        threads = int(os.environ.get("GGML_REROPE_THREADS", "0") or 0)
    elif not _is_int(threads):
        raise TypeError(f"threads must be an int, got {type(threads).__name__}")
    elif threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")

    ffi = _binding.ffi
    call = ffi.new("ggml_rerope_attn_call *")
    call.params = _lib.ggml_rerope_default_params(d)
    keep = _fill_params(call.params, window=window, leaky=leaky, group=group, chunk=chunk,
                        logn_train_len=logn_train_len, base=base, mode=mode, n_rot=n_rot, freq_factors=freq_factors,
                        scale=scale, causal=causal, sliding_window=sliding_window, sink_tokens=sink_tokens)
    out = np.empty((n_q, n_head, d), dtype=np.float32)

    def ptr(ctype, arr):
        return ffi.NULL if arr is None else ffi.cast(ctype, arr.ctypes.data)

    call.q = ptr("const float *", q)
    call.k = ptr("const void *", k)
    call.v = ptr("const void *", v)
    call.out = ptr("float *", out)
    call.q_pos = ptr("const int32_t *", qp)
    call.k_pos = ptr("const int32_t *", kp)
    call.n_q, call.n_head, call.n_kv, call.n_head_kv = n_q, n_head, n_kv, n_head_kv
    call.k_type = KV_TYPES[k.dtype] if k_id is None else k_id
    call.v_type = KV_TYPES[v.dtype] if v_id is None else v_id
    call.k_hadamard = _int32("k_hadamard", k_hadamard)
    if device == "cuda":
        status = _lib.ggml_rerope_attn_cuda_from_host(call)
    else:
        status = _lib.ggml_rerope_attn_host(call, int(threads))
    raise_for_status(status, _binding.last_error())
    del keep
    return out
