"""The rows of the quality report: each a scheme with its options in one engine (this project's
runtime, or llama.cpp as the peer), and which rows compute the same thing at a context."""

from __future__ import annotations

import functools
import pathlib
from dataclasses import dataclass, field

import numpy as np

from ggml_rerope import schemes
from ggml_rerope.evaluators import llama_cpp_params
from ggml_rerope.longrope_factors import read_factors_file

# The factors python/gpu_run.sh longrope searched for the default model at 64k (calibrated on the
# text's last window; the report's windows come from its start).
SEARCHED_LONGROPE = pathlib.Path(__file__).resolve().parent.parent / "docs/quality/longrope/longrope_64k.json"


@dataclass(frozen=True)
class Row:
    label: str
    engine: str  # "ggml-rerope" or "llama.cpp"
    scheme: str
    options: dict = field(default_factory=dict)
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.label}"


def all_rows(n_ctx_train: int = 8192):
    """Every scheme with its defaults, the ReRoPE variants the defaults are chosen among, and the
    llama.cpp peers. Labels are what the tables show."""
    L = n_ctx_train
    ours = [
        Row("none (RoPE)", "ggml-rerope", "none"),
        Row("linear", "ggml-rerope", "linear"),
        Row("ntk", "ggml-rerope", "ntk"),
        Row("dynamic-ntk", "ggml-rerope", "dynamic-ntk"),
        Row("yarn", "ggml-rerope", "yarn"),
        Row("longrope", "ggml-rerope", "longrope",
            note="needs per-dimension factors: the default model's GGUF has no rope_freqs tensor"),
        *searched_longrope_rows(),
        Row("power (Giraffe k=0.5)", "ggml-rerope", "power"),
        Row("truncate (Giraffe)", "ggml-rerope", "truncate"),
        Row("self-extend", "ggml-rerope", "self-extend"),
        Row(f"self-extend w={L // 2}", "ggml-rerope", "self-extend", dict(window=L // 2)),
        Row(f"rerope w={L // 2} log-n", "ggml-rerope", "rerope", dict(window=L // 2, logn=True)),
        Row(f"rerope w={L // 2}", "ggml-rerope", "rerope", dict(window=L // 2, logn=False)),
        Row(f"rerope w={L // 4} log-n", "ggml-rerope", "rerope", dict(window=L // 4, logn=True)),
        Row(f"rerope w={L // 4}", "ggml-rerope", "rerope", dict(window=L // 4, logn=False)),
        Row(f"leaky w={L // 4} k=auto log-n", "ggml-rerope", "leaky-rerope", dict(window=L // 4, logn=True)),
        Row(f"leaky w={L // 4} k=auto", "ggml-rerope", "leaky-rerope", dict(window=L // 4, logn=False)),
        Row(f"leaky w={L // 2} k=auto", "ggml-rerope", "leaky-rerope", dict(window=L // 2, logn=False)),
        Row(f"leaky w={L // 4} fit {L // 2} log-n", "ggml-rerope", "leaky-rerope",
            dict(window=L // 4, fit_len=L // 2, logn=True)),
        Row(f"self-extend fit {L // 2}", "ggml-rerope", "self-extend", dict(fit_len=L // 2)),
        Row(f"leaky w={L // 4} k=16 log-n", "ggml-rerope", "leaky-rerope",
            dict(window=L // 4, leaky_k=16.0, logn=True)),
        Row(f"rerope w={L // 2} log-n T=yarn", "ggml-rerope", "rerope",
            dict(window=L // 2, logn=True, temperature="yarn")),
        Row("dual-chunk log-n", "ggml-rerope", "dual-chunk", dict(logn=True)),
        Row("dual-chunk", "ggml-rerope", "dual-chunk", dict(logn=False)),
        Row(f"dual-chunk C={L // 2} log-n", "ggml-rerope", "dual-chunk", dict(chunk_size=L // 2, logn=True)),
        Row("lm-infinite", "ggml-rerope", "lm-infinite"),
        Row("ntk-mixed log-n", "ggml-rerope", "ntk-mixed"),
    ]
    peers = [Row(f"llama.cpp {s}", "llama.cpp", s) for s in ("none", "linear", "yarn", "ntk")]
    return ours + peers


def searched_longrope_rows():
    """The row of the searched factors, once a search has written them."""
    return _factors_rows(SEARCHED_LONGROPE)


@functools.cache
def _factors_rows(path: pathlib.Path) -> tuple:
    """Read once per process: all_rows() is called in the report's planning loops."""
    if not path.exists():
        return ()
    return (Row("longrope searched 64k", "ggml-rerope", "longrope", read_factors_file(path).scheme_options()),)


QUICK_ROWS = ("none (RoPE)", "yarn", "ntk", "self-extend", "rerope w=4096 log-n", "rerope w=4096",
              "rerope w=2048 log-n", "leaky w=2048 k=auto log-n", "llama.cpp none", "llama.cpp yarn")


def select_rows(rows, spec):
    """--schemes: comma list of labels, scheme names (all rows of that scheme) or llama.cpp:NAME."""
    if not spec:
        return rows
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.startswith("llama.cpp:"):
            hit = [r for r in rows if r.engine == "llama.cpp" and r.scheme == item.split(":", 1)[1]]
        else:
            hit = [r for r in rows if r.label == item] or [
                r for r in rows if r.engine == "ggml-rerope" and r.scheme == item]
        if not hit:
            raise SystemExit(f"--schemes: no row matches {item!r}; rows: {', '.join(r.label for r in rows)}")
        out += [r for r in hit if r not in out]
    return out


def computation(row: Row, ctx: int, hyper):
    """What a row computes at context ctx, as a hashable key. Rows with equal keys run the same
    computation, so one measurement serves them all: every scaling scheme is plain RoPE at
    N <= the trained context (factor 1), a ReRoPE window >= N is no window, log-n scales
    nothing below the trained length, Leaky ReRoPE with k = 1 is RoPE, Dual Chunk with every
    distance <= w - s is RoPE, and a sliding window of N or more drops nothing."""
    if row.engine == "llama.cpp":
        p = llama_cpp_params(row.scheme, hyper, ctx)
        plain = p.get("rope_freq_scale", 1.0) == 1.0 and p.get("rope_freq_base", hyper.rope_base) == hyper.rope_base
        return ("llama.cpp", "none" if plain else row.scheme)
    try:
        scheme = schemes.make_scheme(row.scheme, hyper, ctx, **row.options)
    except ValueError:
        return ("ggml-rerope", row.key)  # cannot run here (longrope without factors): its own key
    s = scheme.resolve(ctx)
    window, far, k, group, chunk = s.window, s.far_mode, s.leaky_k, s.group_size, s.chunk_len
    all_near = window - chunk >= ctx - 1 if far == schemes.FAR_CHUNK else window >= ctx
    if all_near or (far == schemes.FAR_LEAKY and k == 1.0):
        window, far, k, group, chunk = None, None, None, None, None
    dropping = (s.sliding_window, s.sink_tokens) if 0 < s.sliding_window < ctx else None
    logn = s.logn_train_len if s.logn_train_len and ctx > s.logn_train_len else 0
    factors = tuple(np.round(s.factors(hyper), 9))
    key = ("ggml-rerope", window, far, k, group, chunk, dropping, logn, s.base(hyper), factors, s.attn_factor)
    if scheme.dynamic and key != computation(Row("", "ggml-rerope", "none"), ctx, hyper):
        return ("ggml-rerope", row.key)  # recomputed as the sequence grows: like no other row
    return key


def order_rows(rows):
    """Rows in the report's order (so the plain row is measured first and the others refer to it)."""
    index = {r.key: i for i, r in enumerate(all_rows())}
    return sorted(rows, key=lambda r: index.get(r.key, len(index)))
