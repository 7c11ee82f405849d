"""Sampling: each filter keeps exactly the tokens it should, on hand-made distributions;
seeded draws repeat; temperature 0 is greedy; the repeat penalty follows llama.cpp."""

import math

import numpy as np
import pytest

from ggml_rerope.sampling import Sampler, apply_repeat_penalty, filter_candidates


def logits_of(probs):
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


# probabilities in a shuffled order, so sorting is exercised
PROBS = [0.05, 0.30, 0.02, 0.40, 0.15, 0.08]  # sorted: 3 (.40), 1 (.30), 4 (.15), 5 (.08), 0 (.05), 2 (.02)


def kept(**kw):
    ids, _ = filter_candidates(logits_of(PROBS), **kw)
    return list(ids)


def test_no_filter_keeps_all_sorted():
    assert kept() == [3, 1, 4, 5, 0, 2]


@pytest.mark.parametrize("k,expect", [(1, [3]), (2, [3, 1]), (4, [3, 1, 4, 5]), (0, [3, 1, 4, 5, 0, 2]),
                                      (99, [3, 1, 4, 5, 0, 2])])
def test_top_k(k, expect):
    assert kept(top_k=k) == expect


@pytest.mark.parametrize(
    "p,expect",
    [
        (0.39, [3]),            # .40 alone reaches .39
        (0.41, [3, 1]),         # .70 is the first cumulative mass >= .41
        (0.70 - 1e-4, [3, 1]),
        (0.80, [3, 1, 4]),      # .85
        (0.90, [3, 1, 4, 5]),   # .93
        (0.99, [3, 1, 4, 5, 0, 2]),
        (1.0, [3, 1, 4, 5, 0, 2]),
    ],
)
def test_top_p(p, expect):
    assert kept(top_p=p) == expect


@pytest.mark.parametrize(
    "m,expect",
    [
        (0.5, [3, 1]),            # threshold .20: keeps .40, .30
        (0.3, [3, 1, 4]),         # threshold .12
        (0.1, [3, 1, 4, 5, 0]),   # threshold .04
        (0.0, [3, 1, 4, 5, 0, 2]),
        (1.0, [3]),
    ],
)
def test_min_p(m, expect):
    assert kept(min_p=m) == expect


def test_top_p_after_top_k_renormalizes():
    # top-k 3 leaves .40/.30/.15 -> renormalized .47/.35/.18; p = .8 needs all three
    # (.47 + .35 = .82 >= .8 stops at two).
    assert kept(top_k=3, top_p=0.8) == [3, 1]
    assert kept(top_k=3, top_p=0.83) == [3, 1, 4]


def test_filters_chain():
    assert kept(top_k=5, top_p=0.9, min_p=0.3) == [3, 1, 4]


def test_greedy_at_temperature_zero():
    s = Sampler(temperature=0.0, seed=1)
    logits = logits_of(PROBS)
    assert all(s(logits) == 3 for _ in range(5))


def test_seeded_draws_repeat_and_differ_by_seed():
    logits = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    a = Sampler(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=42)
    b = Sampler(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=42)
    c = Sampler(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=43)
    sa = [a(logits) for _ in range(50)]
    assert sa == [b(logits) for _ in range(50)]
    assert sa != [c(logits) for _ in range(50)]
    assert len(set(sa)) > 10  # really random, not greedy


def test_draws_only_survivors_with_right_frequencies():
    s = Sampler(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0, seed=7)
    logits = logits_of(PROBS)
    counts = np.bincount([s(logits) for _ in range(4000)], minlength=6)
    assert set(np.flatnonzero(counts)) == {1, 3}
    # .40 / (.40 + .30) = .571; 4000 draws: std ~ .008
    assert abs(counts[3] / 4000 - 0.4 / 0.7) < 0.04


def test_temperature_sharpens():
    logits = logits_of(PROBS)
    hot = Sampler(temperature=5.0, top_k=0, top_p=1.0, min_p=0.0, seed=3)
    cold = Sampler(temperature=0.2, top_k=0, top_p=1.0, min_p=0.0, seed=3)
    n_top_hot = sum(hot(logits) == 3 for _ in range(2000))
    n_top_cold = sum(cold(logits) == 3 for _ in range(2000))
    assert n_top_cold > 1600 and n_top_hot < 700


def test_repeat_penalty_like_llama_cpp():
    logits = np.array([2.0, -1.0, 0.5, 3.0], dtype=np.float32)
    out = apply_repeat_penalty(logits, [0, 1, 1, 1], 2.0)
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0]  # each distinct token once: /2 if > 0, *2 if <= 0
    assert logits.tolist() == [2.0, -1.0, 0.5, 3.0]  # input untouched
    s = Sampler(temperature=0.0, repeat_penalty=4.0)
    assert s(logits) == 3
    assert s(logits, history=[3]) == 0  # 3.0 / 4 < 2.0
    # Only the last repeat_last_n tokens count.
    s = Sampler(temperature=0.0, repeat_penalty=4.0, repeat_last_n=1)
    assert s(logits, history=[3, 0]) == 3


@pytest.mark.parametrize(
    "kw,exc",
    [
        (dict(temperature=-0.1), ValueError),
        (dict(temperature="hot"), TypeError),
        (dict(top_p=0.0), ValueError),
        (dict(top_p=1.5), ValueError),
        (dict(min_p=-0.1), ValueError),
        (dict(min_p=float("nan")), ValueError),
        (dict(repeat_penalty=0.0), ValueError),
        (dict(top_k=2.5), TypeError),
        (dict(seed=-1), ValueError),
    ],
)
def test_bad_arguments_name_the_argument(kw, exc):
    with pytest.raises(exc, match=next(iter(kw))):
        Sampler(**kw)


def test_min_p_threshold_is_relative_to_max():
    # Guards the log-space identity used: p_i >= m * p_max  <=>  l_i >= l_max + ln(m).
    logits = np.array([0.0, math.log(0.25) + 1e-4, math.log(0.25) - 1e-4], dtype=np.float32)
    assert list(filter_candidates(logits, min_p=0.25)[0]) == [0, 1]
