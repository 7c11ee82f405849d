"""llama.cpp as the peer: one driver of llama-cpp-python's batch decode with logits, used by the
quality tools (evaluators.py), the model benchmark (bench/model.py) and the tests.

    with LlamaCppEngine(path, n_ctx=4096, n_threads=2) as lc:
        rows = lc.eval(lc.tokenize("Once upon a time"), logits_all=True)   # (n, n_vocab)
        last = lc.eval([lc.tokenize(" there", add_bos=False)[0]])         # appends; (n_vocab,)

It sits on llama-cpp-python's own owning wrappers (llama_cpp._internals: model, context, batch;
the context is freed before its model) and never builds a `llama_cpp.Llama`, whose Python-side
logits buffers would count against llama.cpp's memory in the benchmark. It does not load
libggml_rerope either, so a process measuring llama.cpp alone holds only llama.cpp.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Optional

import numpy as np

from .host import usable_cores

_ALL_LAYERS = 0x7FFFFFFF  # llama_cpp.Llama's n_gpu_layers for -1: every layer
# ggml type -> (bytes, elements) of one block: F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, BF16
_TYPE_BLOCK = {0: (4, 1), 1: (2, 1), 2: (18, 32), 3: (20, 32), 6: (22, 32), 7: (24, 32), 8: (34, 32), 20: (18, 32),
               30: (2, 1)}


def _type_bytes(ggml_type: int, n: int) -> int:
    size, per = _TYPE_BLOCK[ggml_type]
    return size * n // per


class LlamaCppEngine:
    """A llama.cpp model and context (one sequence) evaluating token ids.

    n_ctx, n_batch, n_ubatch (default n_batch), n_threads (default: every core, also for batches),
    n_gpu_layers (-1: all), flash_attn, kv_type (ggml type of K and V; None: llama.cpp's f16; type_k /
    type_v set one of them),
    offload (offload_kqv and op_offload; None: llama.cpp's defaults) and rope (llama_context_params
    fields such as rope_scaling_type, rope_freq_base, yarn_orig_ctx) are llama.cpp's own settings.
    """

    def __init__(self, model_path, n_ctx: int, *, n_batch: int = 512, n_ubatch: Optional[int] = None,
                 n_threads: Optional[int] = None, n_gpu_layers: int = 0, flash_attn: bool = True,
                 kv_type: Optional[int] = None, offload: Optional[bool] = None, rope: Optional[dict] = None,
                 verbose: bool = False, type_k: Optional[int] = None, type_v: Optional[int] = None):
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._utils import suppress_stdout_stderr

        self._lc = llama_cpp
        self._quiet = lambda: suppress_stdout_stderr(disable=verbose)  # llama.cpp's load and free logs
        self._model = self._ctx = self._batch = None
        n_threads = n_threads or usable_cores()
        n_batch = min(int(n_ctx), int(n_batch))  # what llama.cpp makes of a batch above the context
        with self._quiet():
            llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = _ALL_LAYERS if n_gpu_layers == -1 else int(n_gpu_layers)
        self._model = _internals.LlamaModel(path_model=str(model_path), params=mp, verbose=verbose)
        try:
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx = int(n_ctx)
            cp.n_batch = n_batch
            cp.n_ubatch = min(n_batch, int(n_ubatch or n_batch))
            cp.n_threads = cp.n_threads_batch = int(n_threads)
            cp.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
            cp.no_perf = True
            if kv_type is not None:
                cp.type_k = cp.type_v = int(kv_type)
            if type_k is not None:
                cp.type_k = int(type_k)
            if type_v is not None:
                cp.type_v = int(type_v)
            if offload is not None:
                cp.offload_kqv = cp.op_offload = bool(offload)
            for key, value in (rope or {}).items():
                if not hasattr(cp, key):
                    raise ValueError(f"llama.cpp has no context parameter {key!r}")
                setattr(cp, key, value)
            with self._quiet():
                self._ctx = _internals.LlamaContext(model=self._model, params=cp, verbose=verbose)
            self._batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=verbose)
        except BaseException:
            self.close()
            raise
        vocab = self._model.vocab
        self.kv_type, self.type_k, self.type_v = cp.type_k, cp.type_k, cp.type_v
        self.n_ctx = int(llama_cpp.llama_n_ctx(self._ctx.ctx))
        self.n_batch = n_batch
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self.bos_id = int(llama_cpp.llama_vocab_bos(vocab))
        self.add_bos = bool(self.tokenize("", add_bos=True))  # the vocabulary asks for a BOS
        self._tokens: list[int] = []

    # -- tokens -------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """llama.cpp's tokens of text (add_bos: the BOS where the vocabulary wants one)."""
        return self._model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._model.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._lc.llama_vocab_is_eog(self._model.vocab, int(token)))

    # -- evaluation ---------------------------------------------------------------------------

    @property
    def n_past(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> list[int]:
        return list(self._tokens)

    def reset(self) -> None:
        self._lc.llama_memory_clear(self._ctx.memory, True)
        self._tokens = []

    def _decode(self, tokens: Sequence[int], logits: str) -> Optional[np.ndarray]:
        """One llama_decode of at most n_batch tokens; logits "all" (n, n_vocab), "last" or "none"."""
        n = len(tokens)
        if n > self.n_batch:
            raise ValueError(f"at most n_batch = {self.n_batch} tokens per decode, got {n}")
        if len(self._tokens) + n > self.n_ctx:
            from .errors import ContextFullError

            raise ContextFullError(f"{n} tokens do not fit: {len(self._tokens)} of n_ctx = {self.n_ctx} used")
        b = self._batch.batch
        b.n_tokens = n
        p0 = len(self._tokens)
        for i, t in enumerate(tokens):
            b.token[i] = int(t)
            b.pos[i] = p0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = logits == "all" or (logits == "last" and i == n - 1)
        rc = self._lc.llama_decode(self._ctx.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")
        self._tokens.extend(int(t) for t in tokens)
        if logits == "none":
            return None
        if logits == "last":
            ptr = self._lc.llama_get_logits_ith(self._ctx.ctx, -1)
            shape = (self.n_vocab,)
        else:
            ptr = self._lc.llama_get_logits(self._ctx.ctx)
            shape = (n, self.n_vocab)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=shape).copy()

    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> np.ndarray:
        """Appends tokens, micro-batch by micro-batch; returns every token's logits (n, n_vocab) with
        logits_all, else the last token's (n_vocab,) (the only row llama.cpp then computes)."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("tokens is empty")
        starts = range(0, len(tokens), self.n_batch)
        if logits_all:
            return np.concatenate([self._decode(tokens[s:s + self.n_batch], "all") for s in starts])
        out = None
        for s in starts:
            out = self._decode(tokens[s:s + self.n_batch], "last" if s + self.n_batch >= len(tokens) else "none")
        return out

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Context = tokens, keeping the longest prefix already cached; returns the last logits."""
        tokens = [int(t) for t in tokens]
        keep = 0
        for a, b in zip(self._tokens, tokens):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)  # the last token is evaluated again for its logits
        if not self._lc.llama_memory_seq_rm(self._ctx.memory, 0, keep, -1):
            self.reset()
            keep = 0
        del self._tokens[keep:]
        return self.eval(tokens[keep:])

    def kv_bytes_per_token(self) -> int:
        """K and V bytes per cached token: 2 * n_layer * n_head_kv * head_dim * element size."""
        lc, m = self._lc, self._model.model
        head_dim = lc.llama_model_n_embd(m) // lc.llama_model_n_head(m)
        row = lc.llama_model_n_head_kv(m) * head_dim  # elements of one layer's K (or V) per token
        return lc.llama_model_n_layer(m) * (_type_bytes(self.type_k, row) + _type_bytes(self.type_v, row))

    def close(self) -> None:
        batch, model = self._batch, self._model
        self._batch = self._ctx = self._model = None
        with self._quiet():
            if batch is not None:
                batch.close()
            if model is not None:
                model.close()  # frees the context first

    def __enter__(self) -> LlamaCppEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
