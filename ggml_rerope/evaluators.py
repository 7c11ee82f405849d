"""One small interface over the engines the quality tools measure: our runtime (`Model`) and
llama.cpp through llama-cpp-python (the peer). Both tokenize with the same llama.cpp vocabulary,
so they score exactly the same token ids.

    ev = open_evaluator(path, n_ctx=8192, scheme="rerope")            # ours
    ev = open_evaluator(path, n_ctx=8192, scheme="yarn", engine="llama.cpp")
    ev.reset(); rows = ev.eval(tokens, logits_all=True)               # (len(tokens), n_vocab)
    last = ev.prefill(prompt)                                         # keeps the cached prefix

`eval` appends to the context; the caller keeps each call to a micro-batch, so the logits it
holds are O(n_batch * n_vocab) whatever the context length.
"""

from __future__ import annotations

import ctypes
import inspect
import os
import sys
from typing import List, Optional, Sequence

import numpy as np

from . import schemes as _schemes

ENGINES = ("ggml-rerope", "llama.cpp")
# Schemes llama.cpp itself can run (its --rope-scaling none/linear/yarn, and NTK via --rope-freq-base).
LLAMA_CPP_SCHEMES = ("none", "linear", "yarn", "ntk")


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class RuntimeEvaluator:
    """Our runtime: a `Model` with a position scheme from schemes.py."""

    engine = "ggml-rerope"

    def __init__(self, model_path, n_ctx: int, scheme="rerope", *, n_threads=None, n_batch=512, n_gpu_layers=0,
                 **options):
        from .model import Model

        self.model = Model(model_path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, n_gpu_layers=n_gpu_layers)
        try:
            self.scheme = self._set_scheme(scheme, n_ctx, options)
        except BaseException:
            self.model.close()
            raise
        self.n_ctx, self.n_vocab, self.n_batch = self.model.n_ctx, self.model.n_vocab, n_batch
        tok = self.model.tokenizer
        self.bos_id = tok.bos_id
        self.add_bos = bool(tok.tokenize("", add_bos=True))  # the vocabulary asks for a BOS
        self._eval_has_logits_all = "logits_all" in inspect.signature(self.model.eval).parameters

    def _set_scheme(self, scheme, n_ctx, options):
        # Model.set_rope_scaling builds the scheme with schemes.make_scheme (rope_options are its keywords).
        if isinstance(scheme, str):
            self.model.set_rope_scaling(scheme, rope_options=dict(options))
        else:
            self.model.set_rope_scaling(scheme)
        return self.model.scheme

    def tokenize(self, text: str, add_bos: bool = True) -> List[int]:
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
        if logits_all:
            if self._eval_has_logits_all:
                return self.model.eval(tokens, logits_all=True)
            # a Model whose eval returns only the last row: its (private) evaluation step
            arr = self.model._token_array(tokens)
            self.model._sync()
            out = np.empty((arr.size, self.n_vocab), dtype=np.float32)
            self.model._eval_raw(arr, out, all_logits=True)
            return out
        return self.model.eval(tokens)

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


class LlamaCppEvaluator:
    """llama.cpp (llama-cpp-python, flash attention on) with one of its own rope schemes."""

    engine = "llama.cpp"

    def __init__(self, model_path, n_ctx: int, scheme="none", *, n_threads=None, n_batch=512, flash_attn=True,
                 n_gpu_layers=0, **options):
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr

        self._lc = llama_cpp
        hyper = _schemes.hyper_from(model_path)
        name = scheme if isinstance(scheme, str) else scheme.name
        self.params = llama_cpp_params(name, hyper, n_ctx, **options)
        self.scheme = name
        n_threads = n_threads or default_threads()
        with suppress_stdout_stderr(disable=False):
            self.llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                       n_threads=n_threads, n_threads_batch=n_threads, flash_attn=flash_attn,
                                       n_gpu_layers=n_gpu_layers, logits_all=False, verbose=False, **self.params)
        self._ctx = self.llm._ctx.ctx
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self.n_ctx, self.n_vocab, self.n_batch = int(self.llm.n_ctx()), int(self.llm.n_vocab()), n_batch
        self.bos_id = int(self.llm.token_bos())
        self.add_bos = bool(self.tokenize("", add_bos=True))
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._tokens: List[int] = []

    def tokenize(self, text: str, add_bos: bool = True) -> List[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._lc.llama_vocab_is_eog(self.llm._model.vocab, int(token)))

    @property
    def n_past(self) -> int:
        return len(self._tokens)

    def reset(self) -> None:
        self._lc.llama_memory_clear(self._mem, True)
        self._tokens = []

    def _decode(self, tokens: Sequence[int], logits_all: bool) -> np.ndarray:
        n = len(tokens)
        if n > self.n_batch:
            raise ValueError(f"at most n_batch = {self.n_batch} tokens per call, got {n}")
        if len(self._tokens) + n > self.n_ctx:
            from .errors import ContextFullError

            raise ContextFullError(f"{n} tokens do not fit: {len(self._tokens)} of n_ctx = {self.n_ctx} used")
        b = self._batch
        b.n_tokens = n
        p0 = len(self._tokens)
        for i, t in enumerate(tokens):
            b.token[i] = int(t)
            b.pos[i] = p0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = bool(logits_all) or i == n - 1
        rc = self._lc.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")
        self._tokens.extend(int(t) for t in tokens)
        rows = n if logits_all else 1
        ptr = self._lc.llama_get_logits(self._ctx)
        arr = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(rows, self.n_vocab))
        return arr.copy() if logits_all else arr[0].copy()

    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> np.ndarray:
        tokens = list(tokens)
        if not logits_all:
            out = None
            for start in range(0, len(tokens), self.n_batch):
                out = self._decode(tokens[start:start + self.n_batch], False)
            return out
        return np.concatenate([self._decode(tokens[s:s + self.n_batch], True)
                               for s in range(0, len(tokens), self.n_batch)])

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Context = tokens, keeping the longest prefix already cached; returns the last logits."""
        tokens = list(tokens)
        keep = 0
        for a, b in zip(self._tokens, tokens):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)
        if not self._lc.llama_memory_seq_rm(self._mem, 0, keep, -1):
            self.reset()
            keep = 0
        del self._tokens[keep:]
        return self.eval(tokens[keep:])

    def describe(self) -> str:
        extra = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items()
                         if k != "rope_scaling_type")
        return f"llama.cpp {self.scheme}" + (f" ({extra})" if extra else "")

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self._lc.llama_batch_free(self._batch)
            self._batch = None
        llm = getattr(self, "llm", None)
        if llm is not None:
            self.llm = None
            llm.close()


def open_evaluator(model_path=None, n_ctx: int = 4096, scheme="rerope", *, engine: str = "ggml-rerope",
                   n_threads: Optional[int] = None, n_batch: int = 512, n_gpu_layers: int = 0, **options):
    """An evaluator of `engine` ("ggml-rerope" or "llama.cpp") for the model (None: default);
    n_gpu_layers -1 runs it on the GPU (CUDA builds of both)."""
    if model_path is None:
        from .default_model import default_model_path

        model_path = default_model_path()
    if engine == "ggml-rerope":
        return RuntimeEvaluator(model_path, n_ctx, scheme, n_threads=n_threads, n_batch=n_batch,
                                n_gpu_layers=n_gpu_layers, **options)
    if engine == "llama.cpp":
        return LlamaCppEvaluator(model_path, n_ctx, scheme, n_threads=n_threads, n_batch=n_batch,
                                 n_gpu_layers=n_gpu_layers, **options)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")


def run_measurement(args, scheme: str, options: dict, measure):
    """The tools' common run: open the evaluator the CLI arguments name (model, ctx, engine,
    threads, batch), call measure(ev), close it, and label the result with the scheme and engine.
    Returns (exit code, result): Ctrl-C gives 130; a load error or bad input prints one
    'error:' line and gives 1."""
    from .errors import ReropeError

    try:
        ev = open_evaluator(args.model, n_ctx=args.ctx, scheme=scheme, engine=args.engine, n_threads=args.threads,
                            n_batch=args.batch, n_gpu_layers=args.n_gpu_layers, **options)
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
