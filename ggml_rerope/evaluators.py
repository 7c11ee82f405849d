"""One small interface over the engines the quality tools measure: our runtime (`Model`) and
llama.cpp through llama-cpp-python (the peer, `llama_cpp_engine.LlamaCppEngine`). Both tokenize
with the same llama.cpp vocabulary, so they score exactly the same token ids.

    ev = open_evaluator(path, n_ctx=8192, scheme="rerope")            # ours
    ev = open_evaluator(path, n_ctx=8192, scheme="yarn", engine="llama.cpp")
    ev.reset(); rows = ev.eval(tokens, logits_all=True)               # (len(tokens), n_vocab)
    last = ev.prefill(prompt)                                         # keeps the cached prefix

`eval` appends to the context; the caller keeps each call to a micro-batch, so the logits it
holds are O(n_batch * n_vocab) whatever the context length.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional

import numpy as np

from . import schemes as _schemes
from .llama_cpp_engine import LlamaCppEngine
from .measure_flags import ENGINES

# Schemes llama.cpp itself can run (its --rope-scaling none/linear/yarn, and NTK via --rope-freq-base).
LLAMA_CPP_SCHEMES = ("none", "linear", "yarn", "ntk")
# What llama_cpp.Llama passes for the YaRN settings it is not given, so that the peer computes what
# it computed when it ran through Llama (the quality report's recorded numbers).
_LLAMA_PY_YARN_DEFAULTS = dict(yarn_ext_factor=-1.0, yarn_attn_factor=1.0, yarn_beta_fast=32.0, yarn_beta_slow=1.0)


class RuntimeEvaluator:
    """Our runtime: a `Model` with a position scheme from schemes.py."""

    engine = "ggml-rerope"

    def __init__(self, model_path, n_ctx: int, scheme="rerope", *, n_threads=None, n_batch=512, n_gpu_layers=0,
                 type_k="f16", type_v="f16", placement: Optional[dict] = None, **options):
        from .model import Model

        self.model = Model(model_path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, n_gpu_layers=n_gpu_layers,
                           type_k=type_k, type_v=type_v, **(placement or {}))
        try:
            self.scheme = self._set_scheme(scheme, n_ctx, options)
        except BaseException:
            self.model.close()
            raise
        self.n_ctx, self.n_vocab, self.n_batch = self.model.n_ctx, self.model.n_vocab, n_batch
        tok = self.model.tokenizer
        self.bos_id = tok.bos_id
        self.add_bos = bool(tok.tokenize("", add_bos=True))  # the vocabulary asks for a BOS

    def _set_scheme(self, scheme, n_ctx, options):
        # Model.set_rope_scaling builds the scheme with schemes.make_scheme (rope_options are its keywords).
        if isinstance(scheme, str):
            self.model.set_rope_scaling(scheme, rope_options=dict(options))
        else:
            self.model.set_rope_scaling(scheme)
        return self.model.scheme

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.model.tokenize(text, add_bos=add_bos)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.model.detokenize(tokens)

    def is_eog(self, token: int) -> bool:
        return self.model.tokenizer.is_eog(token)

    @property
    def n_past(self) -> int:
        return self.model.n_past

    def reset(self) -> None:
        self.model.reset()

    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> np.ndarray:
        """Appends tokens; returns (n, n_vocab) logits with logits_all, else the last row."""
        return self.model.eval(tokens, logits_all=logits_all)

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        return self.model.prefill(tokens)

    def describe(self) -> str:
        s = self.scheme
        return s.describe() if hasattr(s, "describe") else str(s)

    def close(self) -> None:
        self.model.close()


def llama_cpp_params(scheme: str, hyper, n_ctx: int, *, scale=None, beta_fast=None, beta_slow=None,
                     ext_factor=None, attn_factor=None, orig_ctx=None) -> dict:
    """llama_cpp.Llama keyword arguments that make llama.cpp run `scheme` as llama.cpp does it."""
    import llama_cpp

    if scheme not in LLAMA_CPP_SCHEMES:
        raise ValueError(f"llama.cpp runs the schemes {', '.join(LLAMA_CPP_SCHEMES)}; got {scheme!r}")
    orig = int(orig_ctx or hyper.n_ctx_train)
    s = max(1.0, n_ctx / orig) if scale is None else float(scale)
    if scheme == "none":
        return dict(rope_scaling_type=llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE)
    if scheme == "ntk":  # NTK-aware base through --rope-freq-base; no other scaling
        return dict(rope_scaling_type=llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE,
                    rope_freq_base=_schemes.ntk_base(hyper, s))
    if scheme == "linear":
        return dict(rope_scaling_type=llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR, rope_freq_scale=1.0 / s)
    out = dict(rope_scaling_type=llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN, rope_freq_scale=1.0 / s,
               yarn_orig_ctx=orig)
    for key, value in (("yarn_beta_fast", beta_fast), ("yarn_beta_slow", beta_slow),
                       ("yarn_ext_factor", ext_factor), ("yarn_attn_factor", attn_factor)):
        if value is not None:
            out[key] = float(value)
    return out


class LlamaCppEvaluator(LlamaCppEngine):
    """llama.cpp (flash attention on) running one of its own rope schemes as llama.cpp does it."""

    engine = "llama.cpp"

    def __init__(self, model_path, n_ctx: int, scheme="none", *, n_threads=None, n_batch=512, flash_attn=True,
                 n_gpu_layers=0, type_k="f16", type_v="f16", **options):
        from .kv_quant import TYPE_IDS  # the ids are ggml's GGML_TYPE_*, what llama.cpp takes

        hyper = _schemes.hyper_from(model_path)
        name = scheme if isinstance(scheme, str) else scheme.name
        self.params = llama_cpp_params(name, hyper, n_ctx, **options)
        self.scheme = name
        super().__init__(model_path, n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=n_threads,
                         n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, type_k=TYPE_IDS[type_k],
                         type_v=TYPE_IDS[type_v], rope=dict(_LLAMA_PY_YARN_DEFAULTS, **self.params))

    def describe(self) -> str:
        extra = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items()
                         if k != "rope_scaling_type")
        return f"llama.cpp {self.scheme}" + (f" ({extra})" if extra else "")


def open_evaluator(model_path=None, n_ctx: int = 4096, scheme="rerope", *, engine: str = "ggml-rerope",
                   n_threads: Optional[int] = None, n_batch: int = 512, n_gpu_layers: int = 0, type_k: str = "f16",
                   type_v: str = "f16", placement: Optional[dict] = None, **options):
    """An evaluator of `engine` ("ggml-rerope" or "llama.cpp") for the model (None: default);
    n_gpu_layers -1 runs it on the GPU (CUDA builds of both); placement: Model's split_mode /
    tensor_split / main_gpu (ours only: llama.cpp's engine spreads layers by its defaults)."""
    if model_path is None:
        from .default_model import default_model_path

        model_path = default_model_path()
    if engine == "ggml-rerope":
        return RuntimeEvaluator(model_path, n_ctx, scheme, n_threads=n_threads, n_batch=n_batch,
                                n_gpu_layers=n_gpu_layers, type_k=type_k, type_v=type_v, placement=placement,
                                **options)
    if engine == "llama.cpp":
        return LlamaCppEvaluator(model_path, n_ctx, scheme, n_threads=n_threads, n_batch=n_batch,
                                 n_gpu_layers=n_gpu_layers, type_k=type_k, type_v=type_v, **options)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")


def run_measurement(args, scheme: str, options: dict, measure):
    """The tools' common run: open the evaluator the CLI arguments name (model, ctx, engine,
    threads, batch), call measure(ev), close it, and label the result with the scheme and engine.
    Returns (exit code, result): Ctrl-C gives 130; a load error or bad input prints one
    'error:' line and gives 1."""
    from .cache_flags import cache_types
    from .errors import ReropeError
    from .placement_flags import placement_kwargs

    try:
        type_k, type_v = cache_types(args)
        ev = open_evaluator(args.model, n_ctx=args.ctx, scheme=scheme, engine=args.engine, n_threads=args.threads,
                            n_batch=args.batch, n_gpu_layers=args.n_gpu_layers, type_k=type_k, type_v=type_v,
                            placement=placement_kwargs(args), **options)
        try:
            res = measure(ev)
            res.scheme, res.engine = ev.describe(), ev.engine
        finally:
            ev.close()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130, None
    except (ReropeError, OSError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1, None
    return 0, res
