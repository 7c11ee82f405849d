"""Lying GGUFs the fuzzer's kinds of mutants make, each written on purpose: the loader refuses them
with ERR_IO (Python: ModelLoadError) and a message naming what is wrong, or runs them when they
are valid. Every case runs in this process, which an abort in the loader would end.

Found crashes kept here: a key of the wrong type (ggml's accessors abort), a one-layer model whose
prefill spans micro-batches (an unread graph input had no buffer), and a qwen3 file whose
block_count is below the layers its tensors describe."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFValueType as T

import gguf_factory
from ggml_rerope import errors
from ggml_rerope._internals import Runtime
from ggml_rerope.errors import ReropeError

IO = 5
TINY = dict(n_embd=64, n_head=2, n_head_kv=1, head_dim=32, n_ff=96, n_layer=2, n_vocab=272)


def load_error(path) -> ReropeError:
    with pytest.raises(ReropeError) as e:
        Runtime(path, n_ctx=16, n_threads=1)
    return e.value


def lying(tmp_path, arch="llama", wtype="F32", **kw):
    shape = dict(TINY, **kw.pop("shape", {}))
    return gguf_factory.write_model(tmp_path / "lie.gguf", arch, wtype, **shape, **kw)


@pytest.mark.parametrize(
    "key, spec, found, expected",
    [
        ("llama.attention.head_count", ("four", T.STRING), "string", "an integer"),
        ("llama.block_count", (2.0, T.FLOAT32), "float32", "an integer"),
        ("llama.context_length", ([4096, 4096], T.ARRAY, T.UINT32), "array of 2 uint32", "an integer"),
        ("llama.attention.head_count", (["a", "b"], T.ARRAY, T.STRING), "array of 2 string", "one integer per layer"),
        ("llama.rope.freq_base", (10000, T.UINT32), "uint32", "a float"),
        ("llama.attention.layer_norm_rms_epsilon", (True, T.BOOL), "bool", "a float"),
        ("general.architecture", (7, T.UINT32), "uint32", "a string"),
        ("tokenizer.ggml.tokens", (3, T.UINT32), "uint32", "an array of strings"),
        ("llama.rope.scaling.type", (1, T.INT32), "int32", "a string"),
        ("llama.rope.scaling.factor", ("4", T.STRING), "string", "a float"),
    ],
)
def test_wrong_type_is_a_clean_error_naming_key_and_types(tmp_path, key, spec, found, expected):
    e = load_error(lying(tmp_path, metadata={key: spec}))
    assert e.status == IO, e.message
    assert key in e.message and f"has type {found}" in e.message and expected in e.message, e.message
    with pytest.raises(errors.ModelLoadError):
        errors.raise_for_status(e.status, e.message)


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("llama.attention.head_count", (0, T.UINT32), "out of range"),
        ("llama.attention.head_count_kv", (3, T.UINT32), "out of range"),
        ("llama.embedding_length", (-64, T.INT32), "out of range"),
        ("llama.block_count", (2**40, T.UINT64), "out of range"),
        ("llama.block_count", (0, T.UINT32), "out of range"),
        ("llama.feed_forward_length", (2**31, T.UINT64), "out of range"),
        ("llama.rope.freq_base", (1e-45, T.FLOAT32), "out of range"),
        ("llama.rope.freq_base", (float("nan"), T.FLOAT32), "out of range"),
        ("llama.rope.freq_base", (1e300, T.FLOAT64), "out of range"),
        ("llama.attention.layer_norm_rms_epsilon", (0.0, T.FLOAT32), "out of range"),
        ("llama.attention.layer_norm_rms_epsilon", (float("inf"), T.FLOAT32), "out of range"),
        ("llama.rope.dimension_count", (31, T.UINT32), "even"),
        ("llama.rope.dimension_count", (34, T.UINT32), "out of range"),
        ("llama.attention.key_length", (512, T.UINT32), "limit"),
        ("llama.attention.head_count_kv", ([1, 2], T.ARRAY, T.UINT32), "differs between layers"),
        ("llama.attention.head_count_kv", ([1, 1, 1], T.ARRAY, T.UINT32), "one per layer (2)"),
        ("llama.vocab_size", (999, T.UINT32), "token_embd.weight has 272 rows"),
        ("llama.rope.scaling.factor", (-2.0, T.FLOAT32), "out of range"),
        ("llama.rope.scaling.original_context_length", (-1, T.INT32), "out of range"),
        ("llama.rope.scaling.type", ("x" * 40, T.STRING), "longer than 15"),
        ("llama.context_length", None, "missing"),
        ("general.architecture", None, "missing"),
    ],
)
def test_values_out_of_range_are_clean_errors(tmp_path, key, value, words):
    e = load_error(lying(tmp_path, metadata={key: value}))
    assert e.status in (IO, 2) and key.split(".")[-1] in e.message and words in e.message, e.message


def test_head_size_must_divide_without_key_length(tmp_path):
    e = load_error(lying(tmp_path, metadata={"llama.attention.key_length": None,
                                             "llama.attention.head_count": (3, T.UINT32)}))
    assert e.status == IO and "embedding_length 64 is not a multiple of head_count 3" in e.message, e.message


def test_kv_heads_must_divide_the_heads(tmp_path):
    e = load_error(lying(tmp_path, metadata={"llama.attention.head_count": (3, T.UINT32),
                                             "llama.attention.head_count_kv": (2, T.UINT32)}))
    assert e.status == IO and "head_count 3 is not a multiple of head_count_kv 2" in e.message, e.message


def test_tokenizer_size_must_match_the_embedding(tmp_path):
    tokens = ["t"] * (TINY["n_vocab"] + 1)
    e = load_error(lying(tmp_path, metadata={"tokenizer.ggml.tokens": (tokens, T.ARRAY, T.STRING)}))
    assert e.status == IO and "tokenizer.ggml.tokens has 273 tokens" in e.message, e.message


def test_block_count_below_the_layers_of_the_tensors(tmp_path):
    e = load_error(lying(tmp_path, "qwen3", "Q8_0", metadata={"qwen3.block_count": (1, T.UINT32)}))
    assert e.status == IO and "belongs to layer 1, but block_count is 1" in e.message, e.message


def test_block_count_above_the_layers_of_the_tensors(tmp_path):
    e = load_error(lying(tmp_path, metadata={"llama.block_count": (3, T.UINT32)}))
    assert e.status == IO and "blk.2." in e.message and "missing" in e.message, e.message


@pytest.mark.parametrize(
    "name, arr, words",
    [
        ("rope_freqs.weight", np.zeros(16, np.float32), "must be finite and > 0"),
        ("rope_freqs.weight", np.full(16, -1.0, np.float32), "must be finite and > 0"),
        ("rope_factors_long.weight", np.full(16, np.nan, np.float32), "must be finite and > 0"),
        ("rope_factors_short.weight", np.full(16, 1e-45, np.float32), "finite inverse"),
        ("rope_factors_long.weight", np.ones(15, np.float32), "expected 16 values"),
        ("rope_factors_long.weight", np.ones((2, 16), np.float32), "expected 16 values"),
        ("rope_freqs.weight", np.ones(16, np.int32), "expected F32"),
    ],
)
def test_bad_rope_factor_tensors(tmp_path, name, arr, words):
    e = load_error(lying(tmp_path, extra_tensors={name: arr}))
    assert e.status == IO and name in e.message and words in e.message, e.message


@pytest.mark.parametrize("name", ["blk.1.attn_q.weight", "output_norm.weight", "blk.0.ffn_down.weight"])
def test_missing_tensor(tmp_path, name):
    e = load_error(lying(tmp_path, drop_tensors=[name]))
    assert e.status == IO and f"'{name}' is missing" in e.message, e.message


def test_tensor_of_the_wrong_shape(tmp_path):
    bad = np.zeros((TINY["n_embd"], TINY["n_embd"] + 32), np.float32)
    e = load_error(lying(tmp_path, tensor_type_override={"blk.0.attn_q.weight": bad}))
    assert e.status == IO and "blk.0.attn_q.weight" in e.message and "shape" in e.message, e.message


def test_one_layer_model_prefills_across_micro_batches(tmp_path):
    path = lying(tmp_path, "qwen3", "Q8_0", shape=dict(n_layer=1))
    tokens = [5, 9, 200, 3, 77]
    whole = Runtime(path, n_ctx=16, n_batch=16, n_threads=1)
    split = Runtime(path, n_ctx=16, n_batch=2, n_threads=1)  # 2 + 2 + 1: the first batches only fill the cache
    try:
        a, b = whole.eval(tokens), split.eval(tokens)
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    finally:
        whole.close()
        split.close()
