"""Quantized KV caches in the runtime (type_k / type_v): ggml's block formats written by ggml's
set_rows, read by the operator tile by tile. Checked: every type runs and stays near the f32 cache
by its precision; the graph-pieces path (the GPU's) reads the same bytes as the in-graph node; bytes
per token are llama.cpp's; on SmolLM2 a q8_0 cache is as close to llama.cpp's q8_0 cache as
llama.cpp's q8_0 is to its own f16; saved states and context shifts keep their types; the errors."""

import numpy as np
import pytest

from ggml_rerope import Model
from ggml_rerope._internals import KV_TYPES, Runtime, RuntimeContext, RuntimeModel
from ggml_rerope.errors import InvalidArgumentError, UnsupportedError
from ggml_rerope.kv_quant import row_bytes
from logit_checks import compare, llama_cpp_logits, text_tokens

# relative mean |dlogit| vs the f32 cache on a 2-layer random model (gaussian K and V, the worst case
# for 32-element blocks): by the type's resolution, each bit fewer about doubling it (measured q8_0
# ~0.5 %, q5 ~7 %, q4 ~14 %)
BOUND = {"f16": 2e-3, "bf16": 1e-2, "q8_0": 1.5e-2, "q5_0": 0.11, "q5_1": 0.11, "q4_0": 0.2, "q4_1": 0.2,
         "iq4_nl": 0.2}


def logits(path, tokens, type_k, type_v, n_batch=32, **kw):
    with Runtime(path, n_ctx=len(tokens) + 4, n_batch=n_batch, type_k=KV_TYPES[type_k],
                 type_v=KV_TYPES[type_v]) as rt:
        rt.set_scheme(window=16, logn_train_len=0, **kw)  # past the window too
        prefill = rt.eval(tokens[:-3], all_logits=True)
        decode = [rt.eval(tokens[i:i + 1]).reshape(1, -1) for i in range(len(tokens) - 3, len(tokens))]
        return np.concatenate([prefill] + decode)


@pytest.fixture(scope="module")
def model_and_tokens(synthetic_model):
    path = synthetic_model("llama", "F32", n_ctx_train=64)
    return path, np.random.default_rng(0).integers(0, 384, 77)


@pytest.mark.parametrize("type_k,type_v", [(t, t) for t in BOUND] + [("q8_0", "f16"), ("f16", "q4_0")])
def test_every_cache_type_is_near_f32_by_its_precision(model_and_tokens, type_k, type_v):
    path, tokens = model_and_tokens
    ref = logits(path, tokens, "f32", "f32")
    got = logits(path, tokens, type_k, type_v)
    rel = np.abs(got - ref).mean() / ref.std()
    assert rel < max(BOUND[type_k], BOUND[type_v]), rel
    if (type_k, type_v) != ("f16", "f16"):
        assert rel > 0  # a quantized cache that changes nothing was not quantized


@pytest.mark.parametrize("type_k,type_v", [("q8_0", "q8_0"), ("q4_0", "f16")])
def test_graph_pieces_path_reads_the_same_bytes(model_and_tokens, monkeypatch, type_k, type_v):
    path, tokens = model_and_tokens
    node = logits(path, tokens, type_k, type_v)
    monkeypatch.setenv("GGML_REROPE_RUNTIME_ATTN", "outside")
    outside = logits(path, tokens, type_k, type_v)
    np.testing.assert_allclose(outside, node, rtol=0, atol=1e-4 * np.abs(node).max())


def test_bytes_per_token_are_llama_cpps(default_model_file):
    from ggml_rerope.llama_cpp_engine import LlamaCppEngine

    m = RuntimeModel(default_model_file)
    try:
        i = m.info
        for type_k, type_v in (("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q8_0"), ("f32", "bf16")):
            ctx = RuntimeContext(m, n_ctx=64, n_threads=1, type_k=KV_TYPES[type_k], type_v=KV_TYPES[type_v])
            want = i.n_layer * i.n_head_kv * (row_bytes(type_k, i.head_dim) + row_bytes(type_v, i.head_dim))
            assert ctx.kv_bytes_per_token == want
            ctx.close()
            with LlamaCppEngine(default_model_file, 64, n_threads=1, type_k=KV_TYPES[type_k],
                                type_v=KV_TYPES[type_v]) as lc:
                assert lc.kv_bytes_per_token() == want
    finally:
        m.close()


@pytest.mark.needs_shared_text
def test_q8_0_cache_as_close_to_llama_cpp_as_its_own(default_model_file, shared_text):
    """llama.cpp stores rotated keys, we store raw ones: both quantize to q8_0, with different
    roundings. Ours vs llama.cpp's (both q8_0) must be no further apart than llama.cpp's q8_0 is from
    llama.cpp's f16, within the noise bound of the f16 differential test."""
    tokens = text_tokens(default_model_file, shared_text, 400)
    with Model(default_model_file, n_ctx=len(tokens) + 8, n_threads=2, rope_scaling="none", type_k="q8_0",
               type_v="q8_0") as m:
        ours = m.logits(tokens)
    ref = llama_cpp_logits(default_model_file, tokens, flash_attn=True, kv_type=KV_TYPES["q8_0"])
    alt = llama_cpp_logits(default_model_file, tokens, flash_attn=True, kv_type=KV_TYPES["f16"])
    c, floor = compare(ours, ref), compare(alt, ref)
    print(f"ours q8_0 vs llama.cpp q8_0: mean|d| {c['mean_abs']:.4f} argmax {c['argmax']:.3f}; "
          f"llama.cpp f16 vs q8_0: mean|d| {floor['mean_abs']:.4f} argmax {floor['argmax']:.3f}")
    assert c["mean_abs"] <= 1.5 * floor["mean_abs"] + 2e-3 * ref.std()
    assert c["argmax"] >= floor["argmax"] - 0.03
    confident = c["margin"] >= 1.0
    assert c["agree"][confident].mean() >= 0.99


def test_saved_state_and_shift_keep_the_types(default_model_file, tmp_path):
    kw = dict(n_ctx=96, n_threads=2, type_k="q8_0", type_v="q4_0")
    with Model(default_model_file, **kw) as a:
        a.eval(list(range(10, 70)))
        a.save_state_file(tmp_path / "s.state")
        want = a.eval([5])
        a._live().kv_remove(4, 20)  # rows of block types move as whole rows
        assert a._live().n_past == 61 - 16
    with Model(default_model_file, **kw) as b:
        b.load_state_file(tmp_path / "s.state")
        np.testing.assert_array_equal(b.eval([5]), want)
    with Model(default_model_file, n_ctx=96, n_threads=2, type_k="q8_0", type_v="q8_0") as c:
        with pytest.raises(InvalidArgumentError, match="saved state has a q8_0/q4_0 KV cache, this model's is q8_0"):
            c.load_state_file(tmp_path / "s.state")


def test_errors_name_the_type(synthetic_model, monkeypatch):
    odd = synthetic_model("llama", "F32", head_dim=48, n_embd=192)
    with pytest.raises(UnsupportedError, match="type_k q8_0 needs head_dim % 32 == 0, this model's is 48"):
        Model(odd, n_ctx=32, type_k="q8_0")
    with pytest.raises(ValueError, match="type_v must be one of f32, f16, bf16, q8_0"):
        Model(odd, n_ctx=32, type_v="q3_k")
    m = Model(odd, n_ctx=32, type_k="bf16", type_v="f32")  # element types take any head_dim
    m.close()
    monkeypatch.setenv("GGML_REROPE_RUNTIME_ATTN", "ggml")
    with pytest.raises(UnsupportedError, match="the ggml cross-check path reads f16 or f32 caches only"):
        Model(synthetic_model("llama", "F32"), n_ctx=32, kv_type="q8_0")


def _loss(logits, tokens):
    z = logits[:-1] - logits[:-1].max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(tokens) - 1), tokens[1:]].mean())


@pytest.mark.needs_shared_text
def test_hadamard_rotation_brings_q4_0_closer_to_f16(default_model_file, shared_text, monkeypatch):
    """SmolLM2's keys have outlier dims: rotated before q4_0 (the default, as llama.cpp), the logits move
    less from the f16 cache's, and the loss rises less, than with the rotation turned off."""
    tokens = text_tokens(default_model_file, shared_text, 600)

    def run(**kw):
        with Model(default_model_file, n_ctx=len(tokens) + 8, n_threads=2, rope_scaling="none", **kw) as m:
            return m.logits(tokens)

    ref = run(type_k="f16", type_v="f16")
    rotated = run(type_k="q4_0", type_v="q4_0")
    monkeypatch.setenv("GGML_REROPE_ATTN_ROT_DISABLE", "1")
    plain = run(type_k="q4_0", type_v="q4_0")
    d_rot, d_plain = compare(rotated, ref)["mean_abs"], compare(plain, ref)["mean_abs"]
    loss = {name: _loss(x, tokens) - _loss(ref, tokens) for name, x in (("rotated", rotated), ("plain", plain))}
    print(f"mean |dlogit| vs f16: rotated {d_rot:.4f}, plain {d_plain:.4f}; loss change {loss}")
    assert d_rot < 0.8 * d_plain
    assert loss["rotated"] < loss["plain"]


def test_state_of_rotated_rows_needs_a_rotating_context(synthetic_model, tmp_path, monkeypatch):
    path = synthetic_model("llama", "F32")  # head_dim 64: q8_0 rows are rotated
    with Model(path, n_ctx=64, n_threads=1, kv_type="q8_0") as a:
        a.eval(list(range(1, 20)))
        a.save_state_file(tmp_path / "r.state")
    monkeypatch.setenv("GGML_REROPE_ATTN_ROT_DISABLE", "1")
    with Model(path, n_ctx=64, n_threads=1, kv_type="q8_0") as b:
        with pytest.raises(InvalidArgumentError, match="Hadamard-rotated by blocks of 64/64 .*this context's by 0/0"):
            b.load_state_file(tmp_path / "r.state")
