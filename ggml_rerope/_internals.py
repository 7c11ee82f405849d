"""Owning wrappers of the runtime's C objects, between _binding.py and Model (as llama-cpp-python's
_internals.py sits between llama_cpp.py and Llama).

Each class owns one C object, frees it exactly once (close(), `with`, or garbage collection) and
turns every non-OK ggml_rerope_status into its typed exception (errors.py; the exception's
`status` is the C status). Nothing above this module handles a raw C pointer.

    with RuntimeModel(path) as model:
        hyper = model.hyper()                         # what the position schemes need
        with RuntimeContext(model, n_ctx=4096, n_threads=2) as ctx:
            ctx.set_scheme(schemes.make_scheme("rerope", hyper, 4096))
            out = np.empty((len(tokens), model.n_vocab), np.float32)
            ctx.eval(tokens, out, all_logits=True)
"""

from __future__ import annotations

import functools
import os
import pathlib
import weakref
from typing import Optional

import numpy as np

from ._binding import ffi, last_error, lib
from ._closing import Closing
from .errors import ModelLoadError, raise_for_status
from .kv_quant import TYPE_IDS
from .schemes import WINDOW_NONE, ModelHyper, Scheme

KV_F32, KV_F16 = lib.GGML_REROPE_KV_F32, lib.GGML_REROPE_KV_F16
KV_TYPES = TYPE_IDS  # cache type name -> ggml_rerope_kv_type
INT32_MAX = 2**31 - 1
FACTORS_ROPE_FREQS = lib.GGML_REROPE_FACTORS_ROPE_FREQS
FACTORS_LONG = lib.GGML_REROPE_FACTORS_LONG
FACTORS_SHORT = lib.GGML_REROPE_FACTORS_SHORT


def check(status: int) -> None:
    """Raises the typed exception of a non-OK status, with the library's message."""
    if status != 0:
        raise_for_status(status, last_error())


def c_scheme(scheme: Scheme, length: Optional[int] = None):
    """The runtime's ggml_rerope_scheme struct for `scheme` (resolved at `length` if dynamic).

    Returns (struct pointer, keepalive): keep `keepalive` alive until the struct has been passed
    to ggml_rerope_context_set_scheme (which copies the factors).
    """
    if scheme.dynamic:
        if length is None:
            raise ValueError(f"scheme {scheme.name!r} is dynamic: pass the current length")
        scheme = scheme.resolve(length)
    s = ffi.new("ggml_rerope_scheme *")
    s.window = int(min(scheme.window, WINDOW_NONE))
    s.far_mode = int(scheme.far_mode)
    s.leaky_k = float(scheme.leaky_k)
    s.group_size = int(scheme.group_size)
    s.logn_train_len = int(scheme.logn_train_len)
    s.rope_base = float(scheme.rope_base)
    s.attn_factor = float(scheme.attn_factor)
    s.chunk_len = int(scheme.chunk_len)
    s.sliding_window = int(scheme.sliding_window)
    s.sink_tokens = int(scheme.sink_tokens)
    keep = None
    if scheme.freq_factors is not None:
        arr = np.ascontiguousarray(scheme.freq_factors, dtype=np.float32)
        keep = ffi.new("float[]", arr.tolist())
        s.freq_factors = keep
    else:
        s.freq_factors = ffi.NULL
    return s, keep


# rope_info field -> its has_* flag and the name ModelHyper.rope_scaling uses (schemes.yarn / longrope)
_SCALING_FIELDS = (
    ("scaling_factor", "has_scaling_factor", "factor"),
    ("scaling_orig_ctx", "has_scaling_orig_ctx", "orig_ctx"),
    ("scaling_attn_factor", "has_scaling_attn_factor", "attn_factor"),
    ("yarn_ext_factor", "has_yarn_ext_factor", "ext_factor"),
    ("yarn_attn_factor", "has_yarn_attn_factor", "yarn_attn_factor"),
    ("yarn_beta_fast", "has_yarn_beta_fast", "beta_fast"),
    ("yarn_beta_slow", "has_yarn_beta_slow", "beta_slow"),
    ("yarn_log_multiplier", "has_yarn_log_multiplier", "log_mul"),
)


class _COwner(Closing):
    """Owns one pointer of the C library (`_ptr`), freed by `_free` exactly once."""

    _ptr = ffi.NULL
    _what = "object"  # for the message after close

    @staticmethod
    def _free(ptr) -> None:
        raise NotImplementedError

    @property
    def ptr(self):
        """The C pointer (ValueError once closed)."""
        if self._ptr == ffi.NULL:
            raise ValueError(f"the {self._what} is closed")
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._ptr == ffi.NULL

    def close(self) -> None:
        if self._ptr != ffi.NULL:
            self._free(self._ptr)
            self._ptr = ffi.NULL


SPLIT_MODES = {"none": lib.GGML_REROPE_SPLIT_MODE_NONE, "layer": lib.GGML_REROPE_SPLIT_MODE_LAYER,
               "row": lib.GGML_REROPE_SPLIT_MODE_ROW}  # llama.cpp's names and values
MAX_DEVICES = len(ffi.new("ggml_rerope_model_params *").tensor_split)


def split_mode_id(split_mode) -> int:
    """A split mode by name ("none", "layer", "row") or llama.cpp's value (0, 1, 2)."""
    if isinstance(split_mode, str) and split_mode.lower() in SPLIT_MODES:
        return SPLIT_MODES[split_mode.lower()]
    if isinstance(split_mode, int) and not isinstance(split_mode, bool) and split_mode in SPLIT_MODES.values():
        return split_mode
    raise ValueError(f"split_mode must be one of {sorted(SPLIT_MODES)} (or 0, 1, 2), got {split_mode!r}")


def model_params(*, n_gpu_layers: int = 0, use_mmap: bool = True, split_mode="layer", main_gpu: int = 0,
                 tensor_split=None):
    """A ggml_rerope_model_params (llama-cpp-python's names); tensor_split: up to MAX_DEVICES shares
    (None or all 0: by free memory). The C side checks the values and says what is wrong."""
    params = ffi.new("ggml_rerope_model_params *", lib.ggml_rerope_model_default_params())
    params.n_gpu_layers = int(n_gpu_layers)
    params.use_mmap = int(bool(use_mmap))
    params.split_mode = split_mode_id(split_mode)
    params.main_gpu = int(main_gpu)
    shares = [] if tensor_split is None else [float(x) for x in tensor_split]
    if len(shares) > MAX_DEVICES:
        raise ValueError(f"tensor_split has {len(shares)} entries, at most {MAX_DEVICES} devices are supported")
    for i, x in enumerate(shares):
        params.tensor_split[i] = x
    return params


class RuntimeModel(_COwner):
    """A loaded GGUF model (ggml_rerope_model): weights, hyperparameters, rotary metadata.

    close() first closes the contexts made on it that are still open (a context must not outlive
    its model)."""

    def __init__(self, path, *, n_gpu_layers: int = 0, use_mmap: bool = True, split_mode="layer", main_gpu: int = 0,
                 tensor_split=None):
        self._ptr = ffi.NULL
        self._contexts = weakref.WeakSet()
        self.path = os.fspath(path)
        params = model_params(n_gpu_layers=n_gpu_layers, use_mmap=use_mmap, split_mode=split_mode,
                              main_gpu=main_gpu, tensor_split=tensor_split)
        out = ffi.new("ggml_rerope_model **")
        check(lib.ggml_rerope_model_load(os.fsencode(self.path), params, out))
        self._ptr = out[0]
        try:
            self.info = ffi.new("ggml_rerope_model_info *")
            check(lib.ggml_rerope_model_get_info(self._ptr, self.info))
        except BaseException:
            self.close()
            raise

    @property
    def architecture(self) -> str:
        return ffi.string(self.info.architecture).decode()

    @property
    def n_vocab(self) -> int:
        return int(self.info.n_vocab)

    def info_dict(self) -> dict:
        """ggml_rerope_model_info as a dict (architecture as a str)."""
        fields = [name for name, _ in ffi.typeof("ggml_rerope_model_info").fields if name != "architecture"]
        out = {name: getattr(self.info, name) for name in fields}
        out["architecture"] = self.architecture
        return out

    def rope_info(self):
        """The GGUF's rotary metadata beyond info (a ggml_rerope_rope_info struct)."""
        out = ffi.new("ggml_rerope_rope_info *")
        check(lib.ggml_rerope_model_get_rope_info(self.ptr, out))
        return out

    def rope_factors(self, which: int, n: int) -> np.ndarray:
        """The n values of a rotary factor tensor (FACTORS_*) as stored: divisors of theta."""
        out = np.empty(n, dtype=np.float32)
        check(lib.ggml_rerope_model_get_rope_factors(self.ptr, int(which), ffi.from_buffer("float[]", out), n))
        return out

    def hyper(self) -> ModelHyper:
        """What the position schemes need to know about this model (schemes.ModelHyper)."""
        i, r = self.info, self.rope_info()
        scaling = {name: getattr(r, field) for field, flag, name in _SCALING_FIELDS if getattr(r, flag)}
        kind = ffi.string(r.scaling_type).decode()
        if kind:
            scaling["type"] = kind

        def factors(present, which):
            return self.rope_factors(which, r.n_factors).astype(np.float64) if present else None

        return ModelHyper(
            n_rot=int(i.n_rot),
            rope_base=float(i.rope_base),
            n_ctx_train=int(i.n_ctx_train),
            head_dim=int(i.head_dim),
            rope_freqs=factors(r.has_rope_freqs, FACTORS_ROPE_FREQS),
            rope_factors_long=factors(r.has_factors_long, FACTORS_LONG),
            rope_factors_short=factors(r.has_factors_short, FACTORS_SHORT),
            rope_scaling=scaling,
            has_rope_freqs=bool(r.has_rope_freqs),
        )

    def default_scheme(self):
        """The model's default ggml_rerope_scheme (a struct value, to edit and pass on)."""
        return lib.ggml_rerope_scheme_default(self.ptr)

    _what = "model"

    @staticmethod
    def _free(ptr) -> None:
        lib.ggml_rerope_model_free(ptr)

    def close(self) -> None:
        for ctx in list(getattr(self, "_contexts", ())):
            ctx.close()
        super().close()


def check_logits_out(out: np.ndarray, n_tokens: int, all_logits: bool, n_vocab: int) -> None:
    """ValueError unless `out` can take an eval's logits: n_vocab floats, or one row per token."""
    want = (n_tokens if all_logits else 1) * n_vocab
    if out.dtype != np.float32 or out.size != want or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous float32 array of {want} values")


class RuntimeContext(_COwner):
    """A KV cache and compute state on a RuntimeModel (ggml_rerope_context).

    n_batch / n_threads None keep the library's defaults (512; every CPU core)."""

    def __init__(self, model: RuntimeModel, *, n_ctx: int, n_batch: Optional[int] = None,
                 n_threads: Optional[int] = None, kv_type: int = KV_F16, n_seq_max: int = 1,
                 type_k: Optional[int] = None, type_v: Optional[int] = None):
        self._ptr = ffi.NULL
        params = ffi.new("ggml_rerope_context_params *", lib.ggml_rerope_context_default_params())
        params.n_ctx = int(n_ctx)
        if n_batch is not None:
            params.n_batch = int(n_batch)
        if n_threads is not None:
            params.n_threads = int(n_threads)
        params.type_k = int(kv_type if type_k is None else type_k)  # kv_type: both at once
        params.type_v = int(kv_type if type_v is None else type_v)
        params.n_seq_max = int(n_seq_max)
        out = ffi.new("ggml_rerope_context **")
        check(lib.ggml_rerope_context_new(model.ptr, params, out))
        self._ptr = out[0]
        self.model = model  # keeps the model object alive while this context is
        model._contexts.add(self)

    @property
    def n_ctx(self) -> int:
        return int(lib.ggml_rerope_n_ctx(self.ptr))

    @property
    def n_past(self) -> int:
        return int(lib.ggml_rerope_n_past(self.ptr))

    @property
    def kv_bytes_per_token(self) -> int:
        return int(lib.ggml_rerope_kv_bytes_per_token(self.ptr))

    @property
    def n_seq_max(self) -> int:
        return int(lib.ggml_rerope_n_seq_max(self.ptr))

    @property
    def n_ctx_seq(self) -> int:
        """Cache rows each sequence holds at most (n_ctx // n_seq_max)."""
        return int(lib.ggml_rerope_n_ctx_seq(self.ptr))

    def seq_n_past(self, seq: int) -> int:
        return int(lib.ggml_rerope_seq_n_past(self.ptr, int(seq)))

    def seq_truncate(self, seq: int, n_keep: int) -> None:
        check(lib.ggml_rerope_seq_truncate(self.ptr, int(seq), int(n_keep)))

    def seq_kv_remove(self, seq: int, p0: int, p1: int) -> None:
        check(lib.ggml_rerope_seq_kv_remove(self.ptr, int(seq), int(p0), int(p1)))

    def seq_set_scheme(self, seq: int, scheme: Scheme, length: int = 1) -> None:
        cs, keepalive = c_scheme(scheme, length)
        check(lib.ggml_rerope_seq_set_scheme(self.ptr, int(seq), cs))
        del keepalive  # the call copied the factors

    def decode(self, tokens: np.ndarray, seq_ids: np.ndarray, logits: Optional[np.ndarray] = None) -> np.ndarray:
        """One batch over several sequences (ggml_rerope_decode): token i goes to sequence seq_ids[i].
        `logits`: per token, whether it returns logits (None: each sequence's last token). Returns
        the logit rows, shape (n_out, n_vocab), in batch order."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        seq_ids = np.ascontiguousarray(seq_ids, dtype=np.int32).reshape(-1)
        if seq_ids.size != tokens.size:
            raise ValueError(f"seq_ids has {seq_ids.size} entries for {tokens.size} tokens")
        if logits is None:
            n_out = np.unique(seq_ids).size
            flags = ffi.NULL
        else:
            flags_arr = np.ascontiguousarray(logits, dtype=np.int8).reshape(-1)
            if flags_arr.size != tokens.size:
                raise ValueError(f"logits has {flags_arr.size} flags for {tokens.size} tokens")
            n_out = int(np.count_nonzero(flags_arr))
            flags = ffi.from_buffer("int8_t[]", flags_arr)
        out = np.empty((n_out, self.model.n_vocab), dtype=np.float32)
        tok_buf, seq_buf = ffi.from_buffer("int32_t[]", tokens), ffi.from_buffer("int32_t[]", seq_ids)  # alive: locals
        batch = ffi.new("ggml_rerope_batch *", {"n_tokens": tokens.size, "tokens": tok_buf, "seq_id": seq_buf,
                                                "logits": flags})
        out_ptr = ffi.from_buffer("float[]", out, require_writable=True) if n_out else ffi.NULL
        check(lib.ggml_rerope_decode(self.ptr, batch, out_ptr))
        return out

    def set_scheme(self, scheme: Scheme, length: int = 1) -> None:
        """Makes `scheme` the context's position scheme (a dynamic one resolved at `length`)."""
        cs, keepalive = c_scheme(scheme, length)
        check(lib.ggml_rerope_context_set_scheme(self.ptr, cs))
        del keepalive  # the call copied the factors

    def _scheme_from_fields(self, fields: dict):
        s = self.model.default_scheme()
        for name, value in fields.items():
            setattr(s, name, value)
        return ffi.new("ggml_rerope_scheme *", s)

    def set_scheme_fields(self, **fields) -> None:
        """Sets a scheme given as ggml_rerope_scheme fields over the model's default one (every sequence)."""
        check(lib.ggml_rerope_context_set_scheme(self.ptr, self._scheme_from_fields(fields)))

    def seq_set_scheme_fields(self, seq: int, **fields) -> None:
        """set_scheme_fields for one sequence."""
        check(lib.ggml_rerope_seq_set_scheme(self.ptr, int(seq), self._scheme_from_fields(fields)))

    def eval(self, tokens: np.ndarray, out: Optional[np.ndarray] = None, all_logits: bool = False) -> None:
        """Appends `tokens` (int32) to the cache; writes the logits into `out` (float32, n_vocab
        values, or len(tokens) * n_vocab with all_logits), or none when out is None."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        if out is None:
            out_ptr = ffi.NULL
        else:
            check_logits_out(out, tokens.size, all_logits, self.model.n_vocab)
            out_ptr = ffi.from_buffer("float[]", out, require_writable=True)
        check(lib.ggml_rerope_eval(self.ptr, ffi.from_buffer("int32_t[]", tokens), tokens.size, out_ptr,
                                   int(bool(all_logits))))

    def truncate(self, n_keep: int) -> None:
        """Keeps the first n_keep tokens of the cache."""
        check(lib.ggml_rerope_truncate(self.ptr, int(n_keep)))

    def kv_remove(self, p0: int, p1: int) -> None:
        """Drops cached tokens p0 .. p1-1; the later ones move down (context shift, no re-rotation)."""
        check(lib.ggml_rerope_kv_remove(self.ptr, int(p0), int(p1)))

    def state_size(self) -> int:
        return int(lib.ggml_rerope_state_size(self.ptr))

    def state_get(self) -> bytes:
        """The cache's raw K/V rows with their header (ggml_rerope_state_get): valid under any scheme."""
        size = self.state_size()
        buf = bytearray(size)
        check(lib.ggml_rerope_state_get(self.ptr, ffi.from_buffer(buf), size))
        return bytes(buf)

    def state_set(self, state: bytes) -> None:
        """Loads a state_get() result (checked before anything is written: on error nothing changed)."""
        if not isinstance(state, (bytes, bytearray, memoryview)):
            raise TypeError(f"state must be bytes, got {type(state).__name__}")
        check(lib.ggml_rerope_state_set(self.ptr, ffi.from_buffer(state), len(state)))

    _what = "model"  # a closed context is reached through its closed model

    @staticmethod
    def _free(ptr) -> None:
        lib.ggml_rerope_context_free(ptr)


class Runtime:
    """One RuntimeModel and one RuntimeContext on it, returning logits as new arrays: for the tests
    and scripts that drive the C runtime below Model (no tokenizer, scheme as raw struct fields)."""

    def __init__(self, path, n_ctx: int = 512, n_batch: int = 512, n_threads: int = 2, kv_type: int = KV_F16,
                 n_gpu_layers: int = 0, type_k: Optional[int] = None, type_v: Optional[int] = None,
                 n_seq_max: int = 1, **placement):
        self.model = RuntimeModel(path, n_gpu_layers=n_gpu_layers, **placement)
        try:
            self.ctx = RuntimeContext(self.model, n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads, kv_type=kv_type,
                                      type_k=type_k, type_v=type_v, n_seq_max=n_seq_max)
        except BaseException:
            self.model.close()
            raise

    @property
    def info(self):
        return self.model.info

    @property
    def n_vocab(self) -> int:
        return self.model.n_vocab

    @property
    def n_past(self) -> int:
        return self.ctx.n_past

    def set_scheme(self, **fields) -> None:
        """ggml_rerope_scheme fields over the model's default scheme (window=, logn_train_len=, ...)."""
        self.ctx.set_scheme_fields(**fields)

    def eval(self, tokens, all_logits: bool = False) -> np.ndarray:
        """Appends tokens; returns every token's logits (n, n_vocab) with all_logits, else the last's."""
        n = len(tokens)
        out = np.zeros((n if all_logits else 1, self.n_vocab), np.float32)
        self.ctx.eval(tokens, out, all_logits)
        return out if all_logits else out[0]

    def truncate(self, n_keep: int) -> None:
        self.ctx.truncate(n_keep)

    def close(self) -> None:
        self.model.close()  # closes the context first

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@functools.lru_cache(maxsize=8)
def _cached_hyper(path: str, mtime_ns: int, size: int) -> ModelHyper:
    with RuntimeModel(path) as model:  # mmap: the weights are mapped, not read
        return model.hyper()


def read_model_hyper(path) -> ModelHyper:
    """schemes.ModelHyper of a GGUF file, read by the runtime's loader (cached per file version)."""
    p = pathlib.Path(path).resolve()
    st = p.stat() if p.is_file() else None
    if st is None:
        raise ModelLoadError(f"model file not found: {path}")
    return _cached_hyper(str(p), st.st_mtime_ns, st.st_size)
