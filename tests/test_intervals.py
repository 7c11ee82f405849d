"""ggml_rerope.intervals on cases whose answers are known: published interval values, constants,
identical and shifted pairs, coverage of a known mean, determinism of the seed."""

from __future__ import annotations

import numpy as np
import pytest

from ggml_rerope.intervals import Interval, bootstrap_mean, newcombe_difference, paired_difference, wilson


@pytest.mark.parametrize("k, n, lo, hi", [
    (5, 10, 0.2366, 0.7634),   # textbook values of the Wilson score interval
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),  # Newcombe (1998), table I example
])
def test_wilson_known_values(k, n, lo, hi):
    w = wilson(k, n)
    assert w.value == pytest.approx(k / n)
    assert w.lo == pytest.approx(lo, abs=1e-4) and w.hi == pytest.approx(hi, abs=1e-4)


def test_wilson_all_passes_is_not_a_point():
    w = wilson(20, 20)
    assert w.value == 1.0 and w.hi == 1.0 and 0.8 < w.lo < 1.0  # 20/20 does not prove 100 %
    assert wilson(0, 20).lo == 0.0 and wilson(0, 20).hi > 0.1
    assert wilson(20, 20, level=0.99).lo < w.lo  # a higher level is wider


@pytest.mark.parametrize("k, n", [(-1, 5), (6, 5), (0, 0)])
def test_wilson_refuses_impossible_counts(k, n):
    with pytest.raises(ValueError):
        wilson(k, n)


def test_newcombe_difference_known_value():
    # Newcombe (1998), method 10 on 56/70 vs 48/80: 0.2000 (0.0524, 0.3339)
    d = newcombe_difference(56, 70, 48, 80)
    assert d.value == pytest.approx(0.2) and d.lo == pytest.approx(0.0524, abs=1e-4)
    assert d.hi == pytest.approx(0.3339, abs=1e-4)
    same = newcombe_difference(7, 10, 7, 10)
    assert same.value == 0.0 and same.lo < 0 < same.hi


def test_bootstrap_of_a_constant_is_a_point():
    ci = bootstrap_mean(np.full((8, 1000), 3.25))
    assert ci.value == pytest.approx(3.25) and ci.lo == pytest.approx(3.25, abs=1e-12)
    assert ci.hi == pytest.approx(3.25, abs=1e-12)
    assert ci.n == 8 * 4  # 1000 tokens in blocks of 256: three whole blocks and a short one per window


def test_paired_difference_of_identical_arrays_is_zero():
    rng = np.random.default_rng(1)
    a = rng.gamma(3.0, 1.0, size=(8, 4096))
    d = paired_difference(a, a.copy())
    assert (d.value, d.lo, d.hi) == (0.0, 0.0, 0.0)


def test_paired_difference_sees_a_shift_the_separate_intervals_do_not():
    """b = a + 0.01 on every token: the two loss intervals overlap (token noise is ~1 nat), the
    paired interval is the shift itself."""
    rng = np.random.default_rng(2)
    a = rng.gamma(3.0, 1.0, size=(8, 4096))
    b = a + 0.01
    ia, ib = bootstrap_mean(a), bootstrap_mean(b)
    assert ia.hi > ib.lo  # apart, the scheme difference is hidden
    d = paired_difference(b, a)
    assert d.value == pytest.approx(0.01) and d.lo == pytest.approx(0.01) and d.hi == pytest.approx(0.01)


def test_bootstrap_interval_covers_the_true_mean_and_shrinks_with_more_data():
    """Independent draws of known mean 2.0: most 95 % intervals contain it (coverage), and 16x the
    data narrows the interval about 4x."""
    rng = np.random.default_rng(3)
    hits = 0
    for i in range(40):
        x = rng.normal(2.0, 1.0, size=(4, 1024))
        hits += bootstrap_mean(x, resamples=400, seed=i).contains(2.0)
    assert hits >= 33  # 95 % nominal; P(hits < 33) is about 1 % for a correct interval
    small = bootstrap_mean(rng.normal(2.0, 1.0, size=(2, 2048)))  # 16 blocks
    big = bootstrap_mean(rng.normal(2.0, 1.0, size=(32, 2048)))  # 256 blocks
    ratio = (small.hi - small.lo) / (big.hi - big.lo)
    assert 2.0 < ratio < 7.0  # sqrt(16) = 4, give or take the spread of a 16-unit interval


def test_block_and_window_units():
    """Windows with different means: resampling whole windows keeps the between-window spread; a
    block as long as a window is the window; a single-window input has one unit (a point)."""
    x = np.stack([np.full(512, 1.0), np.full(512, 3.0), np.full(512, 2.0), np.full(512, 4.0)])
    w = bootstrap_mean(x, unit="windows")
    assert w.n == 4 and w.lo < 2.5 < w.hi and w.hi - w.lo > 1.0
    assert bootstrap_mean(x, unit="blocks", block=512) == w
    one = bootstrap_mean(x[0], unit="windows")
    assert one.lo == one.hi == 1.0 and one.n == 1
    with pytest.raises(ValueError, match="unit"):
        bootstrap_mean(x, unit="tokens")


def test_bootstrap_is_seeded_and_token_weighted():
    rng = np.random.default_rng(4)
    x = [rng.normal(size=300), rng.normal(size=1000)]  # windows of different lengths are allowed
    assert bootstrap_mean(x, seed=5) == bootstrap_mean(x, seed=5)
    assert bootstrap_mean(x, seed=5) != bootstrap_mean(x, seed=6)
    assert bootstrap_mean(x).value == pytest.approx(np.concatenate(x).mean())


def test_bad_inputs():
    with pytest.raises(ValueError, match="same windows"):
        paired_difference(np.zeros((2, 10)), np.zeros((2, 11)))
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean(np.ones(10), level=1.5)


def test_interval_format():
    assert Interval(3.2214, 3.2001, 3.2399).fmt() == "3.221 [3.200, 3.240]"
    assert Interval(-0.0251, -0.031, -0.019).fmt(signed=True) == "-0.025 [-0.031, -0.019]"
