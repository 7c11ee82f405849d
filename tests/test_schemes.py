"""Each position scheme's operator parameters against an independent float64 computation of
what the scheme means (its thetas, temperature or relative-position map), evaluated through the
float64 reference and, where the library is built, through the C operator."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from ggml_rerope import reference
from ggml_rerope.scheme_flags import add_scheme_arguments, scheme_from_args, scheme_options_from_args
from ggml_rerope.schemes import (
    FAR_CHUNK,
    FAR_CLAMP,
    FAR_GROUP,
    FAR_LEAKY,
    SCHEMES,
    WINDOW_NONE,
    ModelHyper,
    Scheme,
    make_scheme,
    yarn_corr_dims,
)

D = 16  # head size = rotary dims of the small test model
L_TRAIN = 48
HYPER = ModelHyper(n_rot=D, rope_base=10000.0, n_ctx_train=L_TRAIN, head_dim=D)
N = 120  # context used in the attention checks: 2.5x the "trained" length


def qkv(seed=0, n=N, heads=2, kv_heads=1):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, heads, D)) * 1.5
    k = rng.standard_normal((n, kv_heads, D)) * 1.5
    v = rng.standard_normal((n, kv_heads, D))
    return q, k, v


def scheme_attention(scheme, q, k, v, rows=None):
    return reference.rerope_attention(q, k, v, rows=rows, **scheme.attention_kwargs(HYPER))


def ggml_style_rope_attention(q, k, v, theta, pos_q, pos_k, mscale=1.0, scale=None):
    """Attention as llama.cpp computes it: q and k each rotated at their own position with
    cos/sin multiplied by mscale (ggml's rope_yarn), then softmax(q k / sqrt(d)). Written
    independently of reference.py."""
    def rope(x, pos):
        out = np.array(x, dtype=np.float64)
        ang = np.asarray(pos, np.float64)[:, None] * theta[None, :]
        c, s = np.cos(ang) * mscale, np.sin(ang) * mscale
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * c[:, None, :] - b * s[:, None, :]
        out[..., 1::2] = a * s[:, None, :] + b * c[:, None, :]
        return out

    qr, kr = rope(q, pos_q), rope(k, pos_k)
    kr = np.repeat(kr, q.shape[1] // k.shape[1], axis=1)
    vv = np.repeat(v, q.shape[1] // v.shape[1], axis=1)
    s = np.einsum("ihd,jhd->hij", qr, kr) * (1 / math.sqrt(D) if scale is None else scale)
    s = np.where(np.asarray(pos_k)[None, None, :] <= np.asarray(pos_q)[None, :, None], s, -np.inf)
    s -= s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hij,jhd->ihd", p, vv)


def base_thetas(base=HYPER.rope_base):
    return base ** (-np.arange(0, D, 2, dtype=np.float64) / D)


# ------------------------------------------------------------------ registry and options


def test_registry_has_every_scheme():
    assert set(SCHEMES) == {"none", "linear", "ntk", "dynamic-ntk", "yarn", "longrope", "power", "truncate",
                            "self-extend", "rerope", "leaky-rerope", "dual-chunk", "lm-infinite", "ntk-mixed"}


def test_unknown_scheme_lists_valid_names():
    with pytest.raises(ValueError) as e:
        make_scheme("xpos", HYPER, 100)
    for name in SCHEMES:
        assert name in str(e.value)


def test_unexpected_option_is_an_error():
    with pytest.raises(TypeError, match="leaky_k"):
        make_scheme("rerope", HYPER, 100, leaky_k=4)


@pytest.mark.parametrize("bad", [0, -5])
def test_bad_window(bad):
    with pytest.raises(ValueError, match="window"):
        make_scheme("rerope", HYPER, 100, window=bad)


def test_bad_scale_and_n_ctx():
    with pytest.raises(ValueError, match="scale"):
        make_scheme("linear", HYPER, 100, scale=0.5)
    with pytest.raises(ValueError, match="n_ctx"):
        make_scheme("linear", HYPER, 0)


def test_hyper_from_mapping_and_missing_keys():
    s = make_scheme("ntk", dict(n_rot=D, rope_base=10000.0, n_ctx_train=L_TRAIN, head_dim=D), 96)
    assert s.rope_base == pytest.approx(10000.0 * 2 ** (D / (D - 2)))
    with pytest.raises(TypeError, match="n_ctx_train"):
        make_scheme("ntk", dict(n_rot=D, rope_base=10000.0, head_dim=D), 96)


# ------------------------------------------------------------------ none / linear / ntk / dynamic


def test_none_is_plain_rope():
    q, k, v = qkv(1)
    s = make_scheme("none", HYPER, N)
    assert s.window == WINDOW_NONE and s.freq_factors is None and s.attn_factor == 1
    got = scheme_attention(s, q, k, v)
    want = ggml_style_rope_attention(q, k, v, base_thetas(), np.arange(N), np.arange(N))
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_linear_equals_positions_divided_by_s():
    q, k, v = qkv(2)
    s = make_scheme("linear", HYPER, N, scale=2.5)
    got = scheme_attention(s, q, k, v)
    pos = np.arange(N) / 2.5
    want = ggml_style_rope_attention(q, k, v, base_thetas(), pos, pos)
    np.testing.assert_allclose(got, want, atol=1e-10)
    assert make_scheme("linear", HYPER, 4 * L_TRAIN).freq_factors == pytest.approx(np.full(D // 2, 0.25))
    assert make_scheme("linear", HYPER, L_TRAIN // 2).freq_factors == pytest.approx(np.ones(D // 2))


def test_ntk_base():
    q, k, v = qkv(3)
    s = make_scheme("ntk", HYPER, N, scale=3.0)
    b = 10000.0 * 3.0 ** (D / (D - 2.0))
    assert s.rope_base == pytest.approx(b, rel=1e-12)
    # the slowest band is interpolated by exactly s, the fastest untouched
    th = s.thetas(HYPER)
    assert th[0] == 1.0 and th[-1] == pytest.approx(base_thetas()[-1] / 3.0, rel=1e-12)
    got = scheme_attention(s, q, k, v)
    want = ggml_style_rope_attention(q, k, v, base_thetas(b), np.arange(N), np.arange(N))
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_dynamic_ntk_follows_the_length():
    s = make_scheme("dynamic-ntk", HYPER, N)
    assert s.dynamic
    assert s.resolve(L_TRAIN // 2).rope_base == HYPER.rope_base  # no scaling inside the trained context
    for length in (L_TRAIN, 70, 2 * L_TRAIN, 500):
        r = s.resolve(length)
        assert not r.dynamic
        assert r.rope_base == pytest.approx(10000.0 * max(1.0, length / L_TRAIN) ** (D / (D - 2.0)), rel=1e-12)


# ------------------------------------------------------------------ yarn


def transcribe_llama_cpp_yarn_thetas(n_dims, n_ctx_orig, base, freq_scale, beta_fast, beta_slow, ext_factor):
    """ggml's rope cache, transcribed in float32 like ggml-cpu does it: theta_extrap =
    base^(-i0/n_dims), ramp over corr dims, mix with theta_interp = freq_scale * theta_extrap."""
    f32 = np.float32

    def corr_dim(n_rot):
        return (f32(n_dims) * np.log(f32(n_ctx_orig) / (f32(n_rot) * f32(2) * f32(math.pi)))
                / (f32(2) * np.log(f32(base))))

    start = np.floor(corr_dim(beta_fast))
    end = np.ceil(corr_dim(beta_slow))
    lo, hi = max(f32(0), start), min(f32(n_dims - 1), end)
    out = []
    theta_scale = f32(base) ** (f32(-2) / f32(n_dims))
    theta = f32(1)
    for i0 in range(0, n_dims, 2):
        y = (f32(i0 // 2) - lo) / max(f32(0.001), hi - lo)
        ramp = f32(1) - min(f32(1), max(f32(0), y))
        mix = ramp * f32(ext_factor)
        out.append(f32(freq_scale) * theta * (1 - mix) + theta * mix)
        theta *= theta_scale
    return np.array(out, dtype=np.float64)


@pytest.mark.parametrize("n_rot,base,orig,s", [(64, 100000.0, 8192, 2.0), (64, 100000.0, 8192, 4.0),
                                               (128, 10000.0, 4096, 8.0), (16, 10000.0, 48, 2.5)])
def test_yarn_thetas_match_llama_cpp_transcription(n_rot, base, orig, s):
    hyper = ModelHyper(n_rot=n_rot, rope_base=base, n_ctx_train=orig, head_dim=n_rot)
    sch = make_scheme("yarn", hyper, int(orig * s))
    want = transcribe_llama_cpp_yarn_thetas(n_rot, orig, base, 1.0 / s, 32.0, 1.0, 1.0)
    # 1e-5: ggml's float32 running product theta *= theta_scale drifts by ~2e-6 over 64 pairs
    np.testing.assert_allclose(sch.thetas(hyper), want, rtol=1e-5)
    # fast bands extrapolate (factor 1), slow bands interpolate (1/s)
    assert sch.freq_factors[0] == 1.0 and sch.freq_factors[-1] == pytest.approx(1.0 / s)


def test_yarn_corr_dims_known_values():
    # SmolLM2: d_r 64, base 1e5, L 8192: corr_dim(32) = 64 ln(8192/(64 pi)) / (2 ln 1e5) = 10.45...
    assert yarn_corr_dims(64, 8192, 100000.0, 32.0, 1.0) == (10.0, 20.0)
    # Llama 2: d_r 128, base 1e4, L 4096 -> (20, 46) as llama.cpp logs for it
    assert yarn_corr_dims(128, 4096, 10000.0, 32.0, 1.0) == (20.0, 46.0)


def test_yarn_temperature_is_mscale_squared_on_the_score():
    """llama.cpp multiplies q AND k by mscale = 1 + 0.1 ln s; our scheme puts mscale^2 on the score."""
    q, k, v = qkv(4)
    s = 2.5
    sch = make_scheme("yarn", HYPER, N, scale=s)
    mscale = 1.0 + 0.1 * math.log(s)
    assert sch.attn_factor == pytest.approx(mscale**2, rel=1e-12)
    theta = transcribe_llama_cpp_yarn_thetas(D, L_TRAIN, 10000.0, 1.0 / s, 32.0, 1.0, 1.0)
    want = ggml_style_rope_attention(q, k, v, theta, np.arange(N), np.arange(N), mscale=mscale)
    got = scheme_attention(sch, q, k, v)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_yarn_reads_gguf_parameters():
    hyper = ModelHyper(n_rot=D, rope_base=10000.0, n_ctx_train=4 * L_TRAIN, head_dim=D,
                       rope_scaling={"factor": 4.0, "orig_ctx": L_TRAIN, "beta_fast": 16.0, "attn_factor": 1.1})
    sch = make_scheme("yarn", hyper, 4 * L_TRAIN)
    want = transcribe_llama_cpp_yarn_thetas(D, L_TRAIN, 10000.0, 0.25, 16.0, 1.0, 1.0)
    np.testing.assert_allclose(sch.thetas(hyper), want, rtol=2e-6)
    assert sch.attn_factor == pytest.approx((1.1 * (1 + 0.1 * math.log(4.0))) ** 2, rel=1e-9)
    # an explicit option wins over the GGUF
    assert make_scheme("yarn", hyper, 100, scale=2.0).freq_factors[-1] == pytest.approx(0.5)


def test_yarn_ext_factor_zero_is_linear_without_temperature():
    sch = make_scheme("yarn", HYPER, N, scale=2.0, ext_factor=0.0)
    np.testing.assert_allclose(sch.freq_factors, np.full(D // 2, 0.5))
    assert sch.attn_factor == 1.0


@pytest.mark.parametrize("option, value", [
    ("beta_fast", float("nan")), ("beta_fast", 0.0), ("beta_slow", -1.0), ("ext_factor", float("inf")),
    ("attn_factor", 0.0), ("orig_ctx", -4),
])
def test_yarn_bad_option_names_it(option, value):
    with pytest.raises(ValueError, match=option):
        make_scheme("yarn", HYPER, N, scale=2.0, **{option: value})


# ------------------------------------------------------------------ longrope, giraffe


def test_longrope_given_divisors_and_gguf_tensor():
    rng = np.random.default_rng(5)
    div = 1.0 + rng.random(D // 2) * 8
    sch = make_scheme("longrope", HYPER, 4 * L_TRAIN, factors=div)
    np.testing.assert_allclose(sch.thetas(HYPER), base_thetas() / div, rtol=1e-12)
    a = math.sqrt(1 + math.log(4.0) / math.log(L_TRAIN))
    assert sch.attn_factor == pytest.approx(a * a)
    gguf = ModelHyper(n_rot=D, rope_base=10000.0, n_ctx_train=L_TRAIN, head_dim=D, rope_freqs=div,
                      has_rope_freqs=True, rope_scaling={"attn_factor": 1.2})
    sch2 = make_scheme("longrope", gguf, 4 * L_TRAIN)
    np.testing.assert_allclose(sch2.thetas(gguf), base_thetas() / div, rtol=1e-12)
    assert sch2.attn_factor == pytest.approx(1.44)
    # Phi-3 style: long factors past the original context, short ones inside it
    phi = ModelHyper(n_rot=D, rope_base=10000.0, n_ctx_train=L_TRAIN, head_dim=D,
                     rope_factors_long=div, rope_factors_short=np.ones(D // 2))
    np.testing.assert_allclose(make_scheme("longrope", phi, 4 * L_TRAIN).freq_factors, 1 / div)
    np.testing.assert_allclose(make_scheme("longrope", phi, L_TRAIN).freq_factors, np.ones(D // 2))


def test_longrope_without_factors_says_why():
    with pytest.raises(ValueError, match="rope_freqs"):
        make_scheme("longrope", HYPER, 4 * L_TRAIN)
    with pytest.raises(ValueError, match="n_rot/2"):
        make_scheme("longrope", HYPER, 4 * L_TRAIN, factors=[1.0, 2.0])


def test_longrope_short_factors_switch_by_length():
    div, ones = np.linspace(1, 6, D // 2), np.ones(D // 2)
    sch = make_scheme("longrope", HYPER, 4 * L_TRAIN, factors=div, short_factors=ones * 1.5)
    a2 = 1 + math.log(4.0) / math.log(L_TRAIN)
    assert sch.dynamic and sch.attn_factor == pytest.approx(a2)
    np.testing.assert_allclose(sch.freq_factors, 1 / div)  # the scheme as n_ctx asks: the long set
    for length, want, attn in ((1, ones / 1.5, 1.0), (L_TRAIN, ones / 1.5, 1.0), (L_TRAIN + 1, 1 / div, a2)):
        got = sch.resolve(length)
        assert not got.dynamic and got.attn_factor == pytest.approx(attn)
        np.testing.assert_allclose(got.freq_factors, want)
    inside = make_scheme("longrope", HYPER, L_TRAIN, factors=div, short_factors=ones)
    assert not inside.dynamic and inside.attn_factor == 1.0
    np.testing.assert_allclose(inside.freq_factors, ones)
    assert not make_scheme("longrope", HYPER, 4 * L_TRAIN, factors=div).dynamic  # no short set: static
    with pytest.raises(ValueError, match="short_factors go with factors"):
        make_scheme("longrope", HYPER, 4 * L_TRAIN, short_factors=ones)
    with pytest.raises(ValueError, match="short_factors must have"):
        make_scheme("longrope", HYPER, 4 * L_TRAIN, factors=div, short_factors=[1.0])


def test_model_rope_freqs_fold_into_other_schemes():
    div = np.linspace(1, 4, D // 2)
    hyper = ModelHyper(n_rot=D, rope_base=10000.0, n_ctx_train=L_TRAIN, head_dim=D, rope_freqs=div, has_rope_freqs=True)
    np.testing.assert_allclose(make_scheme("linear", hyper, 2 * L_TRAIN).thetas(hyper), base_thetas() / div / 2)
    np.testing.assert_allclose(make_scheme("none", hyper, 2 * L_TRAIN).thetas(hyper), base_thetas() / div)


def test_giraffe_power_formula():
    sch = make_scheme("power", HYPER, N, power=0.5)
    i = np.arange(D // 2)
    want = base_thetas() * (1 - 2 * i / D) ** 0.5  # Pal et al. 2023, Sec. 3.2
    np.testing.assert_allclose(sch.thetas(HYPER), want, rtol=1e-12)
    q, k, v = qkv(6)
    np.testing.assert_allclose(scheme_attention(sch, q, k, v),
                               ggml_style_rope_attention(q, k, v, want, np.arange(N), np.arange(N)), atol=1e-10)


def test_giraffe_truncation_formula():
    T = 40.0
    sch = make_scheme("truncate", HYPER, N, wavelength=T)
    b = 2 * math.pi / T
    a, rho = b / 8, b / 16
    th = base_thetas()
    want = np.array([t if t >= b else (rho if t >= a else 0.0) for t in th])  # Sec. 3.3
    assert (want == 0).any() and (want == rho).any() and (want == th).any()  # all three branches taken
    np.testing.assert_allclose(sch.thetas(HYPER), want, rtol=1e-12, atol=1e-14)
    q, k, v = qkv(7)
    np.testing.assert_allclose(scheme_attention(sch, q, k, v),
                               ggml_style_rope_attention(q, k, v, want, np.arange(N), np.arange(N)), atol=1e-9)


# ------------------------------------------------------------------ relative-position maps


def attention_with_rel(q, k, v, rel_fn, logn_train_len=0, scale=None, keep=None):
    """Attention from an explicit relative-position function: score(i, j) = <R_rel(i,j) q_i, R_0 k_j>,
    evaluated pair by pair (independent of reference.relative_positions); keep(i, j) False drops
    the key."""
    th = base_thetas()
    n, h, _ = q.shape
    kk = np.repeat(k, h // k.shape[1], axis=1)
    vv = np.repeat(v, h // v.shape[1], axis=1)
    out = np.zeros_like(q)
    for i in range(n):
        rel = np.array([rel_fn(i, j) for j in range(i + 1)], dtype=np.float64)
        ang = rel[:, None] * th[None, :]
        c, s = np.cos(ang), np.sin(ang)
        a, b = q[i, :, 0::2], q[i, :, 1::2]
        qr = np.empty((i + 1, h, D))
        qr[:, :, 0::2] = a[None] * c[:, None] - b[None] * s[:, None]
        qr[:, :, 1::2] = a[None] * s[:, None] + b[None] * c[:, None]
        lam = max(1.0, math.log(i + 1) / math.log(logn_train_len)) if logn_train_len else 1.0
        sc = np.einsum("jhd,jhd->hj", qr, kk[: i + 1]) * (scale or 1 / math.sqrt(D)) * lam
        if keep is not None:
            sc[:, [not keep(i, j) for j in range(i + 1)]] = -np.inf
        sc -= sc.max(1, keepdims=True)
        p = np.exp(sc)
        p /= p.sum(1, keepdims=True)
        out[i] = np.einsum("hj,jhd->hd", p, vv[: i + 1])
    return out


def test_self_extend_matches_the_grouped_distance_formula():
    W, G = 16, 4
    sch = make_scheme("self-extend", HYPER, N, group=G, window=W)
    assert (sch.window, sch.far_mode, sch.group_size) == (W, FAR_GROUP, G)

    def rel(i, j):  # i - j inside the neighbour window, else grouped (README "The math", ggml_rerope/reference.py)
        return i - j if i - j < W else i // G - j // G + W - W // G

    q, k, v = qkv(8)
    np.testing.assert_allclose(scheme_attention(sch, q, k, v), attention_with_rel(q, k, v, rel), atol=1e-10)


def test_self_extend_default_group_fits_the_trained_context():
    for n_ctx in (L_TRAIN, 2 * L_TRAIN, 5 * L_TRAIN, 33 * L_TRAIN):
        sch = make_scheme("self-extend", HYPER, n_ctx)
        G, W = sch.group_size, sch.window
        i = n_ctx - 1
        assert i // G + W - W // G <= L_TRAIN - 1
        if G > 2:  # and it is the smallest such group
            assert i // (G - 1) + W - W // (G - 1) > L_TRAIN - 1


def test_fit_len_keeps_the_far_distances_below_it():
    """fit_len moves the fitted slope / group's target below the trained context; every distance of
    n_ctx then lands below fit_len, and the smallest such group is chosen."""
    fit = L_TRAIN // 2
    for n_ctx in (2 * L_TRAIN, 9 * L_TRAIN):
        i = n_ctx - 1
        sch = make_scheme("self-extend", HYPER, n_ctx, fit_len=fit)
        G, W = sch.group_size, sch.window
        assert i // G + W - W // G <= fit - 1 < i // (G - 1) + W - W // (G - 1)
        assert G > make_scheme("self-extend", HYPER, n_ctx).group_size
        sch = make_scheme("leaky-rerope", HYPER, n_ctx, fit_len=fit)
        assert sch.window + (i - sch.window) / sch.leaky_k == pytest.approx(fit - 1)


@pytest.mark.parametrize("name", ["self-extend", "leaky-rerope"])
@pytest.mark.parametrize("fit_len, message", [
    (0, "in \\[window"), (-5, "in \\[window"), (L_TRAIN // 4 + 1, "in \\[window"), (L_TRAIN + 1, "in \\[window"),
    ("x", "an integer"), (4.5, "an integer"), (True, "an integer")])
def test_bad_fit_len_is_a_clear_error(name, fit_len, message):
    with pytest.raises(ValueError, match=f"fit_len must be {message}"):
        make_scheme(name, HYPER, 4 * L_TRAIN, fit_len=fit_len)


def test_fit_len_bounds_are_inclusive():
    w = L_TRAIN // 4  # both schemes' default window
    for name in ("self-extend", "leaky-rerope"):
        for fit in (w + 2, L_TRAIN):
            make_scheme(name, HYPER, 4 * L_TRAIN, fit_len=fit)


@pytest.mark.parametrize("name, fixed", [("self-extend", dict(group=4)), ("leaky-rerope", dict(leaky_k=3.0))])
def test_fit_len_beside_the_option_it_fits_is_an_error(name, fixed):
    with pytest.raises(ValueError, match="give one of them"):
        make_scheme(name, HYPER, 4 * L_TRAIN, fit_len=L_TRAIN // 2, **fixed)


@pytest.mark.parametrize("logn", [True, False])
def test_rerope_clamp_map(logn):
    w = 20
    sch = make_scheme("rerope", HYPER, N, window=w, logn=logn)
    assert (sch.window, sch.far_mode, sch.logn_train_len) == (w, FAR_CLAMP, L_TRAIN if logn else 0)
    q, k, v = qkv(9)
    want = attention_with_rel(q, k, v, lambda i, j: min(i - j, w), logn_train_len=L_TRAIN if logn else 0)
    np.testing.assert_allclose(scheme_attention(sch, q, k, v), want, atol=1e-10)


@pytest.mark.parametrize("logn", [True, False])
def test_leaky_rerope_map(logn):
    w, kk = 12, 3.0
    sch = make_scheme("leaky-rerope", HYPER, N, window=w, leaky_k=kk, logn=logn)
    assert (sch.far_mode, sch.leaky_k) == (FAR_LEAKY, kk)
    q, k, v = qkv(10)
    want = attention_with_rel(q, k, v, lambda i, j: i - j if i - j < w else w + (i - j - w) / kk,
                              logn_train_len=L_TRAIN if logn else 0)
    np.testing.assert_allclose(scheme_attention(sch, q, k, v), want, atol=1e-10)


def test_leaky_default_k_maps_the_context_onto_the_trained_range():
    for n_ctx in (2 * L_TRAIN, 4 * L_TRAIN, 10 * L_TRAIN):
        sch = make_scheme("leaky-rerope", HYPER, n_ctx)
        d = n_ctx - 1
        assert sch.window + (d - sch.window) / sch.leaky_k == pytest.approx(L_TRAIN - 1)
    assert make_scheme("leaky-rerope", HYPER, L_TRAIN // 2).leaky_k == 1.0


def test_rerope_with_large_window_is_rope():
    q, k, v = qkv(11)
    sch = make_scheme("rerope", HYPER, N, window=N, logn=False)
    want = ggml_style_rope_attention(q, k, v, base_thetas(), np.arange(N), np.arange(N))
    np.testing.assert_allclose(scheme_attention(sch, q, k, v), want, atol=1e-10)


def test_dual_chunk_is_the_papers_three_position_maps():
    """Keys at j mod s; queries at i mod s (same chunk), min(s + i mod s, C) (next chunk), C (later)."""
    C, lw = 12, 4
    s = C - lw
    sch = make_scheme("dual-chunk", HYPER, N, chunk_size=C, local_window=lw, logn=False)
    assert (sch.window, sch.far_mode, sch.chunk_len) == (C, FAR_CHUNK, s)

    def rel(i, j):
        if i // s == j // s:
            return i % s - j % s
        if i // s == j // s + 1:
            return min(s + i % s, C) - j % s
        return C - j % s

    q, k, v = qkv(21)
    np.testing.assert_allclose(scheme_attention(sch, q, k, v), attention_with_rel(q, k, v, rel), atol=1e-10)


def test_dual_chunk_defaults_are_chunkllamas():
    sch = make_scheme("dual-chunk", HYPER, N)
    assert (sch.window, sch.chunk_len, sch.logn_train_len) == (36, 36 - 3, L_TRAIN)
    with pytest.raises(ValueError, match="local_window"):
        make_scheme("dual-chunk", HYPER, N, chunk_size=12, local_window=6)
    with pytest.raises(ValueError, match="chunk_size must be >= 3"):
        make_scheme("dual-chunk", HYPER, N, chunk_size=2)


@pytest.mark.parametrize("n_ctx_train", [2, 3, 4, 5, 8, 17])
def test_dual_chunk_defaults_hold_for_tiny_models(n_ctx_train):
    """The defaults always give a valid chunk (s > C / 2), however short the trained context."""
    hyper = ModelHyper(n_rot=D, rope_base=10000.0, n_ctx_train=n_ctx_train, head_dim=D)
    sch = make_scheme("dual-chunk", hyper, 4 * n_ctx_train)
    assert sch.window >= 3 and sch.window / 2 < sch.chunk_len < sch.window


def test_lm_infinite_sees_the_window_and_the_sinks_only():
    w, sinks = 10, 2
    sch = make_scheme("lm-infinite", HYPER, N, window=w, sink_tokens=sinks)
    assert (sch.window, sch.sliding_window, sch.sink_tokens, sch.logn_train_len) == (w, w, sinks, 0)
    q, k, v = qkv(22)
    want = attention_with_rel(q, k, v, lambda i, j: min(i - j, w), keep=lambda i, j: i - j < w or j < sinks)
    np.testing.assert_allclose(scheme_attention(sch, q, k, v), want, atol=1e-10)
    assert make_scheme("lm-infinite", HYPER, N).sink_tokens == 10


def test_sliding_window_options_are_checked():
    with pytest.raises(ValueError, match="sink_tokens needs a sliding_window"):
        make_scheme("rerope", HYPER, N, sink_tokens=4)
    with pytest.raises(ValueError, match="sliding_window must be >= 0"):
        make_scheme("rerope", HYPER, N, sliding_window=-1)


def test_ntk_mixed_frequencies():
    """theta_m * exp(-a (m+1)^b), a = ln s / (d/2)^b: the slowest pair divided by s."""
    s, b = N / L_TRAIN, 0.75
    sch = make_scheme("ntk-mixed", HYPER, N)
    m = np.arange(D // 2)
    want = base_thetas() * np.exp(-math.log(s) / (D / 2) ** b * (m + 1) ** b)
    np.testing.assert_allclose(sch.thetas(HYPER), want, rtol=1e-12)
    assert sch.thetas(HYPER)[-1] == pytest.approx(base_thetas()[-1] / s)
    assert sch.logn_train_len == L_TRAIN
    np.testing.assert_allclose(make_scheme("ntk-mixed", HYPER, L_TRAIN).thetas(HYPER), base_thetas())


def test_rerope_temperature_and_logn_length():
    s = N / L_TRAIN
    yarn_t = (0.1 * math.log(s) + 1) ** 2
    assert make_scheme("rerope", HYPER, N, temperature="yarn").attn_factor == pytest.approx(yarn_t)
    assert make_scheme("leaky-rerope", HYPER, N, temperature=1.3).attn_factor == 1.3
    assert make_scheme("rerope", HYPER, N, logn_len=24).logn_train_len == 24
    with pytest.raises(ValueError, match="temperature"):
        make_scheme("rerope", HYPER, N, temperature="hot")
    with pytest.raises(ValueError, match="logn_len needs log-n"):
        make_scheme("rerope", HYPER, N, logn_len=24, logn=False)


# ------------------------------------------------------------------ the C operator with each scheme


OP_CASES = [("none", {}), ("linear", {}), ("ntk", {}), ("yarn", {}), ("power", {}), ("truncate", {}),
            ("longrope", {"factors": np.linspace(1, 6, D // 2)}), ("self-extend", {"group": 3, "window": 10}),
            ("rerope", {"window": 20}), ("rerope", {"window": 20, "logn": False}),
            ("leaky-rerope", {"window": 10}), ("leaky-rerope", {"window": 10, "logn": False}),
            ("dual-chunk", {"chunk_size": 12, "local_window": 4}), ("dual-chunk", {"chunk_size": 9, "local_window": 4}),
            ("lm-infinite", {"window": 10, "sink_tokens": 2}), ("ntk-mixed", {}), ("ntk-mixed", {"logn": False}),
            ("rerope", {"window": 12, "temperature": "yarn", "sliding_window": 20, "sink_tokens": 3}),
            ("leaky-rerope", {"window": 8, "logn_len": 16, "temperature": 1.2})]


@pytest.mark.parametrize("name,opts", OP_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OP_CASES)])
def test_operator_with_scheme_matches_reference(name, opts):
    from ggml_rerope import rerope_attention

    q, k, v = qkv(12, heads=4, kv_heads=2)
    sch = make_scheme(name, HYPER, N, **opts)
    kw = sch.attention_kwargs(HYPER)
    want = reference.rerope_attention(q, k, v, **kw)
    got = rerope_attention(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), threads=1, **kw)
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_dynamic_ntk_on_operator_matches_fresh_rotation():
    """Keys cached raw + the current base = the same as rotating everything with that base."""
    from ggml_rerope import rerope_attention

    q, k, v = qkv(13)
    sch = make_scheme("dynamic-ntk", HYPER, N).resolve(N)
    b = 10000.0 * (N / L_TRAIN) ** (D / (D - 2.0))
    got = rerope_attention(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), threads=1,
                           **sch.attention_kwargs(HYPER))
    want = ggml_style_rope_attention(q, k, v, base_thetas(b), np.arange(N), np.arange(N))
    np.testing.assert_allclose(got, want, atol=2e-4)


# ------------------------------------------------------------------ command-line flags


def parse(argv):
    p = argparse.ArgumentParser()
    add_scheme_arguments(p)
    return p.parse_args(argv)


def test_cli_flags_make_the_scheme():
    sch = scheme_from_args(parse(["--rope-scaling", "leaky-rerope", "--rerope-window", "8", "--rerope-leaky-k", "2",
                                  "--no-logn"]), HYPER, N)
    assert (sch.name, sch.window, sch.leaky_k, sch.logn_train_len) == ("leaky-rerope", 8, 2.0, 0)
    args = parse(["--rope-scaling", "self-extend", "--grp-attn-n", "4", "--grp-attn-w", "16"])
    sch = scheme_from_args(args, HYPER, N)
    assert (sch.group_size, sch.window) == (4, 16)
    sch = scheme_from_args(parse(["--rope-scaling", "yarn", "--rope-scale", "2", "--yarn-beta-fast", "16"]), HYPER, N)
    want = transcribe_llama_cpp_yarn_thetas(D, L_TRAIN, 10000.0, 0.5, 16.0, 1.0, 1.0)
    np.testing.assert_allclose(sch.thetas(HYPER), want, rtol=2e-6)
    assert scheme_from_args(parse([]), HYPER, N).name == "rerope"


def test_cli_flags_of_the_newer_schemes():
    sch = scheme_from_args(parse(["--rope-scaling", "dual-chunk", "--chunk-size", "20", "--local-window", "5",
                                  "--sliding-window", "30", "--sink-tokens", "4", "--attn-temperature", "yarn"]),
                           HYPER, N)
    assert (sch.window, sch.chunk_len, sch.sliding_window, sch.sink_tokens) == (20, 15, 30, 4)
    assert sch.attn_factor > 1
    sch = scheme_from_args(parse(["--rope-scaling", "lm-infinite", "--lm-infinite-window", "16"]), HYPER, N)
    assert (sch.window, sch.sliding_window, sch.sink_tokens) == (16, 16, 10)
    sch = scheme_from_args(parse(["--rope-scaling", "ntk-mixed", "--ntk-mixed-exponent", "0.5", "--no-logn"]), HYPER, N)
    assert sch.logn_train_len == 0
    sch = scheme_from_args(parse(["--rope-scaling", "rerope", "--logn-len", "24", "--attn-temperature", "1.1"]),
                           HYPER, N)
    assert (sch.logn_train_len, sch.attn_factor) == (24, 1.1)
    with pytest.raises(ValueError, match="--chunk-size"):
        scheme_options_from_args(parse(["--rope-scaling", "rerope", "--chunk-size", "20"]))
    with pytest.raises(SystemExit):
        parse(["--attn-temperature", "warm"])


def test_cli_flag_for_another_scheme_is_an_error():
    with pytest.raises(ValueError, match="--grp-attn-n"):
        scheme_options_from_args(parse(["--rope-scaling", "rerope", "--grp-attn-n", "4"]))
    with pytest.raises(ValueError, match="--no-logn"):
        scheme_options_from_args(parse(["--rope-scaling", "yarn", "--no-logn"]))
    with pytest.raises(ValueError, match="valid"):
        scheme_options_from_args(parse(["--rope-scaling", "bogus"]))


def test_cli_longrope_factors_file_and_list(capsys, tmp_path):
    f = tmp_path / "factors.json"
    f.write_text('{"long_factor": [1.0, 2.0, 3.5], "short_factor": [1, 1, 1.5], "made_by": "hand"}')
    got = parse(["--rope-scaling", "longrope", "--longrope-factors", str(f)]).longrope_factors
    assert got.long == (1.0, 2.0, 3.5) and got.short == (1.0, 1.0, 1.5) and got.meta == {"made_by": "hand"}
    assert parse(["--rope-scaling", "longrope", "--longrope-factors", "1,2 3.5"]).longrope_factors == [1.0, 2.0, 3.5]
    numbers = tmp_path / "numbers.txt"  # one file format: a bare list of numbers is not it
    numbers.write_text("1.0 2.0\n3.5\n")
    short_longer = tmp_path / "bad.json"
    short_longer.write_text('{"long_factor": [1, 2], "short_factor": [1, 1, 1]}')
    for bad, why in (("1,2,x", "could not convert"), (str(tmp_path / "missing.txt"), "could not convert"),
                     (str(numbers), "not JSON"), (str(short_longer), "short_factor has 3 values")):
        with pytest.raises(SystemExit):
            parse(["--rope-scaling", "longrope", "--longrope-factors", bad])
        err = capsys.readouterr().err
        assert "--longrope-factors: not a factors file nor a list of numbers" in err and why in err, err
        assert "_parse_factors" not in err


def test_c_struct_conversion():
    from ggml_rerope._internals import c_scheme

    sch = make_scheme("yarn", HYPER, N)
    s, keep = c_scheme(sch)
    assert s.window == WINDOW_NONE and s.far_mode == FAR_CLAMP
    assert s.attn_factor == pytest.approx(sch.attn_factor, rel=1e-6)
    assert [s.freq_factors[m] for m in range(D // 2)] == pytest.approx(list(sch.freq_factors), rel=1e-6)
    with pytest.raises(ValueError, match="dynamic"):
        c_scheme(make_scheme("dynamic-ntk", HYPER, N))
    s, _ = c_scheme(make_scheme("dynamic-ntk", HYPER, N), length=4 * L_TRAIN)
    assert s.rope_base == pytest.approx(10000.0 * 4 ** (D / (D - 2)), rel=1e-6)
    s, keep = c_scheme(make_scheme("leaky-rerope", HYPER, N, window=8, leaky_k=3))
    from ggml_rerope._binding import ffi

    assert (s.window, s.far_mode, s.leaky_k, s.logn_train_len) == (8, FAR_LEAKY, 3.0, L_TRAIN)
    assert s.freq_factors == ffi.NULL and keep is None
    s, _ = c_scheme(make_scheme("dual-chunk", HYPER, N, chunk_size=20, local_window=5, sliding_window=40,
                                sink_tokens=3))
    assert (s.window, s.far_mode, s.chunk_len, s.sliding_window, s.sink_tokens) == (20, FAR_CHUNK, 15, 40, 3)


def test_scheme_is_a_value():
    assert make_scheme("rerope", HYPER, N) == Scheme("rerope", window=L_TRAIN // 2, logn_train_len=L_TRAIN)


# ------------------------------------------------------------------ the GGUF's rotary metadata, read by the C loader


def test_from_gguf_reads_the_rotary_metadata_the_file_holds(tmp_path):
    """ModelHyper.from_gguf gets every rope.scaling.* key, rope_freqs and the LongRoPE factor tensors
    through the runtime's loader (no GGUF parsing in Python): the values written come back."""
    import gguf

    import gguf_factory

    F32, U32, STR = gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.STRING
    n_pairs = gguf_factory.DEFAULT_SHAPE["head_dim"] // 2
    long_f, short_f = np.linspace(1.0, 6.0, n_pairs), np.linspace(1.0, 1.5, n_pairs)
    keys = {"type": ("yarn", STR), "factor": (4.0, F32), "original_context_length": (1024, U32),
            "attn_factor": (1.25, F32), "yarn_ext_factor": (0.5, F32), "yarn_attn_factor": (0.75, F32),
            "yarn_beta_fast": (16.0, F32), "yarn_beta_slow": (2.0, F32), "yarn_log_multiplier": (0.1, F32)}
    path = gguf_factory.write_model(
        tmp_path / "scaled.gguf", "llama", "F32", n_ctx_train=4096, rope_freqs=True,
        metadata={f"llama.rope.scaling.{k}": v for k, v in keys.items()},
        extra_tensors={"rope_factors_long.weight": long_f.astype(np.float32),
                       "rope_factors_short.weight": short_f.astype(np.float32)})
    h = ModelHyper.from_gguf(path)
    assert (h.n_rot, h.rope_base, h.n_ctx_train, h.head_dim) == (2 * n_pairs, 10000.0, 4096, 2 * n_pairs)
    scaling = dict(h.rope_scaling)
    assert scaling.pop("type") == "yarn"
    assert scaling == pytest.approx({"factor": 4.0, "orig_ctx": 1024, "attn_factor": 1.25, "ext_factor": 0.5,
                                     "yarn_attn_factor": 0.75, "beta_fast": 16.0, "beta_slow": 2.0, "log_mul": 0.1},
                                    rel=1e-6)
    assert h.has_rope_freqs
    np.testing.assert_array_equal(h.rope_freqs, np.geomspace(1.0, 8.0, n_pairs).astype(np.float32))
    np.testing.assert_array_equal(h.rope_factors_long, long_f.astype(np.float32))
    np.testing.assert_array_equal(h.rope_factors_short, short_f.astype(np.float32))
    # the schemes read them: YaRN from the keys, LongRoPE from the long factors beyond orig_ctx
    written = ModelHyper(n_rot=2 * n_pairs, rope_base=10000.0, n_ctx_train=4096, head_dim=2 * n_pairs,
                         rope_freqs=np.geomspace(1.0, 8.0, n_pairs), has_rope_freqs=True,
                         rope_scaling={"factor": 4.0, "orig_ctx": 1024, "attn_factor": 1.25, "ext_factor": 0.5,
                                       "beta_fast": 16.0, "beta_slow": 2.0, "log_mul": 0.1})
    got, want = make_scheme("yarn", path, 4096), make_scheme("yarn", written, 4096)
    np.testing.assert_allclose(got.freq_factors, want.freq_factors, rtol=1e-6)
    assert got.attn_factor == pytest.approx(want.attn_factor, rel=1e-6) and got.attn_factor != 1.0
    np.testing.assert_allclose(make_scheme("longrope", path, 2048).freq_factors, 1 / long_f, rtol=1e-6)

    plain = ModelHyper.from_gguf(gguf_factory.write_model(tmp_path / "plain.gguf", "qwen2", "F32"))
    assert plain.rope_scaling == {} and not plain.has_rope_freqs
    assert plain.rope_freqs is None and plain.rope_factors_long is None and plain.rope_factors_short is None


def test_model_folds_the_gguf_rope_freqs_into_its_scheme(tmp_path):
    """Model builds its scheme from the factors the loader read: "linear" at scale 1 hands the
    operator 1/rope_freqs explicitly and must compute what "none" (the runtime's own factors) does,
    and differ from the same weights without rope_freqs."""
    import gguf_factory
    from ggml_rerope.model import Model

    tokens = np.random.default_rng(9).integers(3, gguf_factory.DEFAULT_SHAPE["n_vocab"], 48)
    freqs = gguf_factory.write_model(tmp_path / "freqs.gguf", "llama", "F32", seed=12, rope_freqs=True)
    plain = gguf_factory.write_model(tmp_path / "plain.gguf", "llama", "F32", seed=12)
    logits = {}
    for label, path, kw in (("none", freqs, dict(rope_scaling="none")),
                            ("linear", freqs, dict(rope_scaling="linear", rope_options={"scale": 1.0})),
                            ("plain", plain, dict(rope_scaling="none"))):
        with Model(str(path), n_ctx=64, n_threads=1, **kw) as m:
            if label == "linear":
                np.testing.assert_allclose(m.scheme.freq_factors, 1 / np.geomspace(1.0, 8.0, 32), rtol=1e-6)
            logits[label] = m.logits(tokens)
    np.testing.assert_allclose(logits["linear"], logits["none"], atol=1e-5, rtol=0)
    assert np.abs(logits["plain"] - logits["none"]).max() > 1e-2


# ------------------------------------------------------------------ a live switch on a Model context


def test_live_scheme_switch_needs_no_reprefill():
    """Prefill P tokens with plain RoPE, switch the live context to ReRoPE with a window w >= P
    (the two agree on every pair of the prefix, so the cached raw K/V are what ReRoPE would have
    written), evaluate more tokens: the logits equal a fresh ReRoPE context's, although the cache
    was never recomputed. With rotated keys (llama.cpp) the prefix would have to be re-rotated."""
    from ggml_rerope.model import Model

    P, N, w = 96, 224, 128
    with Model(n_ctx=N, n_batch=64, rope_scaling="none") as m:
        toks = m.tokenize("It was in July, 1805, and the speaker was the well-known Anna Pavlovna Scherer, " * 30)[:N]
        m.eval(toks[:P])
        m.set_rope_scaling("rerope", rerope_window=w, logn=False)
        assert m.n_past == P  # nothing was evaluated again
        live = m.eval(toks[P:], logits_all=True)
        fresh = Model(n_ctx=N, n_batch=64, rope_scaling="rerope", rerope_window=w, logn=False)
        with fresh:
            want = fresh.logits(toks)[P:]
        m.set_rope_scaling("none")
        plain = m.logits(toks)[P:]
    far = slice(w - P + 8, None)  # rows whose queries see keys beyond the window
    np.testing.assert_allclose(live, want, atol=1e-3, rtol=0)
    # and the switch did change the far rows: plain RoPE differs there by much more than the noise
    assert np.abs(plain[far] - want[far]).max() > 20 * np.abs(live[far] - want[far]).max()
