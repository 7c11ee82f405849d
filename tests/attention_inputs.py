"""Random attention inputs and the error measure shared by the CPU and CUDA operator tests."""

from __future__ import annotations

import secrets

import numpy as np


def random_qkv(n_q, n_kv, h, h_kv, d, kv_dtype, seed=None):
    """Fresh q (f32), k, v (kv_dtype) of the operator's layouts; returns (q, k, v, rng, seed)
    so a failing test can print the seed that reproduces it."""
    seed = secrets.randbits(32) if seed is None else seed
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n_q, h, d)).astype(np.float32)
    k = rng.standard_normal((n_kv, h_kv, d)).astype(kv_dtype)
    v = rng.standard_normal((n_kv, h_kv, d)).astype(kv_dtype)
    return q, k, v, rng, seed


def rel_err(out, ref):
    """||out - ref|| / ||ref||."""
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def shuffled_positions(rng, n_q, n_kv):
    """Key positions shuffled, with gaps (about 3 apart), and sorted query positions over their range."""
    k_pos = rng.permutation(np.arange(n_kv) * 3 + rng.integers(0, 3, n_kv)).astype(np.int32)
    q_pos = np.sort(rng.integers(0, 3 * n_kv + 10, n_q)).astype(np.int32)
    return q_pos, k_pos
