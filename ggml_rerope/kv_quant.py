"""K/V cache types in ggml's formats, for NumPy arrays: names, row sizes, and quantizers.

Rows of head_dim elements are stored as ggml stores them (ggml-common.h): bf16, or blocks of 32
elements with IEEE-half scales. quantize(x, name) writes what ggml's quantize_row_*_ref writes
(same float32 arithmetic and rounding), except iq4_nl: ggml searches the scale, this takes the
nearest grid value at d = max / -127 (a valid block; the kernel tests only need valid blocks).
The float64 dequantizers the tests compare against are in reference.py.
"""

from __future__ import annotations

import numpy as np

from . import _binding

QK = 32  # elements per block
BLOCK_TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
TYPE_IDS = {name: getattr(_binding.lib, f"GGML_REROPE_KV_{name.upper()}")
            for name in ("f32", "f16", "bf16") + BLOCK_TYPES}
# bytes per block (ggml-common.h): halves d (and m), then qh[4] for q5, then qs
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "iq4_nl": 18}
SCALES = {"q8_0": 1, "q4_0": 1, "q4_1": 2, "q5_0": 1, "q5_1": 2, "iq4_nl": 1}  # halves at the block's start
IQ4_NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)


def row_bytes(name: str, head_dim: int) -> int:
    """Bytes of one row of head_dim elements; ValueError for a name or head_dim the type cannot take."""
    if name not in TYPE_IDS:
        raise ValueError(f"unknown K/V type {name!r}; known: {', '.join(TYPE_IDS)}")
    if name in BLOCK_BYTES:
        if head_dim % QK:
            raise ValueError(f"{name} stores blocks of {QK}: head_dim must be a multiple of {QK}, got {head_dim}")
        return head_dim // QK * BLOCK_BYTES[name]
    return head_dim * (4 if name == "f32" else 2)


def _halves(x: np.ndarray) -> np.ndarray:
    """float32 (n, 1) -> the bytes of IEEE halves (n, 2), rounded to nearest even as ggml does."""
    return x.astype(np.float16).view(np.uint8).reshape(-1, 2)


def _nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Element j in the low nibble of byte j, element j + 16 in its high nibble."""
    return (lo & 0x0F).astype(np.uint8) | ((hi & 0x0F).astype(np.uint8) << 4)


def _signed_max(b: np.ndarray) -> np.ndarray:
    """The element of largest magnitude per block, the first one on ties (ggml's strict `<`)."""
    return np.take_along_axis(b, np.abs(b).argmax(axis=1)[:, None], axis=1)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _trunc_u8(x: np.ndarray) -> np.ndarray:
    """C's (int8_t) / (uint8_t) cast of a non-negative float: truncation."""
    return np.trunc(x).astype(np.int32)


def _q8_0(b):
    d = (np.abs(b).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    v = (b * _inverse(d)).astype(np.float32)
    q = (np.sign(v) * np.floor(np.abs(v.astype(np.float64)) + 0.5)).astype(np.int8)  # roundf: half away from 0
    return np.concatenate([_halves(d), q.view(np.uint8)], axis=1)


def _q4_0(b):
    d = (_signed_max(b) / np.float32(-8)).astype(np.float32)
    q = np.minimum(15, _trunc_u8((b * _inverse(d)).astype(np.float32) + np.float32(8.5)))
    return np.concatenate([_halves(d), _nibbles(q[:, :16], q[:, 16:])], axis=1)


def _q4_1(b):
    lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
    d = ((hi - lo) / np.float32(15)).astype(np.float32)
    q = np.minimum(15, _trunc_u8(((b - lo) * _inverse(d)).astype(np.float32) + np.float32(0.5)))
    return np.concatenate([_halves(d), _halves(lo), _nibbles(q[:, :16], q[:, 16:])], axis=1)


def _qh(q):
    """Bit 4 of element j into bit j of a little-endian uint32."""
    bits = ((q >> 4) & 1).astype(np.uint32) << np.arange(QK, dtype=np.uint32)
    return bits.sum(axis=1, dtype=np.uint32).astype("<u4").view(np.uint8).reshape(-1, 4)


def _q5_0(b):
    d = (_signed_max(b) / np.float32(-16)).astype(np.float32)
    q = np.minimum(31, _trunc_u8((b * _inverse(d)).astype(np.float32) + np.float32(16.5)))
    return np.concatenate([_halves(d), _qh(q), _nibbles(q[:, :16], q[:, 16:])], axis=1)


def _q5_1(b):
    lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
    d = ((hi - lo) / np.float32(31)).astype(np.float32)
    q = _trunc_u8(((b - lo) * _inverse(d)).astype(np.float32) + np.float32(0.5)) & 0xFF
    return np.concatenate([_halves(d), _halves(lo), _qh(q), _nibbles(q[:, :16], q[:, 16:])], axis=1)


def _iq4_nl(b):
    d = (_signed_max(b) / np.float32(-127)).astype(np.float32)
    dh = d.astype(np.float16).astype(np.float32)  # the grid the kernel will see
    grid = dh * IQ4_NL_VALUES.astype(np.float32)[None, :]  # (n, 16)
    q = np.abs(b[:, :, None] - grid[:, None, :]).argmin(axis=2)
    return np.concatenate([_halves(d), _nibbles(q[:, :16], q[:, 16:])], axis=1)


_QUANTIZERS = {"q8_0": _q8_0, "q4_0": _q4_0, "q4_1": _q4_1, "q5_0": _q5_0, "q5_1": _q5_1, "iq4_nl": _iq4_nl}


def _bf16(x):
    """ggml_compute_fp32_to_bf16: NaN kept quiet, otherwise round to nearest even."""
    u = x.view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = np.where(nan, (u >> 16) | 64, (u + 0x7FFF + ((u >> 16) & 1)) >> 16)
    return r.astype(np.uint16).view(np.uint8)


def quantize(x: np.ndarray, name: str) -> np.ndarray:
    """x (..., head_dim) floats -> uint8 (..., row_bytes(name, head_dim)): rows in that type."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    nbytes = row_bytes(name, x.shape[-1])
    if name == "f32":
        flat = x.view(np.uint8)
    elif name == "f16":
        flat = x.astype(np.float16).view(np.uint8)
    elif name == "bf16":
        flat = _bf16(x)
    else:
        flat = _QUANTIZERS[name](x.reshape(-1, QK))
    return np.ascontiguousarray(flat).reshape(*x.shape[:-1], nbytes)


def scales_finite(rows: np.ndarray, name: str) -> bool:
    """Whether the rows hold finite values only: the block scales (every quantized value times a
    finite scale is finite), or every element for f32 / f16 / bf16."""
    rows = np.ascontiguousarray(rows)
    if name == "f32":
        return bool(np.isfinite(rows.view(np.float32)).all())
    if name == "f16":
        return bool(np.isfinite(rows.view(np.float16)).all())
    if name == "bf16":
        return bool(((rows.view(np.uint16) & 0x7F80) != 0x7F80).all())
    blocks = rows.reshape(-1, BLOCK_BYTES[name])
    halves = blocks[:, : 2 * SCALES[name]].copy().view(np.float16)
    return bool(np.isfinite(halves).all())
