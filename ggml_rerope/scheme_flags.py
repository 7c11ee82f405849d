"""The position-scheme flags every command-line tool shares (chat, perplexity, passkey), defined
once: `add_scheme_arguments(parser)` adds them, `scheme_options_from_args(args)` turns the parsed
flags into (scheme name, options) for `schemes.make_scheme` or `Model(rope_scaling=, rope_options=)`.
"""

from __future__ import annotations

import argparse
import pathlib

from .longrope_factors import FORMAT_HINT, LongRopeFactors, read_factors_file
from .schemes import LOGN_SCHEMES, SCHEMES, Scheme, make_scheme

# flag destination -> (scheme option name, schemes that take it)
_FLAG_OPTIONS = {
    "rope_scale": ("scale", {"linear", "ntk", "yarn", "power", "ntk-mixed"}),
    "rerope_window": ("window", {"rerope", "leaky-rerope"}),
    "rerope_leaky_k": ("leaky_k", {"leaky-rerope"}),
    "fit_len": ("fit_len", {"leaky-rerope", "self-extend"}),
    "grp_attn_n": ("group", {"self-extend"}),
    "grp_attn_w": ("window", {"self-extend"}),
    "yarn_beta_fast": ("beta_fast", {"yarn"}),
    "yarn_beta_slow": ("beta_slow", {"yarn"}),
    "yarn_ext_factor": ("ext_factor", {"yarn"}),
    "yarn_attn_factor": ("attn_factor", {"yarn", "longrope"}),
    "yarn_orig_ctx": ("orig_ctx", {"yarn", "longrope"}),
    "giraffe_power": ("power", {"power"}),
    "truncate_wavelength": ("wavelength", {"truncate"}),
    "longrope_factors": ("factors", {"longrope"}),
    "chunk_size": ("chunk_size", {"dual-chunk"}),
    "local_window": ("local_window", {"dual-chunk"}),
    "sliding_window": ("sliding_window", {"rerope", "leaky-rerope", "dual-chunk"}),
    "sink_tokens": ("sink_tokens", {"rerope", "leaky-rerope", "dual-chunk", "lm-infinite"}),
    "lm_infinite_window": ("window", {"lm-infinite"}),
    "attn_temperature": ("temperature", {"rerope", "leaky-rerope", "dual-chunk"}),
    "logn_len": ("logn_len", {"rerope", "leaky-rerope", "dual-chunk"}),
    "ntk_mixed_exponent": ("exponent", {"ntk-mixed"}),
}


def add_scheme_arguments(parser, default: str = "rerope"):
    """Adds the position-scheme flags every CLI shares (one definition)."""
    g = parser.add_argument_group("position scheme")
    g.add_argument("--rope-scaling", default=default, metavar="NAME",
                   help=f"position scheme: {', '.join(SCHEMES)} (default: {default})")
    g.add_argument("--rope-scale", type=float,
                   help="extension factor s (linear, ntk, ntk-mixed, yarn; default n_ctx / trained context)")
    g.add_argument("--rerope-window", type=int, help="ReRoPE window w (default: trained context / 2; leaky: / 4)")
    g.add_argument("--rerope-leaky-k", type=float,
                   help="Leaky ReRoPE slope divisor k (default: fits n_ctx into the trained context)")
    g.add_argument("--fit-len", type=int,
                   help="leaky, self-extend: the fitted k or G keeps every distance below this length "
                        "(default: trained context)")
    g.add_argument("--no-logn", dest="logn", action="store_false", default=True,
                   help="ReRoPE without log-n query scaling")
    g.add_argument("--grp-attn-n", type=int, help="self-extend group size G (default: smallest that fits)")
    g.add_argument("--grp-attn-w", type=int, help="self-extend neighbour window W (default: trained context / 4)")
    g.add_argument("--yarn-beta-fast", type=float, help="YaRN beta_fast (default: GGUF, else 32)")
    g.add_argument("--yarn-beta-slow", type=float, help="YaRN beta_slow (default: GGUF, else 1)")
    g.add_argument("--yarn-ext-factor", type=float, help="YaRN extrapolation mix (default: GGUF, else 1)")
    g.add_argument("--yarn-attn-factor", type=float, help="YaRN / LongRoPE attention factor (multiplies q and k)")
    g.add_argument("--yarn-orig-ctx", type=int,
                   help="original context of YaRN / LongRoPE (default: GGUF, else trained)")
    g.add_argument("--giraffe-power", type=float, help="power k of Giraffe power scaling (default 0.5)")
    g.add_argument("--truncate-wavelength", type=float,
                   help="Giraffe truncation cut-off wavelength (default: trained context)")
    g.add_argument("--longrope-factors", type=_parse_factors, metavar="F1,F2,...|FILE",
                   help="LongRoPE per-pair divisors: a comma list (the long set), or a factors file "
                        f"{FORMAT_HINT} as python -m ggml_rerope.longrope_search writes it")
    g.add_argument("--chunk-size", type=int,
                   help="dual-chunk: largest relative position C (default: trained context * 3/4)")
    g.add_argument("--local-window", type=int,
                   help="dual-chunk: C minus the chunk length (default: trained context / 16)")
    g.add_argument("--sliding-window", type=int,
                   help="drop keys at this distance or more, except the sinks (default: keep every key)")
    g.add_argument("--sink-tokens", type=int, help="first tokens the sliding window keeps (lm-infinite: 10)")
    g.add_argument("--lm-infinite-window", type=int,
                   help="lm-infinite: local window and distance ceiling (default: trained context)")
    g.add_argument("--attn-temperature", type=_parse_temperature, metavar="yarn|T",
                   help="multiply attention scores by T, or by YaRN's (0.1 ln s + 1)^2 (rerope, leaky, dual-chunk)")
    g.add_argument("--logn-len", type=int, help="length L of log-n scaling ln(i+1)/ln L (default: trained context)")
    g.add_argument("--ntk-mixed-exponent", type=float, help="ntk-mixed: exponent b of exp(-a m^b) (default 0.75)")
    return g


def _parse_temperature(text: str):
    if text == "yarn":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'yarn' or a number, got {text!r}") from None


def _parse_factors(text: str):
    """A factors file (LongRopeFactors: long and short sets) or an inline comma list (the long set)."""
    p = pathlib.Path(text)
    try:
        if p.is_file():
            return read_factors_file(p)
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError as e:  # ArgumentTypeError: argparse shows this message, not "invalid _parse_factors value"
        raise argparse.ArgumentTypeError(f"not a factors file nor a list of numbers: {e}") from None


def scheme_options_from_args(args) -> tuple:
    """(scheme name, options dict) from parsed add_scheme_arguments flags; flags that the chosen
    scheme does not take are an error when given, so a typo does not silently do nothing."""
    name = str(args.rope_scaling).lower().replace("_", "-")
    if name not in SCHEMES:
        raise ValueError(f"unknown position scheme {args.rope_scaling!r}; valid: {', '.join(SCHEMES)}")
    options = {}
    for dest, (opt, takers) in _FLAG_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if name not in takers:
            flag = "--" + dest.replace("_", "-")
            raise ValueError(f"{flag} does not apply to --rope-scaling {name} "
                             f"(it applies to {', '.join(sorted(takers))})")
        if isinstance(value, LongRopeFactors):  # a factors file: its long and short sets
            options.update(value.scheme_options())
            continue
        options[opt] = value
    if name in LOGN_SCHEMES:
        options["logn"] = bool(getattr(args, "logn", True))
    elif getattr(args, "logn", True) is False:
        raise ValueError(f"--no-logn applies to {', '.join(LOGN_SCHEMES)}, not {name}")
    return name, options


def scheme_from_args(args, info, n_ctx) -> Scheme:
    """The Scheme the parsed flags ask for, for model `info` at context n_ctx."""
    name, options = scheme_options_from_args(args)
    return make_scheme(name, info, n_ctx, **options)
