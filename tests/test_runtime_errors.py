"""Bad input to the runtime's C API: the right status, a message naming the problem, no crash
(every case runs in this test process, which must survive them all)."""

from __future__ import annotations

import numpy as np
import pytest

import gguf_factory
from ggml_rerope import errors
from ggml_rerope._binding import ffi, lib
from ggml_rerope._internals import INT32_MAX, KV_F16, KV_F32, Runtime
from ggml_rerope.errors import ReropeError

OK, INVALID, UNSUPPORTED, NO_MEMORY, IO, CONTEXT_FULL = 0, 1, 2, 3, 5, 6


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = gguf_factory.write_model(d / "good.gguf", "qwen2", "Q8_0")
    return dict(
        good=good,
        missing=d / "does_not_exist.gguf",
        not_gguf=gguf_factory.write_not_gguf(d / "notes.gguf"),
        truncated=gguf_factory.write_truncated(d / "truncated.gguf", good),
        arch=gguf_factory.write_unsupported_arch(d / "neox.gguf", "gptneox"),
        type=gguf_factory.write_unsupported_type(d / "i32.gguf"),
        empty=(d / "empty.gguf"),
    )


def load_error(path) -> ReropeError:
    with pytest.raises(ReropeError) as e:
        Runtime(path)
    return e.value


def test_missing_file(files):
    e = load_error(files["missing"])
    assert e.status == IO and "does_not_exist.gguf" in e.message and "No such file" in e.message


def test_not_a_gguf(files):
    e = load_error(files["not_gguf"])
    assert e.status == IO and "notes.gguf" in e.message and "not a GGUF" in e.message


def test_empty_file(files):
    files["empty"].write_bytes(b"")
    e = load_error(files["empty"])
    assert e.status == IO and "not a GGUF" in e.message


def test_truncated(files):
    e = load_error(files["truncated"])
    assert e.status == IO and "truncated.gguf" in e.message and "truncated" in e.message
    assert "file has" in e.message  # names the tensor whose data runs past the end


def test_truncated_header(files, tmp_path):
    p = tmp_path / "header_cut.gguf"
    p.write_bytes(files["good"].read_bytes()[:200])  # inside the key/value section
    e = load_error(p)
    assert e.status == IO and "header_cut.gguf" in e.message


def test_unsupported_architecture(files):
    e = load_error(files["arch"])
    assert e.status == UNSUPPORTED and "gptneox" in e.message and "architecture" in e.message


def test_unsupported_tensor_type(files):
    e = load_error(files["type"])
    assert e.status == UNSUPPORTED and "blk.0.attn_q.weight" in e.message and "i32" in e.message


def test_status_maps_to_typed_python_errors(files):
    e = load_error(files["arch"])
    with pytest.raises(errors.UnsupportedError):
        errors.raise_for_status(e.status, e.message)
    e = load_error(files["missing"])
    with pytest.raises(errors.ModelLoadError):
        errors.raise_for_status(e.status, e.message)


@pytest.mark.parametrize("n_ctx", [0, -5])
def test_n_ctx_not_positive(files, n_ctx):
    with pytest.raises(ReropeError) as e:
        Runtime(files["good"], n_ctx=n_ctx)
    assert e.value.status == INVALID and "n_ctx" in e.value.message


def test_n_ctx_too_large_for_memory(files):
    with pytest.raises(ReropeError) as e:
        Runtime(files["good"], n_ctx=INT32_MAX, kv_type=KV_F32)
    assert e.value.status == NO_MEMORY and "n_ctx" in e.value.message and "MiB" in e.value.message


def test_bad_context_params(files):
    for kw, word in [(dict(n_batch=0), "n_batch"), (dict(kv_type=5), "type_k = 5 is not a cache type")]:
        with pytest.raises(ReropeError) as e:
            Runtime(files["good"], **kw)
        assert e.value.status == INVALID and word in e.value.message


def test_prompt_longer_than_context(files):
    with Runtime(files["good"], n_ctx=64) as rt:
        toks = np.arange(3, 3 + 65)
        with pytest.raises(ReropeError) as e:
            rt.eval(toks)
        assert e.value.status == CONTEXT_FULL and "n_ctx = 64" in e.value.message
        assert rt.n_past == 0  # nothing was evaluated
        rt.eval(toks[:60])
        with pytest.raises(ReropeError) as e:
            rt.eval(toks[:5])  # 60 + 5 > 64
        assert e.value.status == CONTEXT_FULL and rt.n_past == 60
        rt.eval(toks[:4])  # exactly full is fine
        assert rt.n_past == 64


def test_token_out_of_vocabulary(files):
    with Runtime(files["good"], n_ctx=32) as rt:
        for bad in (-1, rt.n_vocab):
            with pytest.raises(ReropeError) as e:
                rt.eval([5, bad])
            assert e.value.status == INVALID and "tokens[1]" in e.value.message and "vocabulary" in e.value.message
        assert rt.n_past == 0


def test_bad_scheme_keeps_the_old_one(files):
    with Runtime(files["good"], n_ctx=32) as rt:
        for fields, word in [(dict(window=0), "window"), (dict(far_mode=9), "far_mode"),
                             (dict(logn_train_len=1), "logn"), (dict(rope_base=-1.0), "rope_base")]:
            with pytest.raises(ReropeError) as e:
                rt.set_scheme(**fields)
            assert e.value.status == INVALID and word in e.value.message
        rt.eval([5, 6, 7])  # still usable


def test_truncate_range(files):
    with Runtime(files["good"], n_ctx=32) as rt:
        rt.eval([5, 6, 7])
        for bad in (-1, 4):
            with pytest.raises(ReropeError) as e:
                rt.truncate(bad)
            assert e.value.status == INVALID and "n_keep" in e.value.message
        rt.truncate(0)
        assert rt.n_past == 0


def test_null_arguments_do_not_crash(files):
    out = ffi.new("ggml_rerope_model **")
    assert lib.ggml_rerope_model_load(ffi.NULL, ffi.NULL, out) == INVALID
    assert lib.ggml_rerope_model_load(str(files["good"]).encode(), ffi.NULL, ffi.NULL) == INVALID
    assert lib.ggml_rerope_context_new(ffi.NULL, ffi.NULL, ffi.new("ggml_rerope_context **")) == INVALID
    assert lib.ggml_rerope_eval(ffi.NULL, ffi.NULL, 1, ffi.NULL, 0) == INVALID
    assert lib.ggml_rerope_truncate(ffi.NULL, 0) == INVALID
    assert lib.ggml_rerope_model_get_info(ffi.NULL, ffi.new("ggml_rerope_model_info *")) == INVALID
    lib.ggml_rerope_model_free(ffi.NULL)
    lib.ggml_rerope_context_free(ffi.NULL)


def test_info_and_kv_bytes_match_llama_cpp_layout(files):
    s = gguf_factory.DEFAULT_SHAPE
    for kv_type, size in ((KV_F16, 2), (KV_F32, 4)):
        with Runtime(files["good"], n_ctx=16, kv_type=kv_type) as rt:
            i = rt.info
            assert ffi.string(i.architecture) == b"qwen2"
            assert (i.n_layer, i.n_head, i.n_head_kv, i.head_dim, i.n_vocab, i.n_ctx_train) == (
                s["n_layer"], s["n_head"], s["n_head_kv"], s["head_dim"], s["n_vocab"], 4096)
            assert i.rope_mode == 2  # NEOX
            # llama.cpp: 2 (K and V) * n_layer * n_head_kv * head_dim * sizeof(type), no second K copy
            assert rt.ctx.kv_bytes_per_token == 2 * s["n_layer"] * s["n_head_kv"] * s["head_dim"] * size
