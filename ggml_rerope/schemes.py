"""Training-free position schemes as parameters of the one attention operator.

Every scheme below is a choice of the operator's parameters (src/ggml_rerope.h):

    theta_m  = freq_factors[m] * base^(-2m/d_r)          per-dimension frequencies
    rel(i,j) = window / far_mode / leaky_k / group_size / chunk_len   relative-position map
    keys dropped past sliding_window, except the first sink_tokens      (Lambda-shaped attention)
    s_ij     = lambda_i * attn_factor / sqrt(d) * <R_rel q_i, k_j>,
    lambda_i = log-n scaling with L_train = logn_train_len (0 = off)

A scheme function takes the model's hyperparameters (`ModelHyper`: n_rot, rope_base,
n_ctx_train, head_dim and, when the GGUF has them, its rope_freqs tensor and YaRN
metadata), the target context `n_ctx` and the user's options, and returns a `Scheme`.
`make_scheme(name, info, n_ctx, **options)` picks the function from `SCHEMES`.

Conventions worth knowing:
- `freq_factors` here MULTIPLY theta (the operator's convention). ggml's rope and the GGUF
  `rope_freqs` / `rope_factors_*` tensors DIVIDE; they are inverted where read.
- A model's own rope_freqs (Llama 3 style) are folded into every scheme's factors, as
  llama.cpp applies them under every scaling type.
- `attn_factor` multiplies the SCORE. ggml multiplies the rotated q AND k by its mscale, so
  a llama.cpp mscale m becomes attn_factor = m^2 here.
- Schemes without a position map of their own (the frequency scalings) use window =
  WINDOW_NONE, which makes the operator plain RoPE attention.

This module is the math only: the command-line flags are in scheme_flags.py, the runtime's C
struct is made by _internals.c_scheme, and a GGUF's rotary metadata is read by the C loader
(ModelHyper.from_gguf).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Mapping
from typing import Callable, Optional

import numpy as np

from ._binding import lib as _lib  # enum values only: the library itself is not opened

FAR_CLAMP, FAR_LEAKY, FAR_GROUP = _lib.GGML_REROPE_FAR_CLAMP, _lib.GGML_REROPE_FAR_LEAKY, _lib.GGML_REROPE_FAR_GROUP
FAR_CHUNK = _lib.GGML_REROPE_FAR_CHUNK
WINDOW_NONE = 2**31 - 1  # INT32_MAX: every distance is "near", i.e. plain RoPE

# A frequency of exactly 0 (no rotation) is what Giraffe truncation asks for, but the
# operator accepts only factors > 0. This angle per position, 1e-15 rad, keeps every
# rotation below float32 resolution for contexts up to 10^7 tokens (cos == 1.0f, sin < 1e-8),
# so the rotation is the identity in the arithmetic the kernels do.
ZERO_THETA = 1e-15


# ------------------------------------------------------------------ model hyperparameters


@dataclasses.dataclass(frozen=True)
class ModelHyper:
    """What a scheme needs to know about the model."""

    n_rot: int
    rope_base: float
    n_ctx_train: int
    head_dim: int
    rope_freqs: Optional[np.ndarray] = None  # GGUF rope_freqs (divisors), n_rot/2
    rope_factors_long: Optional[np.ndarray] = None  # GGUF LongRoPE factors (divisors)
    rope_factors_short: Optional[np.ndarray] = None
    rope_scaling: Mapping = dataclasses.field(default_factory=dict)  # GGUF rope.scaling.* keys present
    has_rope_freqs: bool = False  # the GGUF has a rope_freqs tensor (known even if not read)

    def __post_init__(self):
        if self.n_rot < 2 or self.n_rot % 2:
            raise ValueError(f"n_rot must be even and >= 2, got {self.n_rot}")
        if not self.rope_base > 1:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}")
        if self.n_ctx_train < 2:
            raise ValueError(f"n_ctx_train must be >= 2, got {self.n_ctx_train}")

    def model_factors(self) -> np.ndarray:
        """Multipliers of theta the model itself uses: 1 / rope_freqs, or ones."""
        if self.rope_freqs is not None:
            return 1.0 / np.asarray(self.rope_freqs, dtype=np.float64)
        if self.has_rope_freqs:
            raise ValueError(
                "the model has a rope_freqs tensor but its values were not read; pass the model's "
                "path (ModelHyper.from_gguf) so the scheme can fold them in"
            )
        return np.ones(self.n_rot // 2)

    @classmethod
    def from_gguf(cls, path) -> ModelHyper:
        """Hyperparameters, rope_freqs / rope_factors_* tensors and rope.scaling.* metadata of a GGUF,
        as the runtime's loader reads them (ggml_rerope_model_get_rope_info)."""
        from ._internals import read_model_hyper  # the C library; scheme math alone does not need it

        return read_model_hyper(path)


def hyper_from(info) -> ModelHyper:
    """A ModelHyper from a ModelHyper, a GGUF path (`ModelHyper.from_gguf`), a mapping, or any object
    with the attributes n_rot, rope_base, n_ctx_train, head_dim (a runtime ggml_rerope_model_info)."""
    if isinstance(info, ModelHyper):
        return info
    if isinstance(info, (str, pathlib.Path)):
        return ModelHyper.from_gguf(info)
    if isinstance(info, Mapping):
        get = info.get
    else:
        def get(key, default=None):
            return getattr(info, key, default)
    missing = [k for k in ("n_rot", "rope_base", "n_ctx_train", "head_dim") if get(k) is None]
    if missing:
        raise TypeError(f"info must give n_rot, rope_base, n_ctx_train and head_dim; missing {missing}")
    return ModelHyper(
        n_rot=int(get("n_rot")),
        rope_base=float(get("rope_base")),
        n_ctx_train=int(get("n_ctx_train")),
        head_dim=int(get("head_dim")),
        has_rope_freqs=bool(get("has_rope_freqs", False)),
    )


# ------------------------------------------------------------------ the operator parameters


@dataclasses.dataclass(frozen=True)
class Scheme:
    """Operator parameters of one position scheme (see the module docstring).

    rope_base 0 and freq_factors None mean "the model's own". `resolve(length)` gives the
    parameters to use when the sequence is `length` tokens long: the scheme itself, except for
    dynamic schemes (dynamic-ntk), which are recomputed from the length.
    """

    name: str
    window: int = WINDOW_NONE
    far_mode: int = FAR_CLAMP
    leaky_k: float = 1.0
    group_size: int = 1
    logn_train_len: int = 0
    rope_base: float = 0.0
    freq_factors: Optional[np.ndarray] = None
    attn_factor: float = 1.0
    chunk_len: int = 0
    sliding_window: int = 0
    sink_tokens: int = 0
    resolver: Optional[Callable[[int], Scheme]] = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def dynamic(self) -> bool:
        return self.resolver is not None

    def resolve(self, length: int) -> Scheme:
        return self if self.resolver is None else self.resolver(int(length))

    def base(self, hyper: ModelHyper) -> float:
        return self.rope_base if self.rope_base > 0 else hyper.rope_base

    def factors(self, hyper: ModelHyper) -> np.ndarray:
        """The multipliers of theta in effect (the model's own when freq_factors is None)."""
        return hyper.model_factors() if self.freq_factors is None else np.asarray(self.freq_factors, np.float64)

    def thetas(self, hyper: ModelHyper) -> np.ndarray:
        """theta_m = freq_factors[m] * base^(-2m/n_rot), float64."""
        m = np.arange(hyper.n_rot // 2, dtype=np.float64)
        return self.factors(hyper) * self.base(hyper) ** (-2.0 * m / hyper.n_rot)

    def attention_kwargs(self, hyper: ModelHyper) -> dict:
        """Keyword arguments of ggml_rerope.rerope_attention and reference.rerope_attention."""
        hyper = hyper_from(hyper)
        return dict(
            window=self.window,
            leaky=self.leaky_k if self.far_mode == FAR_LEAKY else None,
            group=self.group_size if self.far_mode == FAR_GROUP else None,
            chunk=self.chunk_len if self.far_mode == FAR_CHUNK else None,
            sliding_window=self.sliding_window,
            sink_tokens=self.sink_tokens,
            logn_train_len=self.logn_train_len or None,
            base=self.base(hyper),
            n_rot=hyper.n_rot,
            freq_factors=None if self.freq_factors is None else np.asarray(self.freq_factors, np.float64),
            scale=self.attn_factor / math.sqrt(hyper.head_dim),
        )

    def describe(self) -> str:
        parts = [self.name]
        if self.window != WINDOW_NONE:
            parts.append(f"w={self.window}")
            if self.far_mode == FAR_LEAKY:
                parts.append(f"k={self.leaky_k:g}")
            if self.far_mode == FAR_GROUP:
                parts.append(f"G={self.group_size}")
            if self.far_mode == FAR_CHUNK:
                parts.append(f"s={self.chunk_len}")
        if self.sliding_window:
            parts.append(f"sliding={self.sliding_window} sinks={self.sink_tokens}")
        if self.logn_train_len:
            parts.append(f"logn(L={self.logn_train_len})")
        if self.rope_base:
            parts.append(f"base={self.rope_base:.6g}")
        if self.freq_factors is not None:
            f = np.asarray(self.freq_factors)
            parts.append(f"factors[{f.min():.3g}..{f.max():.3g}]")
        if self.attn_factor != 1.0:
            parts.append(f"attn={self.attn_factor:.4f}")
        if self.dynamic:
            parts.append("dynamic")
        return " ".join(parts)


# ------------------------------------------------------------------ helpers


def _scale(hyper: ModelHyper, n_ctx: int, scale: Optional[float], orig_ctx: Optional[int] = None) -> float:
    """The extension factor s: given, else n_ctx / trained context (never below 1)."""
    if scale is not None:
        scale = float(scale)
        if not scale >= 1.0 or not math.isfinite(scale):
            raise ValueError(f"scale must be a finite number >= 1, got {scale}")
        return scale
    orig = orig_ctx or hyper.n_ctx_train
    return max(1.0, float(n_ctx) / float(orig))


def _finite(name: str, value, positive: bool = False) -> float:
    """value as a float; ValueError naming it when it is not finite (or not > 0 if positive)."""
    x = float(value)
    if not math.isfinite(x) or (positive and x <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value}")
    return x


def _check_n_ctx(n_ctx):
    if n_ctx is None or int(n_ctx) < 1:
        raise ValueError(f"n_ctx must be an integer >= 1, got {n_ctx!r}")
    return int(n_ctx)


def _pair_index(hyper: ModelHyper) -> np.ndarray:
    return np.arange(hyper.n_rot // 2, dtype=np.float64)


def _as_factors(values, hyper: ModelHyper, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (hyper.n_rot // 2,):
        raise ValueError(f"{what} must have n_rot/2 = {hyper.n_rot // 2} values, got {arr.size}")
    if not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"{what} must be finite and > 0")
    return arr


def _unexpected(name, options):
    if options:
        raise TypeError(f"scheme {name!r} got unexpected option(s) {sorted(options)}")


# ------------------------------------------------------------------ the schemes


def none(hyper, n_ctx, **options) -> Scheme:
    """Plain RoPE with the model's own frequencies: reads badly past the trained context."""
    _unexpected("none", options)
    return Scheme("none")


def linear(hyper, n_ctx, *, scale=None, **options) -> Scheme:
    """Position interpolation (Chen et al. 2023, arXiv:2306.15595): theta_m / s, i.e. positions
    divided by s. s defaults to n_ctx / n_ctx_train. Same as llama.cpp --rope-scaling linear
    --rope-scale s."""
    _unexpected("linear", options)
    s = _scale(hyper, n_ctx, scale)
    return Scheme("linear", freq_factors=hyper.model_factors() / s)


def ntk_base(hyper: ModelHyper, s: float) -> float:
    """NTK-aware base (bloc97, 2023): b * s^(d_r / (d_r - 2)), so the slowest band is
    interpolated by s and the fastest is untouched."""
    return hyper.rope_base * s ** (hyper.n_rot / (hyper.n_rot - 2.0))


def ntk(hyper, n_ctx, *, scale=None, **options) -> Scheme:
    """NTK-aware scaled RoPE: base b * s^(d_r/(d_r-2)), s defaults to n_ctx / n_ctx_train.
    Same as llama.cpp with --rope-freq-base set to that value."""
    _unexpected("ntk", options)
    s = _scale(hyper, n_ctx, scale)
    return Scheme("ntk", rope_base=ntk_base(hyper, s))


def dynamic_ntk(hyper, n_ctx, **options) -> Scheme:
    """Dynamic NTK (emozilla, 2023): the NTK base with s = max(1, length / n_ctx_train) from the
    CURRENT sequence length, recomputed as the context grows. Exact here because the cache holds
    raw keys: every key is rotated with the current base (transformers' cached keys keep the
    base they were written with). The owner of the context must call `scheme.resolve(length)`
    (Model does it before every eval, with length = tokens in the cache after that eval)."""
    _unexpected("dynamic-ntk", options)

    def at(length: int) -> Scheme:
        s = max(1.0, float(length) / hyper.n_ctx_train)
        return Scheme("dynamic-ntk", rope_base=ntk_base(hyper, s))

    first = at(1)
    return dataclasses.replace(first, resolver=at)


def yarn_corr_dims(n_rot: int, orig_ctx: int, base: float, beta_fast: float, beta_slow: float):
    """llama.cpp's ggml_rope_yarn_corr_dims: the pair-index range [low, high] over which the
    ramp goes from extrapolation (fast bands) to interpolation (slow bands).

    corr_dim(beta) = n_rot * ln(orig_ctx / (beta * 2 pi)) / (2 ln base), the pair index whose
    wavelength fits `beta` times into the original context; low = max(0, floor(corr_dim(beta_fast))),
    high = min(n_rot - 1, ceil(corr_dim(beta_slow)))."""

    def corr_dim(n_turns):
        return n_rot * math.log(orig_ctx / (n_turns * 2.0 * math.pi)) / (2.0 * math.log(base))

    low = max(0.0, math.floor(corr_dim(beta_fast)))
    high = min(float(n_rot - 1), math.ceil(corr_dim(beta_slow)))
    return low, high


def yarn_factors(n_rot: int, s: float, low: float, high: float, ext_factor: float = 1.0) -> np.ndarray:
    """Per-pair multipliers of theta of llama.cpp's rope_yarn: theta = theta_interp * (1 - mix)
    + theta_extrap * mix with theta_interp = theta_extrap / s and mix = ramp(m) * ext_factor,
    ramp(m) = 1 - clamp((m - low) / max(0.001, high - low), 0, 1). Hence factor = (1 - mix)/s + mix."""
    m = np.arange(n_rot // 2, dtype=np.float64)
    ramp = 1.0 - np.clip((m - low) / max(0.001, high - low), 0.0, 1.0)
    mix = ramp * ext_factor
    return (1.0 - mix) / s + mix


def yarn_mscale(s: float, ext_factor: float = 1.0, log_mul: float = 0.0, rope_attn_factor: float = 1.0) -> float:
    """The factor llama.cpp's rope multiplies each of q and k by under YaRN.

    llama-context.cpp sets yarn_attn_factor = get_mscale(s, 1) [or get_mscale(s, m) /
    get_mscale(s, log_mul) with a GGUF yarn_log_multiplier], cancels ggml's own 1 + 0.1 ln s
    (PR 17945), and multiplies by the GGUF rope.scaling.attn_factor; ggml's rope_yarn then
    multiplies by 1 + 0.1 ln s again when ext_factor != 0. get_mscale(s, m) = 1 + 0.1 m ln s
    (1 when s <= 1). The score therefore scales by mscale^2 = (0.1 ln s + 1)^2 in the plain
    case: YaRN's sqrt(1/t) = 0.1 ln s + 1 applied to both q and k.
    """

    def get_mscale(scale, mul):
        return 1.0 if scale <= 1.0 else 0.1 * mul * math.log(scale) + 1.0

    if ext_factor == 0.0:
        return rope_attn_factor
    if log_mul:
        af = get_mscale(s, 1.0) / get_mscale(s, log_mul)  # llama.cpp assumes mscale == 1 (non-deepseek2)
    else:
        af = get_mscale(s, 1.0)
    af *= 1.0 / (1.0 + 0.1 * math.log(s)) if s > 0 else 1.0
    af *= rope_attn_factor
    return af * (1.0 + 0.1 * math.log(s))


def yarn(hyper, n_ctx, *, scale=None, beta_fast=None, beta_slow=None, ext_factor=None, attn_factor=None,
         orig_ctx=None, **options) -> Scheme:
    """YaRN (Peng et al. 2023, arXiv:2309.00071): NTK-by-parts interpolation plus attention
    temperature, with llama.cpp's exact conventions.

    Per pair m: fast bands (wavelength fitting beta_fast=32 times into the original context)
    keep theta, slow bands (fitting fewer than beta_slow=1 times) get theta/s, linear ramp in
    between (`yarn_corr_dims`, `yarn_factors`). The score is multiplied by mscale^2 with
    mscale = 1 + 0.1 ln s (`yarn_mscale`). Options left out come from the GGUF's
    rope.scaling.* keys when present, else llama.cpp's defaults; s defaults to the GGUF's
    scaling factor, else n_ctx / original context. `attn_factor` (llama.cpp --yarn-attn-factor
    / GGUF rope.scaling.attn_factor) multiplies llama.cpp's mscale.
    """
    _unexpected("yarn", options)
    g = hyper.rope_scaling
    orig = int(orig_ctx or g.get("orig_ctx") or hyper.n_ctx_train)
    if scale is None and g.get("factor") and float(g["factor"]) > 1:
        scale = float(g["factor"])
    s = _scale(hyper, n_ctx, scale, orig)
    beta_fast = _finite("beta_fast", beta_fast if beta_fast is not None else g.get("beta_fast", 32.0), positive=True)
    beta_slow = _finite("beta_slow", beta_slow if beta_slow is not None else g.get("beta_slow", 1.0), positive=True)
    ext = _finite("ext_factor", ext_factor if ext_factor is not None else g.get("ext_factor", 1.0))
    if ext < 0:
        ext = 1.0  # llama.cpp: negative means "not set", 1 under YaRN
    rope_af = _finite("attn_factor", attn_factor if attn_factor is not None else g.get("attn_factor", 1.0),
                      positive=True)
    if orig < 1:
        raise ValueError(f"orig_ctx must be >= 1, got {orig}")
    low, high = yarn_corr_dims(hyper.n_rot, orig, hyper.rope_base, beta_fast, beta_slow)
    factors = hyper.model_factors() * yarn_factors(hyper.n_rot, s, low, high, ext)
    mscale = yarn_mscale(s, ext, float(g.get("log_mul", 0.0) or 0.0), rope_af)
    return Scheme("yarn", freq_factors=factors, attn_factor=mscale * mscale)


def longrope(hyper, n_ctx, *, factors=None, short_factors=None, attn_factor=None, orig_ctx=None,
             **options) -> Scheme:
    """LongRoPE (Ding et al. 2024, arXiv:2402.13753): searched per-dimension rescale factors.

    `factors` are DIVISORS of theta (LongRoPE's / transformers' long_factor convention, and the
    GGUF's). Without them they come from the GGUF: rope_factors_long when n_ctx exceeds the
    original context, else rope_factors_short (Phi-3 style, chosen once by n_ctx as llama.cpp does);
    else the rope_freqs tensor. The score is multiplied by a^2 (the factor multiplies q and k, as in
    llama.cpp and transformers) with a = the given attn_factor, the GGUF rope.scaling.attn_factor, or
    LongRoPE's sqrt(1 + ln s / ln L_orig), s = n_ctx / L_orig.

    `short_factors` (divisors too, with `factors`): the milder set of LongRoPE for sequences up to
    the original context. The scheme is then dynamic: it is the short set while the sequence has at
    most L_orig tokens and the long set past that (as transformers switches by the current length;
    exact here because the cache holds raw keys). The short set's attention factor is 1 (s = 1), so
    with short factors of ones the trained context is plain RoPE.
    """
    _unexpected("longrope", options)
    g = hyper.rope_scaling
    orig = int(orig_ctx or g.get("orig_ctx") or hyper.n_ctx_train)
    short_div = None
    if factors is not None:
        divisors = _as_factors(factors, hyper, "factors")
        if short_factors is not None:
            short_div = _as_factors(short_factors, hyper, "short_factors")
    else:
        if short_factors is not None:
            raise ValueError("short_factors go with factors (the long set)")
        long_ctx = n_ctx > orig
        chosen = hyper.rope_factors_long if long_ctx else hyper.rope_factors_short
        if chosen is None:
            chosen = hyper.rope_freqs
        if chosen is None:
            raise ValueError(
                "longrope needs per-dimension factors: this model's GGUF has no rope_freqs / "
                "rope_factors_long tensor; pass factors=[...] (n_rot/2 divisors of theta)"
            )
        divisors = _as_factors(chosen, hyper, "GGUF rope factors")
    # The LongRoPE factors replace the model's rope_freqs (in a GGUF they ARE its rope_freqs).
    short = None if short_div is None else Scheme("longrope", freq_factors=1.0 / short_div)
    if short is not None and n_ctx <= orig:
        return short  # the sequence never grows past the original context
    if attn_factor is None:
        attn_factor = g.get("attn_factor")
    if attn_factor is None:
        s = max(1.0, n_ctx / orig)
        attn_factor = math.sqrt(1.0 + math.log(s) / math.log(orig)) if s > 1 else 1.0
    a = float(attn_factor)
    long = Scheme("longrope", freq_factors=1.0 / divisors, attn_factor=a * a)
    if short is None:
        return long

    def at(length: int) -> Scheme:
        return short if length <= orig else long

    return dataclasses.replace(long, resolver=at)


def power(hyper, n_ctx, *, power=0.5, scale=None, **options) -> Scheme:
    """Giraffe power scaling (Pal et al. 2023, "Giraffe: Adventures in Expanding Context Lengths
    in LLMs", arXiv:2308.10882, Sec. 3.2; abacusai/Long-Context python/models/interpolate.py):
    theta_m * (1 - 2m/d_r)^k. High frequencies (m near 0) stay, low ones are stretched most.
    k = `power` (0.5, the setting their README reports); an optional linear `scale` s divides
    theta first, as their code does (default 1: none)."""
    _unexpected("power", options)
    k = float(power)
    if not k >= 0 or not math.isfinite(k):
        raise ValueError(f"power must be a finite number >= 0, got {power}")
    s = 1.0 if scale is None else _scale(hyper, n_ctx, scale)
    m = _pair_index(hyper)
    f = (1.0 - 2.0 * m / hyper.n_rot) ** k / s
    return Scheme("power", freq_factors=hyper.model_factors() * f)


def truncate(hyper, n_ctx, *, wavelength=None, low_div=16.0, cut_div=8.0, **options) -> Scheme:
    """Giraffe truncated basis (Pal et al. 2023, arXiv:2308.10882, Sec. 3.3; their
    interpolate.py truncate_frequency): with b = 2 pi / T (T = `wavelength`, default the trained
    context, so kept bands complete a full turn within it) and a = b / `cut_div` (8):

        theta'_m = theta_m      if theta_m >= b
                 = rho          if a <= theta_m < b,   rho = b / `low_div` (16)
                 = 0            if theta_m < a         (no rotation: position-independent)

    0 is represented by ZERO_THETA (the operator needs factors > 0; see its comment)."""
    _unexpected("truncate", options)
    T = float(wavelength if wavelength is not None else hyper.n_ctx_train)
    if not T > 0:
        raise ValueError(f"wavelength must be > 0, got {wavelength}")
    b = 2.0 * math.pi / T
    a, rho = b / float(cut_div), b / float(low_div)
    theta = Scheme("tmp").thetas(hyper)  # the model's thetas, rope_freqs included
    new = np.where(theta >= b, theta, np.where(theta >= a, rho, ZERO_THETA))
    base_theta = hyper.rope_base ** (-2.0 * _pair_index(hyper) / hyper.n_rot)
    return Scheme("truncate", freq_factors=new / base_theta)


def _fit_len(hyper, fit_len, window: int) -> int:
    """The length the far distances of a fitted slope or group are kept inside: the trained context,
    or a shorter one (a model may use less of its trained context than it was trained on)."""
    if fit_len is None:
        return hyper.n_ctx_train
    if isinstance(fit_len, bool) or not isinstance(fit_len, (int, np.integer)):
        raise ValueError(f"fit_len must be an integer, got {fit_len!r}")
    if not window + 2 <= fit_len <= hyper.n_ctx_train:
        raise ValueError(f"fit_len must be in [window + 2, n_ctx_train] = [{window + 2}, {hyper.n_ctx_train}], "
                         f"got {fit_len}")
    return int(fit_len)


def self_extend_group(hyper: ModelHyper, n_ctx: int, window: int, fit_len: Optional[int] = None) -> int:
    """Smallest group size G >= 2 whose largest relative position, fl((n-1)/G) + w - fl(w/G),
    stays below fit_len (default: the trained context)."""
    limit = _fit_len(hyper, fit_len, window)
    for g in range(2, max(3, n_ctx + 1)):
        if (n_ctx - 1) // g + window - window // g <= limit - 1:
            return g
    raise ValueError(f"no group size keeps self-extend with window {window} inside {limit} positions")


def self_extend(hyper, n_ctx, *, group=None, window=None, fit_len=None, **options) -> Scheme:
    """Self-Extend (Jin et al. 2024, "LLM Maybe LongLM", arXiv:2401.01325), llama.cpp's group
    attention (--grp-attn-n G, --grp-attn-w W): neighbour window W keeps exact distances; beyond
    it rel = fl(i/G) - fl(j/G) + W - fl(W/G). Defaults: W = n_ctx_train / 4, G = the smallest
    that keeps every relative position below fit_len (default: the trained context)."""
    _unexpected("self-extend", options)
    n_ctx = _check_n_ctx(n_ctx)
    w = int(window) if window is not None else max(1, hyper.n_ctx_train // 4)
    if w < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if group is not None and fit_len is not None:
        raise ValueError("fit_len fits group; give one of them, not both")
    g = int(group) if group is not None else self_extend_group(hyper, n_ctx, w, fit_len)
    if g < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    return Scheme("self-extend", window=w, far_mode=FAR_GROUP, group_size=g)


def _logn(hyper, logn):
    return hyper.n_ctx_train if logn else 0


def _logn_len(hyper, logn, logn_len):
    """L of log-n: off, the trained context, or another length (a milder or stronger log-n)."""
    if logn_len is None:
        return _logn(hyper, logn)
    n = int(logn_len)
    if n < 2:
        raise ValueError(f"logn_len must be >= 2, got {logn_len}")
    if not logn:
        raise ValueError("logn_len needs log-n on")
    return n


def _temperature(hyper, n_ctx, temperature) -> float:
    """Score multiplier: None = 1; "yarn" = YaRN's (0.1 ln s + 1)^2 with s = n_ctx / n_ctx_train
    (its sqrt(1/t) on q and k); a number > 0 = that multiplier."""
    if temperature is None:
        return 1.0
    if isinstance(temperature, str):
        if temperature != "yarn":
            raise ValueError(f"temperature must be 'yarn' or a number > 0, got {temperature!r}")
        s = max(1.0, n_ctx / hyper.n_ctx_train)
        return (0.1 * math.log(s) + 1.0) ** 2
    return _finite("temperature", temperature, positive=True)


def _dropping(sliding_window, sink_tokens, default_sinks=0) -> dict:
    """The sliding-window fields: keys at distance >= sliding_window dropped (None or 0: none), the
    first sink_tokens positions kept."""
    sw = 0 if sliding_window is None else int(sliding_window)
    sinks = default_sinks if sink_tokens is None else int(sink_tokens)
    if sw < 0:
        raise ValueError(f"sliding_window must be >= 0 (0 = off), got {sliding_window}")
    if sinks < 0:
        raise ValueError(f"sink_tokens must be >= 0, got {sink_tokens}")
    if sinks and not sw:
        raise ValueError("sink_tokens needs a sliding_window (without one no key is dropped)")
    return dict(sliding_window=sw, sink_tokens=sinks)


def rerope(hyper, n_ctx, *, window=None, logn=True, logn_len=None, temperature=None, sliding_window=None,
           sink_tokens=None, **options) -> Scheme:
    """ReRoPE (J. Su 2023): exact distances inside the window w, every longer distance clamped
    to w; optional log-n query scaling max(1, ln(i+1)/ln L), L = logn_len (default n_ctx_train).
    Default w = n_ctx_train / 2. `temperature` multiplies the scores ("yarn": YaRN's attention
    temperature for s = n_ctx / n_ctx_train); `sliding_window` / `sink_tokens` drop far keys
    except the first ones (LM-Infinite's Lambda shape)."""
    _unexpected("rerope", options)
    w = int(window) if window is not None else max(1, hyper.n_ctx_train // 2)
    if w < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return Scheme("rerope", window=w, far_mode=FAR_CLAMP, logn_train_len=_logn_len(hyper, logn, logn_len),
                  attn_factor=_temperature(hyper, n_ctx, temperature), **_dropping(sliding_window, sink_tokens))


def leaky_k_default(hyper: ModelHyper, n_ctx: int, window: int, fit_len: Optional[int] = None) -> float:
    """k that maps the longest distance n_ctx - 1 onto position fit_len - 1 (default: the trained
    context's last): w + (n - 1 - w) / k = fit_len - 1 (never below 1)."""
    room = _fit_len(hyper, fit_len, window) - 1 - window
    if room <= 0:
        raise ValueError(f"window {window} leaves no room below the trained context {hyper.n_ctx_train}")
    return max(1.0, (n_ctx - 1 - window) / room)


def leaky_rerope(hyper, n_ctx, *, window=None, leaky_k=None, fit_len=None, logn=True, logn_len=None,
                 temperature=None, sliding_window=None, sink_tokens=None, **options) -> Scheme:
    """Leaky ReRoPE (J. Su 2023): beyond the window distances grow with slope 1/k,
    rel = w + (i - j - w)/k; optional log-n. Defaults: w = n_ctx_train / 4, k = the slope that
    maps the longest distance of n_ctx onto position fit_len - 1 (default: the end of the trained
    context; `leaky_k_default`). logn_len, temperature, sliding_window, sink_tokens: as for `rerope`."""
    _unexpected("leaky-rerope", options)
    n_ctx = _check_n_ctx(n_ctx)
    w = int(window) if window is not None else max(1, hyper.n_ctx_train // 4)
    if leaky_k is not None and fit_len is not None:
        raise ValueError("fit_len fits leaky_k; give one of them, not both")
    k = float(leaky_k) if leaky_k is not None else leaky_k_default(hyper, n_ctx, w, fit_len)
    if not k >= 1 or not math.isfinite(k):
        raise ValueError(f"leaky_k must be a finite number >= 1, got {leaky_k}")
    return Scheme("leaky-rerope", window=w, far_mode=FAR_LEAKY, leaky_k=k,
                  logn_train_len=_logn_len(hyper, logn, logn_len), attn_factor=_temperature(hyper, n_ctx, temperature),
                  **_dropping(sliding_window, sink_tokens))


def dual_chunk(hyper, n_ctx, *, chunk_size=None, local_window=None, logn=True, logn_len=None, temperature=None,
               sliding_window=None, sink_tokens=None, **options) -> Scheme:
    """Dual Chunk Attention (An et al. 2024, "Training-Free Long-Context Scaling of Large Language
    Models", arXiv:2402.17463; ChunkLlama). Keys sit at j mod s in chunks of s tokens; a query
    sees its own chunk at i mod s (intra-chunk: exact distances), the chunk before at
    min(s + i mod s, C) (successive: exact distances up to C) and every earlier chunk at C
    (inter-chunk), so no relative position exceeds C. C = chunk_size (default 3/4 n_ctx_train),
    s = C - local_window (default n_ctx_train / 16): ChunkLlama's defaults. In the operator:
    window C, far mode CHUNK with chunk_len s. Log-n on by default, as for ReRoPE; temperature,
    sliding_window, sink_tokens as for `rerope`."""
    _unexpected("dual-chunk", options)
    L = hyper.n_ctx_train
    c = int(chunk_size) if chunk_size is not None else max(3, 3 * L // 4)
    if c < 3:  # the smallest chunk with a local window: s = c - lw must exceed c / 2
        raise ValueError(f"chunk_size must be >= 3, got {chunk_size}")
    lw = int(local_window) if local_window is not None else min(max(1, L // 16), (c - 1) // 2)
    if not 1 <= lw or not 2 * (c - lw) > c:
        raise ValueError(f"local_window must satisfy 1 <= local_window < chunk_size / 2 (chunk_size {c}), got {lw}")
    return Scheme("dual-chunk", window=c, far_mode=FAR_CHUNK, chunk_len=c - lw,
                  logn_train_len=_logn_len(hyper, logn, logn_len), attn_factor=_temperature(hyper, n_ctx, temperature),
                  **_dropping(sliding_window, sink_tokens))


def lm_infinite(hyper, n_ctx, *, window=None, sink_tokens=None, logn=False, **options) -> Scheme:
    """LM-Infinite (Han et al. 2024, arXiv:2308.16137): Lambda-shaped attention. A query sees the
    last `window` tokens (default n_ctx_train) at their exact distances and the first `sink_tokens`
    (default 10) at the distance ceiling `window`; every other key is dropped. In the operator:
    ReRoPE's clamp with w = window plus a sliding window of the same size with sinks. Log-n off by
    default (LM-Infinite has none)."""
    _unexpected("lm-infinite", options)
    w = int(window) if window is not None else hyper.n_ctx_train
    if w < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return Scheme("lm-infinite", window=w, far_mode=FAR_CLAMP, logn_train_len=_logn(hyper, logn),
                  **_dropping(w, sink_tokens, default_sinks=10))


def ntk_mixed(hyper, n_ctx, *, scale=None, exponent=0.75, logn=True, **options) -> Scheme:
    """NTK-RoPE-mixed (J. Su 2023, "Taking beta-base encoding to the limit", kexue.fm/archives/9706):
    a different base per pair, theta_m * exp(-a (m+1)^b) with a = ln(s) / (d_r/2)^b, so the fastest
    pair keeps its frequency and the slowest is divided by s (b = `exponent`, 0.75 as in his code);
    s defaults to n_ctx / n_ctx_train. With log-n (on by default: his NTK-RoPE-logn-mixed)."""
    _unexpected("ntk-mixed", options)
    s = _scale(hyper, n_ctx, scale)
    b = _finite("exponent", exponent, positive=True)
    half = hyper.n_rot // 2
    a = math.log(s) / half**b
    f = np.exp(-a * (_pair_index(hyper) + 1.0) ** b)
    return Scheme("ntk-mixed", freq_factors=hyper.model_factors() * f, logn_train_len=_logn(hyper, logn))


# Schemes whose log-n query scaling the `logn` switch (Model(logn=), --no-logn) turns off.
LOGN_SCHEMES = ("rerope", "leaky-rerope", "dual-chunk", "ntk-mixed")

SCHEMES: dict = {
    "none": none,
    "linear": linear,
    "ntk": ntk,
    "dynamic-ntk": dynamic_ntk,
    "yarn": yarn,
    "longrope": longrope,
    "power": power,
    "truncate": truncate,
    "self-extend": self_extend,
    "rerope": rerope,
    "leaky-rerope": leaky_rerope,
    "dual-chunk": dual_chunk,
    "lm-infinite": lm_infinite,
    "ntk-mixed": ntk_mixed,
}


def make_scheme(name, info, n_ctx, **options) -> Scheme:
    """The Scheme `name` for the model `info` (see hyper_from) at context n_ctx.

    Options are the scheme function's keywords; None values are dropped (= default), so CLI
    flags can be passed through unchanged."""
    if isinstance(name, Scheme):
        return name
    key = str(name).lower().replace("_", "-")
    key = {"rope": "none", "pi": "linear", "ntk-aware": "ntk", "dynamic": "dynamic-ntk", "leaky": "leaky-rerope",
           "selfextend": "self-extend", "group": "self-extend", "dca": "dual-chunk", "chunk": "dual-chunk",
           "chunkllama": "dual-chunk", "lminfinite": "lm-infinite"}.get(key, key)
    if key not in SCHEMES:
        raise ValueError(f"unknown position scheme {name!r}; valid: {', '.join(SCHEMES)}")
    n_ctx = _check_n_ctx(n_ctx)
    options = {k: v for k, v in options.items() if v is not None}
    return SCHEMES[key](hyper_from(info), n_ctx, **options)
