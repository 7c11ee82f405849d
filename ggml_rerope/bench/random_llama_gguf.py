"""Writes a Llama-shaped Q4_0 GGUF with random weights, streamed tensor by tensor.

    path = ensure_model("/tmp/llama3-8b-random-q4_0.gguf", "8b")   # reuses a file of that shape

For the end-to-end GPU benchmark (python/bench_gpu_model.py): the weights are made on the
benchmark machine (nothing travels) and never quantized: each Q4_0 block (32 weights) is written directly as an
f16 scale followed by 16 random bytes of nibbles. Scales are 1 / (4.6 sqrt(n_in)) per matrix
(uniform nibbles - 8 have a standard deviation of 4.6), so every matmul keeps unit-RMS inputs near
unit RMS and activations stay finite over 32 layers. Norm weights are F32 ones (small noise).
Memory: one tensor at a time (the largest, token_embd of the 8B shape, is 295 MB).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import numpy as np

from .gguf_vocab import add_minimal_vocab

# Llama-3-8B: 32 layers, 4096 wide, 32 q heads / 8 KV heads of 128, FFN 14336, 128256 tokens.
SHAPES: dict[str, dict[str, float]] = {
    "8b": dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, head_dim=128, n_ff=14336,
               n_vocab=128256, rope_base=500000.0, n_ctx_train=8192, norm_eps=1e-5),
    # under 2 MB, for CPU self-checks: same structure, heads of 128 and GQA 2:1
    "tiny": dict(n_embd=512, n_layer=2, n_head=4, n_head_kv=2, head_dim=128, n_ff=1024,
                 n_vocab=1024, rope_base=500000.0, n_ctx_train=8192, norm_eps=1e-5),
}
FORMAT_TAG = "ggml-rerope random llama Q4_0 v1"  # general.name prefix: marks files this module wrote
Q4_0_BLOCK, Q4_0_BYTES = 32, 18  # weights per block; bytes per block (f16 scale + 16 nibble bytes)


def model_name(shape: str) -> str:
    return f"{FORMAT_TAG} shape={shape}"


def _tensor_plan(s: dict) -> Iterator[tuple[str, str, tuple[int, int]]]:
    """(name, kind, (rows, cols)) in file order; kind "q4" (matrix) or "norm" (F32 vector, rows = 1)."""
    e, hd, ff = s["n_embd"], s["head_dim"], s["n_ff"]
    yield "token_embd.weight", "q4", (s["n_vocab"], e)
    yield "output_norm.weight", "norm", (1, e)
    yield "output.weight", "q4", (s["n_vocab"], e)
    for il in range(s["n_layer"]):
        p = f"blk.{il}."
        yield p + "attn_norm.weight", "norm", (1, e)
        yield p + "attn_q.weight", "q4", (s["n_head"] * hd, e)
        yield p + "attn_k.weight", "q4", (s["n_head_kv"] * hd, e)
        yield p + "attn_v.weight", "q4", (s["n_head_kv"] * hd, e)
        yield p + "attn_output.weight", "q4", (e, s["n_head"] * hd)
        yield p + "ffn_norm.weight", "norm", (1, e)
        yield p + "ffn_gate.weight", "q4", (ff, e)
        yield p + "ffn_up.weight", "q4", (ff, e)
        yield p + "ffn_down.weight", "q4", (e, ff)


def _q4_nbytes(rows: int, cols: int) -> int:
    return rows * (cols // Q4_0_BLOCK) * Q4_0_BYTES


def random_q4_0(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Random Q4_0 data of a (rows, cols) matrix as bytes, shape (rows, cols / 32 * 18)."""
    if cols % Q4_0_BLOCK:
        raise ValueError(f"Q4_0 rows must be a multiple of {Q4_0_BLOCK}, got {cols}")
    n_blocks = rows * (cols // Q4_0_BLOCK)
    blocks = np.frombuffer(rng.bytes(n_blocks * Q4_0_BYTES), dtype=np.uint8).reshape(n_blocks, Q4_0_BYTES).copy()
    d = 1.0 / (4.6 * np.sqrt(cols))
    scales = (d * rng.uniform(0.75, 1.25, n_blocks)).astype(np.float16)  # positive, so no sign bias
    blocks[:, :2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, (cols // Q4_0_BLOCK) * Q4_0_BYTES)


def write_model(path, shape: str = "8b", seed: int = 0) -> pathlib.Path:
    """Writes the model to `path` (through path + ".part", renamed at the end); returns the path."""
    import gguf

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    s = SHAPES[shape]
    path = pathlib.Path(path)
    part = path.with_name(path.name + ".part")
    rng = np.random.default_rng(seed)
    q4 = gguf.GGMLQuantizationType.Q4_0
    w = gguf.GGUFWriter(str(part), "llama")
    w.add_name(model_name(shape))
    w.add_context_length(int(s["n_ctx_train"]))
    w.add_embedding_length(s["n_embd"])
    w.add_block_count(s["n_layer"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_key_length(s["head_dim"])
    w.add_value_length(s["head_dim"])
    w.add_rope_dimension_count(s["head_dim"])
    w.add_rope_freq_base(s["rope_base"])
    w.add_layer_norm_rms_eps(s["norm_eps"])
    w.add_vocab_size(s["n_vocab"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    add_minimal_vocab(w, s["n_vocab"])
    plan = list(_tensor_plan(s))
    for name, kind, (rows, cols) in plan:  # infos first, so the data can stream afterwards
        if kind == "q4":
            nbytes = _q4_nbytes(rows, cols)
            w.add_tensor_info(name, (rows, nbytes // rows), np.dtype(np.uint8), nbytes, raw_dtype=q4)
        else:
            w.add_tensor_info(name, (cols,), np.dtype(np.float32), cols * 4)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for _name, kind, (rows, cols) in plan:
            if kind == "q4":
                data = random_q4_0(rng, rows, cols)
            else:
                data = (1.0 + 0.02 * rng.standard_normal(cols)).astype(np.float32)
            w.write_tensor_data(data)
            del data
        w.close()
    except BaseException:
        w.close()
        part.unlink(missing_ok=True)
        raise
    os.replace(part, path)
    return path


def file_shape(path) -> str | None:
    """The shape name a file of this module was written with; None for any other file."""
    import gguf

    try:
        r = gguf.GGUFReader(str(path))
        field = r.get_field("general.name")
        name = field.contents() if field is not None else None
    except Exception:  # not a (complete) GGUF file
        return None
    if not isinstance(name, str) or not name.startswith(FORMAT_TAG + " shape="):
        return None
    return name[len(FORMAT_TAG) + len(" shape="):]


def ensure_model(path, shape: str = "8b", seed: int = 0) -> tuple[pathlib.Path, bool]:
    """The model at `path`, written unless a file of the same shape is there; (path, reused)."""
    if os.path.isfile(path) and file_shape(path) == shape:
        return pathlib.Path(path), True
    return write_model(path, shape, seed), False
