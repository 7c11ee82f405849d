"""ggml_rerope_model_get_rope_info / _get_rope_factors: the GGUF's rotary scaling keys and factor
tensors as the C loader read them, on synthetic models with and without them."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFValueType as T

import gguf_factory
from ggml_rerope._binding import ffi, lib
from ggml_rerope._internals import check
from ggml_rerope.errors import ReropeError

IO, INVALID = 5, 1
SHAPE = dict(n_embd=64, n_head=2, n_head_kv=1, head_dim=32, n_ff=96, n_layer=1, n_vocab=272)
HALF = SHAPE["head_dim"] // 2
FREQS, LONG, SHORT = 0, 1, 2

YARN = {
    "llama.rope.scaling.type": ("yarn", T.STRING),
    "llama.rope.scaling.factor": (4.0, T.FLOAT32),
    "llama.rope.scaling.original_context_length": (8192, T.UINT32),
    "llama.rope.scaling.attn_factor": (0.75, T.FLOAT32),
    "llama.rope.scaling.yarn_ext_factor": (1.0, T.FLOAT32),
    "llama.rope.scaling.yarn_attn_factor": (1.25, T.FLOAT64),
    "llama.rope.scaling.yarn_beta_fast": (32.0, T.FLOAT32),
    "llama.rope.scaling.yarn_beta_slow": (2.0, T.FLOAT32),
    "llama.rope.scaling.yarn_log_multiplier": (0.1, T.FLOAT32),
}


class Loaded:
    def __init__(self, path):
        mp = ffi.new("ggml_rerope_model **")
        check(lib.ggml_rerope_model_load(str(path).encode(), ffi.NULL, mp))
        self.model = mp[0]

    def info(self):
        out = ffi.new("ggml_rerope_rope_info *")
        check(lib.ggml_rerope_model_get_rope_info(self.model, out))
        return out

    def factors(self, which, n):
        out = np.zeros(max(n, 1), np.float32)
        check(lib.ggml_rerope_model_get_rope_factors(self.model, which, ffi.cast("float *", out.ctypes.data), n))
        return out[:n]

    def close(self):
        lib.ggml_rerope_model_free(self.model)


@pytest.fixture
def load(tmp_path):
    opened = []

    def _load(**kw):
        path = gguf_factory.write_model(tmp_path / f"m{len(opened)}.gguf", "llama", "F32", **SHAPE, **kw)
        m = Loaded(path)
        opened.append(m)
        return m

    yield _load
    for m in opened:
        m.close()


def test_absent_keys_and_tensors_read_as_zero(load):
    r = load().info()
    assert ffi.string(r.scaling_type) == b"" and r.n_factors == HALF
    for field in ("scaling_factor", "scaling_orig_ctx", "scaling_attn_factor", "yarn_ext_factor", "yarn_attn_factor",
                  "yarn_beta_fast", "yarn_beta_slow", "yarn_log_multiplier"):
        assert getattr(r, field) == 0 and getattr(r, "has_" + field) == 0, field
    assert (r.has_rope_freqs, r.has_factors_long, r.has_factors_short) == (0, 0, 0)


def test_yarn_keys_are_read(load):
    r = load(metadata=YARN).info()
    assert ffi.string(r.scaling_type) == b"yarn"
    expect = dict(scaling_factor=4.0, scaling_orig_ctx=8192, scaling_attn_factor=0.75, yarn_ext_factor=1.0,
                  yarn_attn_factor=1.25, yarn_beta_fast=32.0, yarn_beta_slow=2.0, yarn_log_multiplier=0.1)
    for field, v in expect.items():
        assert getattr(r, "has_" + field) == 1, field
        assert getattr(r, field) == pytest.approx(v, rel=1e-6), field


def test_scale_linear_is_the_factor_when_scaling_factor_is_absent(load):
    r = load(metadata={"llama.rope.scale_linear": (8.0, T.FLOAT32)}).info()
    assert r.has_scaling_factor == 1 and r.scaling_factor == 8.0
    both = {"llama.rope.scale_linear": (8.0, T.FLOAT32), "llama.rope.scaling.factor": (2.0, T.FLOAT32)}
    r = load(metadata=both).info()
    assert r.scaling_factor == 2.0


def test_factor_tensors_are_returned_as_stored(load):
    freqs = np.geomspace(1.0, 8.0, HALF).astype(np.float32)
    long = np.linspace(1.0, 5.0, HALF).astype(np.float32)
    short = np.linspace(1.0, 1.5, HALF).astype(np.float16)  # F16 is converted
    m = load(extra_tensors={"rope_freqs.weight": freqs, "rope_factors_long.weight": long,
                            "rope_factors_short.weight": short})
    r = m.info()
    assert (r.has_rope_freqs, r.has_factors_long, r.has_factors_short) == (1, 1, 1) and r.n_factors == HALF
    np.testing.assert_array_equal(m.factors(FREQS, HALF), freqs)
    np.testing.assert_array_equal(m.factors(LONG, HALF), long)
    np.testing.assert_array_equal(m.factors(SHORT, HALF), short.astype(np.float32))


def test_factor_requests_that_are_wrong(load):
    m = load(extra_tensors={"rope_factors_long.weight": np.ones(HALF, np.float32)})
    for which, n, words in [(LONG, HALF - 1, "n must be n_factors"), (SHORT, HALF, "no tensor rope_factors_short"),
                            (FREQS, HALF, "no tensor rope_freqs"), (3, HALF, "which must be")]:
        with pytest.raises(ReropeError) as e:
            m.factors(which, n)
        assert e.value.status == INVALID and words in e.value.message, e.value.message
    assert lib.ggml_rerope_model_get_rope_info(ffi.NULL, ffi.new("ggml_rerope_rope_info *")) == INVALID
    assert lib.ggml_rerope_model_get_rope_factors(m.model, LONG, ffi.NULL, HALF) == INVALID


def test_a_rope_key_of_the_wrong_type(load):
    with pytest.raises(ReropeError) as e:
        load(metadata={"llama.rope.scaling.original_context_length": (8192.0, T.FLOAT32)})
    assert e.value.status == IO and "original_context_length has type float32, expected an integer" in e.value.message
