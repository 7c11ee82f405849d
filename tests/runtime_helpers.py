"""Drives the runtime's C API through ggml_rerope._binding (no Python Model class) for the tests."""

from __future__ import annotations

import numpy as np

from ggml_rerope._binding import ffi, lib, last_error

INT32_MAX = 2**31 - 1
KV_F32, KV_F16 = 0, 1


class RuntimeError_(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"status {status}: {message}")
        self.status = status
        self.message = message


def check(status: int) -> None:
    if status != 0:
        raise RuntimeError_(int(status), last_error())


class Runtime:
    """One model + one context, freed on close()."""

    def __init__(self, path, n_ctx=512, n_batch=512, n_threads=2, kv_type=KV_F16, n_gpu_layers=0):
        self.model = None
        self.ctx = None
        mp = ffi.new("ggml_rerope_model **")
        params = ffi.new("ggml_rerope_model_params *", lib.ggml_rerope_model_default_params())
        params.n_gpu_layers = n_gpu_layers
        check(lib.ggml_rerope_model_load(str(path).encode(), params, mp))
        self.model = mp[0]
        self.info = ffi.new("ggml_rerope_model_info *")
        check(lib.ggml_rerope_model_get_info(self.model, self.info))
        cp = lib.ggml_rerope_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_threads, cp.kv_type = n_ctx, n_batch, n_threads, kv_type
        cx = ffi.new("ggml_rerope_context **")
        try:
            check(lib.ggml_rerope_context_new(self.model, ffi.new("ggml_rerope_context_params *", cp), cx))
        except Exception:
            self.close()
            raise
        self.ctx = cx[0]

    @property
    def n_vocab(self) -> int:
        return self.info.n_vocab

    def set_scheme(self, **fields) -> None:
        s = lib.ggml_rerope_scheme_default(self.model)
        for k, v in fields.items():
            setattr(s, k, v)
        check(lib.ggml_rerope_context_set_scheme(self.ctx, ffi.new("ggml_rerope_scheme *", s)))

    def eval(self, tokens, all_logits=False) -> np.ndarray:
        t = np.ascontiguousarray(tokens, dtype=np.int32)
        out = np.zeros((len(t) if all_logits else 1, self.n_vocab), np.float32)
        check(lib.ggml_rerope_eval(self.ctx, ffi.cast("int32_t *", t.ctypes.data), len(t),
                                   ffi.cast("float *", out.ctypes.data), 1 if all_logits else 0))
        return out if all_logits else out[0]

    @property
    def n_past(self) -> int:
        return lib.ggml_rerope_n_past(self.ctx)

    def truncate(self, n_keep: int) -> None:
        check(lib.ggml_rerope_truncate(self.ctx, n_keep))

    def close(self) -> None:
        if self.ctx is not None:
            lib.ggml_rerope_context_free(self.ctx)
            self.ctx = None
        if self.model is not None:
            lib.ggml_rerope_model_free(self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def llama_cpp_logits(path, tokens, *, flash_attn: bool, kv_type: int, n_threads=2, n_gpu_layers=0) -> np.ndarray:
    """Per-position logits of llama.cpp (llama-cpp-python) for the same tokens. n_gpu_layers = 0 is
    the CPU alone, also in a CUDA build (whose op offload would otherwise run the matmuls of batches
    >= 32 tokens on the GPU)."""
    import llama_cpp

    gpu = n_gpu_layers != 0
    llm = llama_cpp.Llama(str(path), n_ctx=len(tokens) + 16, logits_all=True, n_threads=n_threads,
                          n_threads_batch=n_threads, flash_attn=flash_attn, type_k=kv_type, type_v=kv_type,
                          n_gpu_layers=n_gpu_layers, offload_kqv=gpu, op_offload=gpu, verbose=False)
    try:
        llm.eval(list(map(int, tokens)))
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def assert_within_llama_cpp_noise(ours: np.ndarray, ref: np.ndarray, alt: np.ndarray, label: str) -> dict:
    """SmolLM2-sized check: `ours` vs llama.cpp's `ref` no further apart than llama.cpp's own
    flash-attention on (`ref`) vs off (`alt`), and the same argmax wherever ref's top-2 margin is
    >= 1 logit (flips below that are rounding ties). Prints the numbers; returns the comparison."""
    c, floor = compare(ours, ref), compare(alt, ref)
    confident = c["margin"] >= 1.0
    print(f"{label}: ours argmax {c['argmax']:.3f} (margin >= 1: {c['agree'][confident].mean():.3f} of "
          f"{confident.sum()}) mean|d| {c['mean_abs']:.4f} | llama.cpp FA on/off argmax {floor['argmax']:.3f} "
          f"mean|d| {floor['mean_abs']:.4f}")
    assert c["mean_abs"] <= 1.3 * floor["mean_abs"] + 2e-3 * ref.std()
    assert c["argmax"] >= floor["argmax"] - 0.02
    assert confident.sum() >= 300
    assert c["agree"][confident].mean() >= 0.99, c["agree"][confident].mean()
    return c


def compare(ours: np.ndarray, ref: np.ndarray) -> dict:
    d = np.abs(ours - ref)
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    agree = ours.argmax(1) == ref.argmax(1)
    return dict(
        argmax=float(agree.mean()),
        mean_abs=float(d.mean()),
        max_abs=float(d.max()),
        rel_mean=float(d.mean() / ref.std()),
        margin=margin,
        agree=agree,
    )
