"""`Llama`: llama-cpp-python's `Llama` class on the ggml_rerope runtime (a drop-in).

    from ggml_rerope import Llama            # instead of: from llama_cpp import Llama
    llm = Llama("model.gguf", n_ctx=16384)   # ReRoPE by default; rope_scaling="none" = plain RoPE
    out = llm("Q: Name the planets in the solar system? A: ", max_tokens=32, stop=["Q:", "\\n"])
    print(out["choices"][0]["text"])
    for chunk in llm.create_chat_completion([{"role": "user", "content": "Hi!"}], stream=True): ...

Same constructor keywords (see llama_args.py for which apply), same methods and the same
result dicts as llama-cpp-python 0.3.36: ids "cmpl-..." / "chatcmpl-...", choices with text
or message, finish_reason "stop" / "length", usage, streaming chunks, stop sequences, logprobs.
Chat prompts go through llama-cpp-python's own chat handlers (the GGUF's template, or a named
chat_format), which call back into this class's `tokenize` and `create_completion`.

The differences: the position scheme is ours (rope_scaling=, rerope_window=, ... or
llama.cpp's rope_scaling_type), sampling draws use NumPy's generator (same chain and the
same greedy choice at temperature 0, other random draws), errors in the arguments of a
streaming call raise when it is called rather than at its first chunk, and grammars,
mirostat and typical-p are not available (ValueError).
"""

from __future__ import annotations

import collections
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from . import llama_args
from ._closing import Closing
from .errors import ContextFullError
from .llama_text import LogprobRecorder, StopCutter, decode, logits_to_logprobs
from .model import Model
from .sampling import Sampler

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]
StoppingCriteria = Callable[[np.ndarray, np.ndarray], bool]


class ContextLengthExceededError(ContextFullError, ValueError):
    """The prompt does not fit the context (a ValueError, as llama-cpp-python raises)."""

    def __init__(self, prompt_tokens: int, n_ctx: int):
        # llama-cpp-python's wording: its server (and ours) recognise it
        super().__init__(f"Requested tokens ({prompt_tokens}) exceed context window of {n_ctx}")
        self.prompt_tokens, self.n_ctx = prompt_tokens, n_ctx


@dataclass
class CompletionTimings:
    """What the last completion cost (the server's metrics read this)."""

    prompt_tokens: int = 0
    prompt_eval_tokens: int = 0  # of the prompt, tokens not already in the cache
    prompt_s: float = 0.0
    completion_tokens: int = 0
    completion_s: float = 0.0


class _Sampling:
    """One call's sampling chain, in llama-cpp-python's order: logits processors, logit bias,
    penalties over the tokens generated so far, then greedy or top-k / top-p / min-p /
    temperature / draw."""

    def __init__(self, *, temperature, top_k, top_p, min_p, repeat_penalty, frequency_penalty, presence_penalty,
                 seed, last_n, logits_processor, logit_bias, stopping_criteria):
        if temperature < 0:  # llama.cpp: a plain draw from the whole distribution
            temperature, top_k, top_p, min_p = 1.0, 0, 1.0, 0.0
        # llama.cpp takes any top_p / min_p and always keeps one token; Sampler checks ranges
        top_p = min(max(float(top_p), 1e-9), 1.0)
        min_p = min(max(float(min_p), 0.0), 1.0)
        self.sampler = Sampler(temperature=temperature, top_k=int(top_k), top_p=top_p, min_p=min_p,
                               repeat_penalty=1.0, seed=seed)
        self.repeat = float(repeat_penalty)
        self.freq = float(frequency_penalty or 0.0)
        self.present = float(presence_penalty or 0.0)
        if not self.repeat > 0:
            raise ValueError(f"repeat_penalty must be > 0, got {repeat_penalty}")
        self.recent: collections.deque = collections.deque(maxlen=max(0, int(last_n)))
        self.processors = list(logits_processor or [])
        self.bias = {int(k): float(v) for k, v in (logit_bias or {}).items()}
        self.stopping = stopping_criteria
        self.stopped_by_criteria = False

    @property
    def needs_ids(self) -> bool:
        return bool(self.processors) or self.stopping is not None

    def pick(self, logits: np.ndarray, input_ids: Optional[np.ndarray]) -> int:
        scores = np.array(logits, dtype=np.float32, copy=True)
        if self.processors:
            ids = np.asarray(input_ids, dtype=np.intc)
            for proc in self.processors:
                scores = np.asarray(proc(ids, scores), dtype=np.float32)
        for tok, b in self.bias.items():
            scores[tok] += b
        if self.recent and self.recent.maxlen and (self.repeat != 1.0 or self.freq or self.present):
            ids, counts = np.unique(np.fromiter(self.recent, dtype=np.int64), return_counts=True)
            vals = scores[ids]
            vals = np.where(vals <= 0, vals * self.repeat, vals / self.repeat)
            scores[ids] = vals - counts * self.freq - self.present
        return self.sampler(scores)

    def stop_now(self, input_ids: Optional[np.ndarray], logits: np.ndarray) -> bool:
        if self.stopping is None:
            return False
        if self.stopping(np.asarray(input_ids, dtype=np.intc), logits):
            self.stopped_by_criteria = True
        return self.stopped_by_criteria


class Llama(Closing):
    """llama-cpp-python's `Llama` on ggml_rerope's runtime. Keywords beyond llama-cpp-python's:
    rope_scaling (a scheme name of ggml_rerope.schemes.SCHEMES, default "rerope"),
    rerope_window, rerope_leaky_k, logn, rope_options, kv_type (a cache type name for K and V), as in
    Model; type_k / type_v are llama-cpp-python's (ggml type ids: 1 f16, 8 q8_0, 2 q4_0, ...).
    model_path None loads the default model."""

    def __init__(
        self,
        model_path: Optional[str] = None,
        *,
        n_gpu_layers: int = 0,
        split_mode: int = 1,
        main_gpu: int = 0,
        tensor_split: Optional[list] = None,
        seed: int = llama_args.LLAMA_DEFAULT_SEED,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_threads: Optional[int] = None,
        n_threads_batch: Optional[int] = None,
        rope_scaling_type: Optional[int] = -1,
        rope_freq_scale: float = 0.0,
        yarn_ext_factor: float = -1.0,
        yarn_attn_factor: float = 1.0,
        yarn_beta_fast: float = 32.0,
        yarn_beta_slow: float = 1.0,
        yarn_orig_ctx: int = 0,
        logits_all: bool = False,
        last_n_tokens_size: int = 64,
        chat_format: Optional[str] = None,
        chat_handler: Optional[Callable[..., Any]] = None,
        type_k: Optional[int] = None,
        type_v: Optional[int] = None,
        verbose: bool = True,
        rope_scaling=None,
        rerope_window: Optional[int] = None,
        rerope_leaky_k: Optional[float] = None,
        logn: bool = True,
        rope_options: Optional[dict] = None,
        kv_type: Optional[str] = None,
        _sequence=None,
        **kwargs,
    ):
        self._model: Optional[Model] = None
        llama_args.check_extra_kwargs(kwargs)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 0:
            raise ValueError(f"n_ctx must be an int >= 0 (0 = the model's trained context), got {n_ctx!r}")
        if n_threads is not None and n_threads_batch is not None and n_threads != n_threads_batch:
            import warnings

            warnings.warn("Llama: one thread count serves prompt and generation here: n_threads is used", stacklevel=2)
        name, options = llama_args.scheme_from(
            rope_scaling, rope_scaling_type, rope_freq_scale,
            {"yarn_ext_factor": yarn_ext_factor, "yarn_attn_factor": yarn_attn_factor, "yarn_beta_fast": yarn_beta_fast,
             "yarn_beta_slow": yarn_beta_slow, "yarn_orig_ctx": yarn_orig_ctx},
            rope_options)
        if n_ctx == 0:  # llama.cpp: the trained context
            with Model(model_path, n_ctx=1, n_threads=1, rope_scaling="none") as probe:
                n_ctx = probe.n_ctx_train
        self._model = Model(
            model_path, n_ctx=n_ctx, n_threads=n_threads or n_threads_batch, n_batch=min(n_ctx, n_batch),
            n_gpu_layers=n_gpu_layers, split_mode=split_mode, main_gpu=main_gpu, tensor_split=tensor_split,
            rope_scaling=name, rerope_window=rerope_window, rerope_leaky_k=rerope_leaky_k,
            logn=logn, rope_options=options, **dict(zip(("type_k", "type_v"),
                                                        llama_args.cache_types_from(type_k, type_v, kv_type))),
            verbose=verbose, _sequence=_sequence)
        self._tok = self._model.tokenizer
        self.model_path: str = self._model.model_path
        self.metadata: dict[str, str] = dict(self._tok.metadata)
        self.verbose = bool(verbose)
        self.n_batch = self._model.n_batch
        self.n_threads = self._model.n_threads
        self.last_n_tokens_size = int(last_n_tokens_size)
        self._logits_all = bool(logits_all)
        self._seed = seed or llama_args.LLAMA_DEFAULT_SEED
        self._piece_cache: dict[int, str] = {}
        self.last_timings = CompletionTimings()
        self.chat_handler = chat_handler
        self.chat_format = chat_format
        self._chat_handlers: dict[str, Callable[..., Any]] = {}
        self._setup_chat_formats()

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        model, self._model = getattr(self, "_model", None), None
        if model is not None:
            model.close()

    def _live(self) -> Model:
        if self._model is None:
            raise ValueError("the model is closed")
        return self._model

    # -- chat formats -------------------------------------------------------------------------

    def _setup_chat_formats(self) -> None:
        """Chat handlers as llama-cpp-python picks them: the GGUF's templates (named ones and the
        default), a known format guessed from the default template, else llama-2."""
        from llama_cpp import llama_chat_format

        eos, bos = self.token_eos(), self.token_bos()
        eos_text = self._tok.token_to_piece(eos, special=True).decode("utf-8", "ignore") if eos >= 0 else ""
        bos_text = self._tok.token_to_piece(bos, special=True).decode("utf-8", "ignore") if bos >= 0 else ""
        templates = {k[len("tokenizer."):]: v for k, v in self.metadata.items()
                     if k.startswith("tokenizer.chat_template.")}
        if "tokenizer.chat_template" in self.metadata:
            templates["chat_template.default"] = self.metadata["tokenizer.chat_template"]
        for name, template in templates.items():
            self._chat_handlers[name] = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=eos_text, bos_token=bos_text, stop_token_ids=[eos]).to_chat_handler()
        if self.chat_format is None and self.chat_handler is None:
            if "chat_template.default" in templates:
                guessed = llama_chat_format.guess_chat_format_from_gguf_metadata(self.metadata)
                self.chat_format = guessed or "chat_template.default"
            else:
                self.chat_format = "llama-2"

    # -- tokens and model facts -----------------------------------------------------------------

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of UTF-8 `text` (add_bos: the vocabulary's prefix tokens where it asks for
        them; special: parse special-token text such as "<|im_start|>")."""
        if not isinstance(text, (bytes, bytearray)):
            raise TypeError(f"text must be UTF-8 bytes, got {type(text).__name__}")
        return self._tok.tokenize(bytes(text).decode("utf-8", errors="replace"), add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int], prev_tokens: Optional[Sequence[int]] = None,
                   special: bool = False) -> bytes:
        """Bytes of `tokens`: their pieces joined (a leading space after a BOS dropped), as
        llama-cpp-python's detokenizer; prev_tokens is accepted and, as there, unused."""
        out = b"".join(self._tok.token_to_piece(int(t), special=special) for t in tokens)
        if len(tokens) and int(tokens[0]) == self.token_bos() and out[:1] == b" ":
            out = out[1:]
        return out

    def _piece_text(self, token: int) -> str:
        text = self._piece_cache.get(token)
        if text is None:
            text = self._piece_cache[token] = decode(self._tok.token_to_piece(token))
        return text

    def n_ctx(self) -> int:
        return self._live().n_ctx

    def n_vocab(self) -> int:
        return self._live().n_vocab

    def n_embd(self) -> int:
        return int(self._live().info["n_embd"])

    def token_bos(self) -> int:
        return int(self._tok.bos_id)

    def token_eos(self) -> int:
        return int(self._tok.eos_id)

    @property
    def n_tokens(self) -> int:
        """Tokens in the KV cache."""
        return self._live().n_past

    @property
    def n_ctx_train(self) -> int:
        return self._live().n_ctx_train

    def reset(self) -> None:
        """Empties the KV cache."""
        self._live().reset()

    def set_seed(self, seed: int) -> None:
        self._seed = seed

    @staticmethod
    def logits_to_logprobs(logits, axis: int = -1) -> np.ndarray:
        return np.moveaxis(logits_to_logprobs(np.moveaxis(np.asarray(logits), axis, -1)), -1, axis)

    @staticmethod
    def longest_token_prefix(a: Sequence[int], b: Sequence[int]) -> int:
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return n

    # -- ours: the runtime underneath, the position scheme --------------------------------------

    @property
    def rerope_model(self) -> Model:
        """The ggml_rerope.Model this class runs on (logits, timings, scheme). Not llama-cpp-python's
        `model` (a llama.cpp pointer), which has no counterpart here."""
        return self._live()

    @property
    def scheme(self):
        """The position scheme in use (ggml_rerope.schemes.Scheme)."""
        return self._live().scheme

    def set_rope_scaling(self, rope_scaling="rerope", **options) -> None:
        """Switches the position scheme (Model.set_rope_scaling's arguments). The KV cache is
        kept; reset() first for results that do not depend on what the cache saw before."""
        self._live().set_rope_scaling(rope_scaling, **options)

    # -- evaluation and the token generator ----------------------------------------------------

    def eval(self, tokens: Sequence[int]) -> None:
        """Appends `tokens` to the context."""
        self._live().eval(list(tokens))

    def _call_seed(self, seed: Optional[int]) -> Optional[int]:
        """The seed of one call, as llama-cpp-python advances it: a given seed is kept for later
        calls; without one the next seed is drawn from the current one (reproducible runs)."""
        if seed is not None:
            self.set_seed(seed)
        else:
            self.set_seed(random.Random(self._seed).randint(0, 2**32))
        s = int(self._seed)
        return None if s < 0 else s

    def _sampling(self, *, temperature, top_k, top_p, min_p, typical_p, repeat_penalty, frequency_penalty,
                  presence_penalty, mirostat_mode, seed, logits_processor, logit_bias, stopping_criteria,
                  grammar) -> _Sampling:
        if grammar is not None:
            raise ValueError("grammar (and response_format json_object) is not supported by ggml_rerope.Llama")
        if mirostat_mode:
            raise ValueError("mirostat sampling is not supported by ggml_rerope.Llama")
        if typical_p is not None and typical_p < 1.0:
            raise ValueError("typical_p sampling is not supported by ggml_rerope.Llama (use 1.0)")
        return _Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                         frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, seed=seed,
                         last_n=self.last_n_tokens_size, logits_processor=logits_processor, logit_bias=logit_bias,
                         stopping_criteria=stopping_criteria)

    def _tokens_and_logits(self, tokens: Sequence[int], sampling: _Sampling, reset: bool = True,
                           timings: Optional[CompletionTimings] = None):
        """Yields (token, logits it was drawn from), evaluating each token before the next.
        reset: make the cache hold exactly `tokens` first (its longest cached prefix kept);
        else append them. Ends when the context is full or a stopping criterion fires."""
        model = self._live()
        t0 = time.perf_counter()
        logits = model.prefill(tokens) if reset else model.eval(list(tokens))
        if timings is not None:
            timings.prompt_tokens = len(tokens)
            timings.prompt_eval_tokens = len(tokens) - model.last_timings.reused_tokens if reset else len(tokens)
            timings.prompt_s = time.perf_counter() - t0
        # the evaluated tokens, for logits processors and stopping criteria: grown in place, not copied per token
        ids = np.empty(model.n_ctx, dtype=np.intc) if sampling.needs_ids else None
        n = 0
        if ids is not None:
            cached = model.tokens
            n = len(cached)
            ids[:n] = cached
        while True:
            view = ids[:n] if ids is not None else None
            token = sampling.pick(logits, view)
            if sampling.stop_now(view, logits):
                return
            yield token, logits
            sampling.recent.append(token)
            if model.n_past >= model.n_ctx:
                return
            logits = model.eval([token])
            if ids is not None:
                ids[n] = token
                n += 1

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, tfs_z: float = 1.0,
                 mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                 penalize_nl: bool = True, logits_processor: Optional[list[LogitsProcessor]] = None,
                 stopping_criteria: Optional[StoppingCriteria] = None, grammar=None) -> Iterator[int]:
        """Yields sampled tokens after `tokens`, without end (the caller stops)."""
        sampling = self._sampling(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                                  repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                  presence_penalty=presence_penalty, mirostat_mode=mirostat_mode,
                                  seed=None if self._seed < 0 else int(self._seed), logits_processor=logits_processor,
                                  logit_bias=None, stopping_criteria=stopping_criteria, grammar=grammar)
        for token, _ in self._tokens_and_logits(list(tokens), sampling, reset=reset):
            yield token

    # -- completions ----------------------------------------------------------------------------

    def _prompt_tokens(self, prompt: Union[str, Sequence[int]]) -> list[int]:
        if isinstance(prompt, str):
            # BOS (and EOS) where the vocabulary adds them, special tokens parsed: llama-cpp-python's rule
            tokens = self._tok.tokenize(prompt, add_bos=True, special=True)
        else:
            tokens = [int(t) for t in prompt]
        if not tokens:
            bos = self.token_bos()
            if bos < 0:
                raise ValueError("prompt is empty")
            tokens = [bos]
        return tokens

    def create_completion(
        self,
        prompt: Union[str, list[int]],
        suffix: Optional[str] = None,
        max_tokens: Optional[int] = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: Optional[int] = None,
        echo: bool = False,
        stop: Optional[Union[str, list[str]]] = [],  # noqa: B006 - llama-cpp-python's default, never mutated
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: Optional[int] = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: Optional[str] = None,
        stopping_criteria: Optional[StoppingCriteria] = None,
        logits_processor: Optional[list[LogitsProcessor]] = None,
        grammar=None,
        logit_bias: Optional[dict[int, float]] = None,
    ):
        """Continues `prompt` (text, or token ids); returns a "text_completion" dict, or with
        stream=True an iterator of chunk dicts ending with an empty-text chunk that carries the
        finish_reason. Arguments and result as llama-cpp-python's create_completion."""
        self._live()
        prompt_tokens = self._prompt_tokens(prompt)
        n_ctx = self.n_ctx()
        if len(prompt_tokens) >= n_ctx:
            raise ContextLengthExceededError(len(prompt_tokens), n_ctx)
        room = n_ctx - len(prompt_tokens)
        max_tokens = room if max_tokens is None or max_tokens <= 0 else min(int(max_tokens), room)
        if logprobs is not None and not self._logits_all:
            raise ValueError("logprobs is not supported for models created with logits_all=False")
        if logprobs is not None and (isinstance(logprobs, bool) or int(logprobs) < 0):
            raise ValueError(f"logprobs must be an int >= 0 or None, got {logprobs!r}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if not all(isinstance(s, str) for s in stops):
            raise TypeError("stop must be a str, a list of str or None")
        sampling = self._sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                                  repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                  presence_penalty=presence_penalty, mirostat_mode=mirostat_mode,
                                  seed=self._call_seed(seed), logits_processor=logits_processor, logit_bias=logit_bias,
                                  stopping_criteria=stopping_criteria, grammar=grammar)
        # echo applies to the whole result only; llama-cpp-python's streams leave it out too
        run = _CompletionRun(self, prompt, prompt_tokens, max_tokens, sampling, [s.encode("utf-8") for s in stops],
                             logprobs, bool(echo) and not stream, suffix,
                             model if model is not None else self.model_path)
        if stream:
            return run.chunks()
        return run.result()

    def __call__(self, prompt: Union[str, list[int]], *args, **kwargs):
        """Same as create_completion."""
        return self.create_completion(prompt, *args, **kwargs)

    def create_chat_completion(
        self,
        messages: list[dict[str, Any]],
        functions: Optional[list[dict]] = None,
        function_call: Optional[Union[str, dict]] = None,
        tools: Optional[list[dict]] = None,
        tool_choice: Optional[Union[str, dict]] = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: Optional[Union[str, list[str]]] = [],  # noqa: B006 - llama-cpp-python's default, never mutated
        seed: Optional[int] = None,
        response_format: Optional[dict] = None,
        max_tokens: Optional[int] = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: Optional[str] = None,
        logits_processor: Optional[list[LogitsProcessor]] = None,
        grammar=None,
        logit_bias: Optional[dict[int, float]] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
    ):
        """Answers a conversation: a "chat.completion" dict, or with stream=True an iterator of
        "chat.completion.chunk" dicts (first the role, then content pieces, then the finish).
        The prompt comes from the chat handler llama-cpp-python would use for this model."""
        from llama_cpp import llama_chat_format

        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
        handler = (self.chat_handler or self._chat_handlers.get(self.chat_format)
                   or llama_chat_format.get_chat_completion_handler(self.chat_format))
        return handler(
            llama=self, messages=messages, functions=functions, function_call=function_call, tools=tools,
            tool_choice=tool_choice, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
            typical_p=typical_p, logprobs=logprobs, top_logprobs=top_logprobs, stream=stream, stop=stop, seed=seed,
            response_format=response_format, max_tokens=max_tokens, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, repeat_penalty=repeat_penalty, tfs_z=tfs_z,
            mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, model=model,
            logits_processor=logits_processor, grammar=grammar, logit_bias=logit_bias)


class _CompletionRun:
    """One completion: generates, cuts at stop sequences, and shapes the chunks or the result."""

    def __init__(self, llama: Llama, prompt, prompt_tokens: list[int], max_tokens: int, sampling: _Sampling,
                 stops: list[bytes], logprobs: Optional[int], echo: bool, suffix: Optional[str], model_name: str):
        self.llama, self.prompt, self.prompt_tokens = llama, prompt, prompt_tokens
        self.max_tokens, self.sampling, self.stops = max_tokens, sampling, stops
        self.logprobs, self.echo, self.suffix, self.model_name = logprobs, echo, suffix, model_name
        self.id, self.created = f"cmpl-{uuid.uuid4()}", int(time.time())
        self.completion_tokens: list[int] = []
        self.finish_reason = "length"
        self.cutter = StopCutter(stops)
        self.timings = CompletionTimings()
        self.rec: Optional[LogprobRecorder] = None

    def _prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        return decode(self.llama.detokenize(self.prompt_tokens))

    def _record_echo(self) -> bytes:
        """Logprobs of the prompt's own tokens (echo): every position's prediction of the next."""
        toks = self.prompt_tokens
        rows = self.llama._live().logits(toks)  # from an empty cache; the prefill after reuses it
        bos = self.llama.token_bos()
        text = b""
        for i, t in enumerate(toks):
            if i == 0 and t == bos:
                continue
            piece = self.llama._tok.token_to_piece(t)
            self.rec.add(t, rows[i - 1] if i > 0 else None, text, len(text) + len(piece))
            text += piece
        return text

    def _steps(self) -> Iterator[None]:
        """Generates token by token; yields after each token that was kept."""
        llama = self.llama
        tok = llama._tok
        prefix = b""
        if self.logprobs is not None:
            self.rec = LogprobRecorder(self.logprobs, llama._piece_text, 0 if self.echo else len(self.prompt))
            if self.echo:
                prefix = self._record_echo()
        gen = llama._tokens_and_logits(self.prompt_tokens, self.sampling, timings=self.timings)
        t0 = None
        try:
            for token, logits in gen:
                if t0 is None:
                    t0 = time.perf_counter()
                if tok.is_eog(token):
                    self.finish_reason = "stop"
                    return
                self.completion_tokens.append(token)
                piece = tok.token_to_piece(token)
                if self.rec is not None:
                    text_before = prefix + bytes(self.cutter.text)
                    self.rec.add(token, logits, text_before, len(self.cutter.text) + len(piece))
                self.cutter.add(piece)
                if self.cutter.stopped:
                    self.finish_reason = "stop"
                    return
                yield
                if len(self.completion_tokens) >= self.max_tokens:
                    self.finish_reason = "length"
                    return
            if self.sampling.stopped_by_criteria:
                self.finish_reason = "stop"
        finally:
            gen.close()
            self.timings.completion_tokens = len(self.completion_tokens)
            self.timings.completion_s = time.perf_counter() - t0 if t0 is not None else 0.0
            llama.last_timings = self.timings

    def result(self) -> dict:
        for _ in self._steps():
            pass
        text = decode(bytes(self.cutter.text))
        if self.echo:
            text = self._prompt_text() + text
        if self.suffix is not None:
            text += self.suffix
        n_prompt, n_completion = len(self.prompt_tokens), len(self.completion_tokens)
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model_name,
            "choices": [{
                "text": text,
                "index": 0,
                "logprobs": self.rec.span(0, len(self.rec)) if self.rec is not None else None,
                "finish_reason": self.finish_reason,
            }],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                      "total_tokens": n_prompt + n_completion},
        }

    def _chunk(self, text: str, logprobs: Optional[dict], finish_reason: Optional[str]) -> dict:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model_name,
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}],
        }

    def chunks(self) -> Iterator[dict]:
        sent_bytes = sent_tokens = 0

        def take(end: int, tokens_until: int):
            nonlocal sent_bytes, sent_tokens
            text = decode(bytes(self.cutter.text[sent_bytes:end]))
            lp = self.rec.span(sent_tokens, tokens_until) if self.rec is not None else None
            sent_bytes, sent_tokens = end, tokens_until
            return self._chunk(text, lp, None)

        for _ in self._steps():
            end = self.cutter.safe_end()
            if end > sent_bytes:
                upto = sent_tokens
                if self.rec is not None:  # the tokens whose bytes are all shown by now
                    while upto < len(self.rec) and self.rec.byte_end[upto] <= end:
                        upto += 1
                yield take(end, upto)
        end = len(self.cutter.text)
        if end > sent_bytes or (self.rec is not None and sent_tokens < len(self.rec)):
            upto = sent_tokens
            if self.rec is not None:  # tokens that show any of the text (none past a stop sequence)
                while upto < len(self.rec) and (self.rec.byte_end[upto - 1] if upto else 0) < end:
                    upto += 1
            if end > sent_bytes or upto > sent_tokens:
                yield take(end, upto)
        yield self._chunk("", None, self.finish_reason)
