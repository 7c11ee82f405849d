"""Token sampling: repeat penalty, top-k, top-p, min-p, temperature, seeded RNG.

The order is llama.cpp's default sampler chain (as llama-cpp-python builds it):
repeat penalty -> top-k -> top-p -> min-p -> temperature -> random draw. Top-p and min-p
therefore see the probabilities at temperature 1, and temperature only reshapes what
survived. Temperature 0 is greedy: the argmax after the repeat penalty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Optional

import numpy as np


def _check_number(name: str, value, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    below = value <= low if low_open else value < low
    if math.isnan(value) or below or value > high:
        bound = f"({low}" if low_open else f"[{low}"
        raise ValueError(f"{name} must be in {bound}, {high}], got {value}")
    return value


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def apply_repeat_penalty(logits: np.ndarray, recent_tokens: Iterable[int], penalty: float) -> np.ndarray:
    """llama.cpp's repeat penalty: each distinct recent token's logit is divided by `penalty`
    when positive and multiplied by it when negative. Returns a new array."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0:
        return out
    ids = np.unique(np.fromiter(recent_tokens, dtype=np.int64))
    if ids.size:
        vals = out[ids]
        out[ids] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def filter_candidates(
    logits: np.ndarray, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids that survive top-k, then top-p, then min-p, sorted by decreasing logit,
    with their logits. top_k <= 0, top_p >= 1 and min_p <= 0 switch a filter off.
    At least one token always survives."""
    logits = np.asarray(logits, dtype=np.float32)
    n = logits.shape[0]
    if 0 < top_k < n:
        # argpartition is O(n): only the k best are sorted below.
        ids = np.argpartition(-logits, top_k - 1)[:top_k]
    else:
        ids = np.arange(n)
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    vals = logits[ids]
    if top_p < 1.0 and ids.size > 1:
        probs = _softmax(vals)
        # Keep the shortest head whose mass reaches top_p (the token crossing it included).
        keep = int(np.searchsorted(np.cumsum(probs), top_p, side="left")) + 1
        ids, vals = ids[:keep], vals[:keep]
    if min_p > 0.0 and ids.size > 1:
        # p_i >= min_p * p_max  <=>  logit_i >= logit_max + ln(min_p)
        keep = int(np.count_nonzero(vals >= vals[0] + math.log(min_p)))
        ids, vals = ids[: max(keep, 1)], vals[: max(keep, 1)]
    return ids, vals


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - np.max(x))
    return e / e.sum()


class Sampler:
    """Picks the next token from a row of logits.

    temperature: 0 = greedy (argmax); top_k <= 0, top_p = 1 and min_p = 0 are off;
    repeat_penalty 1.0 = off, over the last `repeat_last_n` tokens of the history;
    seed: None = fresh entropy, else the draws are reproducible.
    """

    def __init__(
        self,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        seed: Optional[int] = None,
    ):
        self.temperature = _check_number("temperature", temperature, 0.0, math.inf)
        self.top_k = _check_int("top_k", top_k)
        self.top_p = _check_number("top_p", top_p, 0.0, 1.0, low_open=True)
        self.min_p = _check_number("min_p", min_p, 0.0, 1.0)
        self.repeat_penalty = _check_number("repeat_penalty", repeat_penalty, 0.0, math.inf, low_open=True)
        self.repeat_last_n = _check_int("repeat_last_n", repeat_last_n)
        if self.repeat_last_n < 0:
            raise ValueError(f"repeat_last_n must be >= 0, got {self.repeat_last_n}")
        if seed is not None:
            seed = _check_int("seed", seed)
            if seed < 0:
                raise ValueError(f"seed must be >= 0 or None, got {seed}")
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        logits = np.asarray(logits, dtype=np.float32)
        if logits.ndim != 1 or logits.size == 0:
            raise ValueError(f"logits must be a non-empty 1-D array, got shape {logits.shape}")
        if self.repeat_penalty != 1.0 and self.repeat_last_n > 0 and len(history):
            logits = apply_repeat_penalty(logits, history[-self.repeat_last_n :], self.repeat_penalty)
        if self.temperature == 0.0:
            return int(np.argmax(logits))
        ids, vals = filter_candidates(logits, self.top_k, self.top_p, self.min_p)
        if ids.size == 1:
            return int(ids[0])
        probs = _softmax(vals / self.temperature)
        return int(ids[self.rng.choice(ids.size, p=probs)])
