"""Writes small GGUF models with random weights (and broken files) for the runtime tests.

    path = write_model(tmp_path / "m.gguf", arch="qwen2", wtype="Q8_0")

Architectures llama / qwen2 (Q/K/V bias) / qwen3 (per-head q/k RMS norm), grouped-query attention,
weight types F32, F16, Q8_0, Q4_0 (gguf.quants) and the K-quant Q4_K (gguf.quants cannot quantize
K-quants, so ggml's own ggml_quantize_chunk from the process's libggml-base does it).

The tokenizer is a minimal SentencePiece-style vocabulary (specials + the 256 byte tokens + filler
pieces, ggml_rerope/bench/gguf_vocab.py) so llama.cpp accepts the file; the tests feed token ids directly.
"""

from __future__ import annotations

import ctypes
import pathlib

import gguf
import numpy as np
from gguf.gguf_writer import GGUFValue

from ggml_rerope.bench.gguf_vocab import add_minimal_vocab

ARCHS = ("llama", "qwen2", "qwen3")
WEIGHT_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_K")

# Shapes: every row length is a multiple of 256 (the K-quant block), 4 query heads over 2 KV heads.
DEFAULT_SHAPE = dict(n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_ff=512, n_layer=2, n_vocab=384)


_ggml_base = None


def _ggml_quantize(x: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """Quantizes rows of x with ggml_quantize_chunk (the K-quants gguf.quants cannot make)."""
    global _ggml_base
    if _ggml_base is None:
        import llama_cpp  # its lib/ holds the libggml-base this process uses

        lib_dir = pathlib.Path(llama_cpp.__file__).resolve().parent.parent / "lib"
        cands = sorted(lib_dir.glob("libggml-base.so*")) + sorted(
            (pathlib.Path(llama_cpp.__file__).resolve().parent / "lib").glob("libggml-base.so*")
        )
        if not cands:
            raise RuntimeError(f"libggml-base not found near {llama_cpp.__file__}")
        _ggml_base = ctypes.CDLL(str(cands[0]))
        _ggml_base.ggml_quantize_chunk.restype = ctypes.c_size_t
        _ggml_base.ggml_quantize_chunk.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
            ctypes.c_void_p,
        ]
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    out = np.zeros((rows, n // block * type_size), dtype=np.uint8)
    written = _ggml_base.ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, rows, n, None)
    assert written == out.nbytes, (written, out.nbytes)
    return out


def _add_weight(w: gguf.GGUFWriter, name: str, x: np.ndarray, wtype: str) -> None:
    """x: float32 of shape (ne1, ne0) in numpy order."""
    if wtype == "F32":
        w.add_tensor(name, x.astype(np.float32))
    elif wtype == "F16":
        w.add_tensor(name, x.astype(np.float16))
    else:
        qt = gguf.GGMLQuantizationType[wtype]
        try:
            q = gguf.quants.quantize(x, qt)
        except NotImplementedError:
            q = _ggml_quantize(x, qt)
        w.add_tensor(name, q, raw_dtype=qt)


def write_model(
    path,
    arch: str = "llama",
    wtype: str = "F32",
    seed: int = 0,
    n_ctx_train: int = 4096,
    rope_base: float = 10000.0,
    tie_output: bool = False,
    rope_freqs: bool = False,
    tensor_type_override: dict | None = None,
    metadata: dict | None = None,
    extra_tensors: dict | None = None,
    drop_tensors=(),
    **shape,
) -> pathlib.Path:
    """Writes a random-weight model; returns its path.

    rope_freqs: write a rope_freqs.weight tensor (per-frequency divisors, as Llama 3 GGUFs carry).
    tensor_type_override: {tensor name: numpy array} written as given (e.g. an int32 array to make
    an unsupported tensor type).
    metadata: {key: None (the key is not written) | (value, gguf.GGUFValueType) | (list,
    GGUFValueType.ARRAY, element type)}, applied over the keys written here (so a key can lie
    about its value or its type). extra_tensors: {name: numpy array} added after the model's
    tensors. drop_tensors: names of tensors not written."""
    s = dict(DEFAULT_SHAPE, **shape)
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_kv, hd, n_ff, n_layer, n_vocab = (
        s["n_embd"], s["n_head"], s["n_head_kv"], s["head_dim"], s["n_ff"], s["n_layer"], s["n_vocab"])
    path = pathlib.Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    add_minimal_vocab(w, n_vocab)

    override = tensor_type_override or {}

    def mat(name, rows, cols, scale):
        if name in override:
            w.add_tensor(name, override[name])
            return
        _add_weight(w, name, (rng.standard_normal((rows, cols)) * scale).astype(np.float32), wtype)

    def vec(name, n, mean=1.0, spread=0.1):
        w.add_tensor(name, (mean + spread * rng.standard_normal(n)).astype(np.float32))

    # Scales chosen so activations stay O(1), attention is peaked (scores O(few)) and the logits
    # spread over several units: argmax ties are then rare and comparisons meaningful.
    mat("token_embd.weight", n_vocab, n_embd, 1.0)
    vec("output_norm.weight", n_embd)
    if not tie_output:
        mat("output.weight", n_vocab, n_embd, 3.0 / np.sqrt(n_embd))
    if rope_freqs:  # divisors from 1 (high frequencies) to 8 (low), like Llama 3's scaling
        w.add_tensor("rope_freqs.weight", np.geomspace(1.0, 8.0, hd // 2).astype(np.float32))
    for il in range(n_layer):
        p = f"blk.{il}."
        vec(p + "attn_norm.weight", n_embd)
        mat(p + "attn_q.weight", n_head * hd, n_embd, 2.0 / np.sqrt(n_embd))
        mat(p + "attn_k.weight", n_kv * hd, n_embd, 2.0 / np.sqrt(n_embd))
        mat(p + "attn_v.weight", n_kv * hd, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "attn_output.weight", n_embd, n_head * hd, 1.0 / np.sqrt(n_head * hd))
        if arch == "qwen2":
            vec(p + "attn_q.bias", n_head * hd, 0.0, 0.5)
            vec(p + "attn_k.bias", n_kv * hd, 0.0, 0.5)
            vec(p + "attn_v.bias", n_kv * hd, 0.0, 0.5)
        if arch == "qwen3":
            vec(p + "attn_q_norm.weight", hd, 1.0, 0.3)
            vec(p + "attn_k_norm.weight", hd, 1.0, 0.3)
        vec(p + "ffn_norm.weight", n_embd)
        mat(p + "ffn_gate.weight", n_ff, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "ffn_up.weight", n_ff, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "ffn_down.weight", n_embd, n_ff, 1.0 / np.sqrt(n_ff))
    for name, arr in (extra_tensors or {}).items():
        w.add_tensor(name, arr)
    for name in drop_tensors:
        del w.tensors[0][name]
    for key, spec in (metadata or {}).items():
        if spec is None:
            w.kv_data[0].pop(key, None)
        else:
            w.kv_data[0][key] = GGUFValue(spec[0], spec[1], spec[2] if len(spec) > 2 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---------------------------------------------------------------- broken files


def write_truncated(path, src) -> pathlib.Path:
    """A valid model cut in the middle of its tensor data."""
    data = pathlib.Path(src).read_bytes()
    path = pathlib.Path(path)
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def write_not_gguf(path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.write_text("this is a text file, not a GGUF model\n" * 10)
    return path


def write_unsupported_arch(path, arch: str = "gptneox") -> pathlib.Path:
    """A well-formed GGUF of an architecture the runtime does not run."""
    path = pathlib.Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((32, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_unsupported_type(path) -> pathlib.Path:
    """A llama model whose blk.0.attn_q.weight is I32 (no CPU matmul for it)."""
    s = DEFAULT_SHAPE
    bad = np.zeros((s["n_head"] * s["head_dim"], s["n_embd"]), np.int32)
    return write_model(path, "llama", "F32", tensor_type_override={"blk.0.attn_q.weight": bad})
