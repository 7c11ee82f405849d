"""Float64 NumPy reference of ReRoPE attention: the contract every kernel is tested against.

It follows the definition literally: for each query row, every key's relative
position rel(i, j) is computed and the query is rotated by it, then dotted with the
unrotated key. No tiling, no near/far trick, no online softmax - slow and obvious.
"""

from __future__ import annotations

import numpy as np

NORM, NEOX = "norm", "neox"


def thetas(n_rot: int, base: float, freq_factors=None) -> np.ndarray:
    """theta_m = f_m * base^(-2m/n_rot), m = 0 .. n_rot/2 - 1."""
    m = np.arange(n_rot // 2, dtype=np.float64)
    theta = base ** (-2.0 * m / n_rot) if n_rot else m
    if freq_factors is not None:
        theta = theta * np.asarray(freq_factors, dtype=np.float64)
    return theta


def pair_index(d: int, n_rot: int, mode: str):
    """Indices (a, b) of the rotated pairs: (2m, 2m+1) in NORM, (m, m + n_rot/2) in NEOX."""
    half = n_rot // 2
    if mode == NORM:
        a = 2 * np.arange(half)
        return a, a + 1
    if mode == NEOX:
        a = np.arange(half)
        return a, a + half
    raise ValueError(f"mode must be 'norm' or 'neox', got {mode!r}")


def rotate(x: np.ndarray, pos: np.ndarray, theta: np.ndarray, mode: str, n_rot: int) -> np.ndarray:
    """R_pos x for x of shape (..., d) and pos broadcastable to x.shape[:-1]."""
    x = np.array(x, dtype=np.float64, copy=True)
    a, b = pair_index(x.shape[-1], n_rot, mode)
    ang = np.asarray(pos, dtype=np.float64)[..., None] * theta
    cos, sin = np.cos(ang), np.sin(ang)
    xa, xb = x[..., a].copy(), x[..., b].copy()
    x[..., a] = xa * cos - xb * sin
    x[..., b] = xa * sin + xb * cos
    return x


def is_near(i, j, window: int, chunk=None) -> np.ndarray:
    """Whether the pair is on the near path (rel = i - j): i - j < w, or Dual Chunk Attention's
    rule with chunks of `chunk` keys (same chunk, or the chunk before while the true distance fits)."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    dist = i - j
    if chunk is None:
        return dist < window
    ci, cj = i // chunk, j // chunk
    before = (cj == ci - 1) & (i % chunk + chunk <= window)
    return (dist <= window - chunk) | (cj == ci) | before


def relative_positions(i, j, window: int, leaky=None, group=None, chunk=None) -> np.ndarray:
    """rel(i, j) of the contract, broadcasting i against j."""
    if sum(x is not None for x in (leaky, group, chunk)) > 1:
        raise ValueError("leaky, group and chunk are exclusive")
    near = is_near(i, j, window, chunk)
    i = np.asarray(i, dtype=np.float64)
    j = np.asarray(j, dtype=np.float64)
    dist = i - j
    if leaky is not None:
        far = window + (dist - window) / leaky
    elif group is not None:
        far = np.floor(i / group) - np.floor(j / group) + window - np.floor(window / group)
    elif chunk is not None:
        far = window - np.mod(j, chunk)
    else:
        far = np.full_like(dist, float(window))
    return np.where(near, dist, far)


def dropped(i, j, sliding_window=0, sink_tokens=0) -> np.ndarray:
    """Keys the sliding window drops for a query at i: distance >= sliding_window, not a sink."""
    j = np.asarray(j, dtype=np.int64)
    if not sliding_window:
        return np.zeros(j.shape, dtype=bool)
    return (np.asarray(i, dtype=np.int64) - j >= sliding_window) & (j >= sink_tokens)


def logn_scale(i, logn_train_len) -> np.ndarray:
    """lambda_i = max(1, ln(i+1) / ln(L_train)); 1 when log-n is off."""
    i = np.asarray(i, dtype=np.float64)
    if not logn_train_len:
        return np.ones_like(i)
    return np.maximum(1.0, np.log(i + 1.0) / np.log(float(logn_train_len)))


def rerope_attention(q, k, v, *, window, leaky=None, group=None, chunk=None, logn_train_len=None, base=10000.0,
                     mode=NORM, n_rot=None, q_pos=None, k_pos=None, freq_factors=None, scale=None,
                     causal=True, sliding_window=0, sink_tokens=0, rows=None) -> np.ndarray:
    """o = softmax(s) v per the contract, in float64.

    q: (n_q, H, d); k, v: (n_kv, H_kv, d), keys unrotated. Default positions: keys
    0..n_kv-1, queries the last n_q of them. `rows` (optional) restricts the work to
    those query rows; the result then has len(rows) rows. A query with no visible key
    gets zeros.
    """
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    n_q, n_head, d = q.shape
    n_kv, n_head_kv, _ = k.shape
    n_rot = d if n_rot is None else n_rot
    group_of_head = np.arange(n_head) // (n_head // n_head_kv)
    k_full, v_full = k[:, group_of_head, :], v[:, group_of_head, :]  # GQA: repeat K/V heads
    q_pos = np.arange(n_kv - n_q, n_kv) if q_pos is None else np.asarray(q_pos)
    k_pos = np.arange(n_kv) if k_pos is None else np.asarray(k_pos)
    scale = 1.0 / np.sqrt(d) if scale is None else float(scale)
    theta = thetas(n_rot, base, freq_factors)
    rows = np.arange(n_q) if rows is None else np.asarray(rows)

    out = np.zeros((len(rows), n_head, d))
    for r, row in enumerate(rows):
        i = q_pos[row]
        visible = k_pos <= i if causal else np.ones(n_kv, dtype=bool)
        visible &= ~dropped(i, k_pos, sliding_window, sink_tokens)
        if not visible.any():
            continue
        rel = relative_positions(i, k_pos[visible], window, leaky, group, chunk)  # (n_vis,)
        # <R_rel q, k>: rotate the query once per visible key.
        q_rot = rotate(np.broadcast_to(q[row], (len(rel), n_head, d)), rel[:, None], theta, mode, n_rot)
        s = np.einsum("jhd,jhd->hj", q_rot, k_full[visible]) * scale * logn_scale(i, logn_train_len)
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        out[r] = np.einsum("hj,jhd->hd", p, v_full[visible])
    return out


def rope_attention(q, k, v, *, base=10000.0, mode=NORM, n_rot=None, q_pos=None, k_pos=None,
                   freq_factors=None, scale=None, causal=True) -> np.ndarray:
    """Plain RoPE attention computed the ordinary way (rotate q at i and k at j):
    an independent check that w >= n reduces ReRoPE to RoPE."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    n_q, n_head, d = q.shape
    n_kv, n_head_kv, _ = k.shape
    n_rot = d if n_rot is None else n_rot
    q_pos = np.arange(n_kv - n_q, n_kv) if q_pos is None else np.asarray(q_pos)
    k_pos = np.arange(n_kv) if k_pos is None else np.asarray(k_pos)
    theta = thetas(n_rot, base, freq_factors)
    qr = rotate(q, q_pos[:, None], theta, mode, n_rot)
    kr = rotate(k, k_pos[:, None], theta, mode, n_rot)
    rep = n_head // n_head_kv
    kr, vv = np.repeat(kr, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.einsum("ihd,jhd->hij", qr, kr) * (1.0 / np.sqrt(d) if scale is None else scale)
    if causal:
        s = np.where(k_pos[None, None, :] <= q_pos[None, :, None], s, -np.inf)
    s -= s.max(axis=2, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=2, keepdims=True)
    return np.einsum("hij,jhd->ihd", p, vv)


# ---------------------------------------------------------------- K/V types (ggml's block formats)

def hadamard_matrix(b: int) -> np.ndarray:
    """The orthonormal Walsh-Hadamard matrix H_b (b a power of two): H_1 = 1, H_2b = [[H, H], [H, -H]] / sqrt(2).
    Symmetric and its own inverse."""
    if b < 1 or b & (b - 1):
        raise ValueError(f"a Hadamard block must be a power of two, got {b}")
    h = np.ones((1, 1))
    while h.shape[0] < b:
        h = np.block([[h, h], [h, -h]]) / np.sqrt(2.0)
    return h


def hadamard(x: np.ndarray, b: int) -> np.ndarray:
    """H_b applied to every block of b consecutive elements of the last axis (float64): the rotation of
    ggml_rerope_attn_call.k_hadamard, and its inverse (H_b is its own)."""
    x = np.asarray(x, dtype=np.float64)
    if b == 0:
        return x
    if x.shape[-1] % b:
        raise ValueError(f"a Hadamard block of {b} must divide the last axis ({x.shape[-1]})")
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // b, b)
    return (blocks @ hadamard_matrix(b)).reshape(x.shape)


_IQ4_NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float64)
_BLOCK = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "iq4_nl": 18}


def _half(block_bytes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block_bytes).view(np.float16).astype(np.float64)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32): element j the low nibble of byte j, element j + 16 its high one."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float64)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32): bit j, as 16 or 0."""
    word = np.ascontiguousarray(qh).view("<u4").astype(np.int64)
    return (((word >> np.arange(32)) & 1) << 4).astype(np.float64)


def dequantize(rows: np.ndarray, kv_type: str, head_dim: int) -> np.ndarray:
    """uint8 rows (..., row_bytes) of a ggml K/V type (names as ggml_rerope.kv_quant) -> float64
    (..., head_dim), written from ggml's dequantize_row_* (ggml-quants.c), not from the kernels."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    lead = rows.shape[:-1]
    if kv_type == "f32":
        return rows.view(np.float32).astype(np.float64).reshape(*lead, head_dim)
    if kv_type == "f16":
        return rows.view(np.float16).astype(np.float64).reshape(*lead, head_dim)
    if kv_type == "bf16":
        bits = rows.view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64).reshape(*lead, head_dim)
    if kv_type not in _BLOCK:
        raise ValueError(f"unknown K/V type {kv_type!r}")
    b = rows.reshape(-1, _BLOCK[kv_type])
    d = _half(b[:, 0:2])
    if kv_type == "q8_0":
        x = d * b[:, 2:].view(np.int8).astype(np.float64)
    elif kv_type == "q4_0":
        x = d * (_nibbles(b[:, 2:]) - 8)
    elif kv_type == "q4_1":
        x = d * _nibbles(b[:, 4:]) + _half(b[:, 2:4])
    elif kv_type == "q5_0":
        x = d * (_nibbles(b[:, 6:]) + _high_bits(b[:, 2:6]) - 16)
    elif kv_type == "q5_1":
        x = d * (_nibbles(b[:, 8:]) + _high_bits(b[:, 4:8])) + _half(b[:, 2:4])
    else:  # iq4_nl
        x = d * _IQ4_NL[_nibbles(b[:, 2:]).astype(np.int64)]
    return x.reshape(*lead, head_dim)
