"""Logit comparisons of the runtime against llama.cpp: llama.cpp's logits for the same tokens (the
one llama.cpp driver, ggml_rerope.llama_cpp_engine) and the agreement measures the tests bound."""

from __future__ import annotations

import numpy as np

from ggml_rerope.llama_cpp_engine import LlamaCppEngine
from ggml_rerope.tokenizer import Tokenizer


def text_tokens(model_path, text_path, n: int) -> np.ndarray:
    """The first n tokens of a text file in a model's vocabulary (BOS where it wants one)."""
    tok = Tokenizer(str(model_path))
    try:
        tokens = np.array(tok.tokenize(text_path.read_text()[:20 * n])[:n], np.int32)
    finally:
        tok.close()
    assert len(tokens) == n, f"{text_path} has fewer than {n} tokens"
    return tokens


def llama_cpp_logits(path, tokens, *, flash_attn: bool, kv_type: int, n_threads=2, n_gpu_layers=0) -> np.ndarray:
    """Per-position logits of llama.cpp for the same tokens. n_gpu_layers = 0 is the CPU alone, also
    in a CUDA build (whose op offload would otherwise run the matmuls of batches >= 32 tokens on the
    GPU)."""
    with LlamaCppEngine(path, len(tokens) + 16, n_batch=512, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                        flash_attn=flash_attn, kv_type=kv_type, offload=n_gpu_layers != 0) as lc:
        return lc.eval(tokens, logits_all=True)


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
