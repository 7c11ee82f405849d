"""Confidence intervals for the quality tools (NumPy only, seeded, deterministic).

- `wilson(k, n)`: the Wilson score interval of a proportion (passkey / retrieval pass rates).
  Unlike the normal approximation it stays inside [0, 1] and is not a point at 0/n or n/n.
- `newcombe_difference(k1, n1, k2, n2)`: Newcombe's hybrid score interval of p1 - p2 for two
  independent proportions, built from the two Wilson intervals (method 10 of Newcombe 1998).
- `bootstrap_mean(nll)`: mean loss of per-token NLLs with a percentile bootstrap interval.
- `paired_difference(a, b)`: the mean of a - b on the same tokens, with the interval of the same
  bootstrap applied to the per-token differences (both schemes resampled at the same indices).

What is resampled (`unit`):
- "blocks" (default): every window is cut into consecutive blocks of `block` tokens (256), and the
  blocks of all windows are resampled with replacement. A token's NLL depends on its neighbours
  (a hard passage is hard for many tokens, a scheme that breaks does so over a stretch), so single
  tokens are not independent; blocks much longer than that dependence are nearly so. With K = 8
  windows of 4096 scored tokens that is 128 units, enough for a percentile interval.
- "windows": whole windows are the units. It also keeps dependence longer than a block, but with
  K = 8 units the percentile interval is coarse and too narrow (a bootstrap of n clusters
  under-states the spread by about sqrt((n-1)/n), and has few distinct resamples).
The report uses blocks; a window-level interval is one argument away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

Z95 = 1.959963984540054  # the normal quantile of 0.975
DEFAULT_BLOCK = 256
DEFAULT_RESAMPLES = 2000

Windows = Union[np.ndarray, Sequence[np.ndarray]]  # one window (1-D), K equal windows (2-D) or a list of 1-D


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval; `n` counts the resampled units (or the trials)."""

    value: float
    lo: float
    hi: float
    n: int = 0

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def fmt(self, digits: int = 3, signed: bool = False) -> str:
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        return f"{f.format(self.value)} [{f.format(self.lo)}, {f.format(self.hi)}]"


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if abs(level - 0.95) < 1e-12:
        return Z95
    # inverse normal CDF by bisection on erf: no SciPy needed, and this runs once per interval
    lo, hi = 0.0, 10.0
    target = (1.0 + level) / 2.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def wilson(k: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval of k successes in n trials."""
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    z = _z(level)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at k = 0 or k = n one bound is exactly 0 or 1; rounding must not move it inside
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return Interval(p, lo, hi, n)


def newcombe_difference(k1: int, n1: int, k2: int, n2: int, level: float = 0.95) -> Interval:
    """p1 - p2 with Newcombe's hybrid score interval (independent samples). For two schemes on the
    very same prompts it is conservative (it ignores the pairing)."""
    a, b = wilson(k1, n1, level), wilson(k2, n2, level)
    d = a.value - b.value
    lo = d - math.sqrt((a.value - a.lo) ** 2 + (b.hi - b.value) ** 2)
    hi = d + math.sqrt((a.hi - a.value) ** 2 + (b.value - b.lo) ** 2)
    return Interval(d, max(-1.0, lo), min(1.0, hi), n1 + n2)


def _windows(values: Windows) -> list[np.ndarray]:
    if isinstance(values, np.ndarray):
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim == 1:
            return [arr]
        if arr.ndim == 2:
            return list(arr)
        raise ValueError(f"expected one window (1-D) or windows (2-D), got shape {arr.shape}")
    out = [np.asarray(v, dtype=np.float64).ravel() for v in values]
    if not out:
        raise ValueError("no windows")
    return out


def _units(windows: list[np.ndarray], unit: str, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of each resampling unit."""
    if unit == "windows":
        return (np.array([w.sum() for w in windows]), np.array([w.size for w in windows], dtype=np.float64))
    if unit != "blocks":
        raise ValueError(f"unit must be 'blocks' or 'windows', got {unit!r}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    sums, counts = [], []
    for w in windows:
        for s in range(0, w.size, block):  # a short last block stays a unit of its own, with its weight
            part = w[s:s + block]
            sums.append(part.sum())
            counts.append(part.size)
    return np.array(sums), np.array(counts, dtype=np.float64)


def bootstrap_mean(values: Windows, *, unit: str = "blocks", block: int = DEFAULT_BLOCK,
                   resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of all values (token-weighted) and its percentile bootstrap interval, resampling
    `unit`s (see the module docstring). Deterministic for a given seed."""
    windows = _windows(values)
    if any(w.size == 0 for w in windows):
        raise ValueError("a window has no values")
    if any(not np.all(np.isfinite(w)) for w in windows):
        raise ValueError("values must be finite")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    _z(level)  # validates level
    sums, counts = _units(windows, unit, block)
    mean = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    n = sums.size
    means = np.empty(resamples)
    step = max(1, (1 << 22) // n)  # keep the index matrix near 32 MiB whatever the unit count
    for s in range(0, resamples, step):
        idx = rng.integers(0, n, size=(min(step, resamples - s), n))
        means[s:s + idx.shape[0]] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    # the percentile interval of an (almost) constant sample can miss its own mean by rounding
    return Interval(mean, float(min(lo, mean)), float(max(hi, mean)), n)


def paired_difference(a: Windows, b: Windows, **kwargs) -> Interval:
    """Mean of a - b over the same tokens (window by window, token by token) with the bootstrap
    interval of the differences: both schemes are resampled at the same units, which is what makes
    the interval of a difference far narrower than the two loss intervals suggest."""
    wa, wb = _windows(a), _windows(b)
    if len(wa) != len(wb) or any(x.shape != y.shape for x, y in zip(wa, wb)):
        raise ValueError(f"paired values need the same windows and tokens: {[x.size for x in wa]} vs "
                         f"{[y.size for y in wb]}")
    return bootstrap_mean([x - y for x, y in zip(wa, wb)], **kwargs)
