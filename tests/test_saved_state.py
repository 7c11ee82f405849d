"""Saved state (ggml_rerope_state_get/_set, Model.save_state / load_state and the state file, the chat's
--prompt-cache) on synthetic models, and the chat on the default model.

A loaded state continues exactly as the saving context would: the same rows, the same next-token
computation, so logits are compared bit for bit. The cache holds raw (unrotated) keys, so it is
valid under every scheme; but a layer's keys are computed from the previous layers' attention,
which does depend on the scheme: only a one-layer model's cache equals a fresh prefill under
another scheme (layer 0 reads embeddings alone). For deeper models, loading and switching
equals switching the live context, the README's claim."""

import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from ggml_rerope import ModelLoadError
from ggml_rerope._internals import KV_F32, Runtime
from ggml_rerope.errors import InvalidArgumentError
from ggml_rerope.model import Model

N_CTX = 256
# n_ctx_train 64: the rerope window is 32, so a 150-token prefix reaches far past it
TRAIN = dict(n_ctx_train=64)


def tokens(n, seed=0, n_vocab=384):
    return np.random.default_rng(seed).integers(0, n_vocab, n).tolist()


def model(path, **kw):
    return Model(path, n_ctx=N_CTX, n_batch=64, n_threads=2, **kw)


@pytest.fixture(scope="module")
def llama(synthetic_model):
    return synthetic_model("llama", "F32", **TRAIN)


def saved(path, prefix, **kw):
    with model(path, **kw) as m:
        m.eval(prefix)
        return m.save_state()


def test_load_into_fresh_model_gives_identical_logits(llama, tmp_path):
    prefix, nxt = tokens(150), tokens(1, seed=1)
    with model(llama) as m:
        m.eval(prefix)
        state = m.save_state()
        m.save_state_file(tmp_path / "s.bin")
        want = m.eval(nxt)
    assert state.tokens == prefix
    for load in (lambda m: m.load_state(state), lambda m: m.load_state_file(tmp_path / "s.bin")):
        with model(llama) as fresh:
            load(fresh)
            assert fresh.n_past == len(prefix) and fresh.tokens == prefix
            np.testing.assert_array_equal(fresh.eval(nxt), want)


def test_prefill_after_load_reuses_the_prefix(llama):
    prefix = tokens(150)
    state = saved(llama, prefix)
    with model(llama) as fresh:
        fresh.load_state(state)
        fresh.prefill(prefix + tokens(5, seed=2))
        assert fresh.last_timings.reused_tokens == len(prefix)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_one_layer_cache_saved_under_rerope_equals_fresh_yarn_prefill(synthetic_model, arch):
    path = synthetic_model(arch, "F32", n_layer=1, **TRAIN)
    prefix, nxt = tokens(150), tokens(1, seed=1)
    state = saved(path, prefix, rope_scaling="rerope")
    with model(path, rope_scaling="rerope") as m:
        m.load_state(state)
        m.set_rope_scaling("yarn", rope_options={"scale": 4.0})
        got = m.eval(nxt)
    with model(path, rope_scaling="yarn", rope_options={"scale": 4.0}) as ref:
        ref.eval(prefix)
        want = ref.eval(nxt)
    with model(path, rope_scaling="rerope") as rr:
        rr.eval(prefix)
        other = rr.eval(nxt)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert np.abs(other - want).max() > 1e-2 * np.abs(want).max()  # the schemes do differ here


def test_deep_cache_loaded_and_switched_equals_the_live_switch(llama):
    prefix, nxt = tokens(150), tokens(1, seed=1)
    state = saved(llama, prefix)
    with model(llama) as live:
        live.eval(prefix)
        live.set_rope_scaling("yarn", rope_options={"scale": 4.0})
        want = live.eval(nxt)
    with model(llama) as m:
        m.load_state(state)
        m.set_rope_scaling("yarn", rope_options={"scale": 4.0})
        np.testing.assert_array_equal(m.eval(nxt), want)


def assert_unchanged(m, before_tokens, nxt, before_logits):
    assert m.tokens == before_tokens
    np.testing.assert_array_equal(m.eval(nxt), before_logits)


def holding(path, n=40, **kw):
    """A model holding n tokens, and what its next token's logits are."""
    m = model(path, **kw)
    m.eval(tokens(n, seed=3))
    probe = tokens(1, seed=4)
    with model(path, **kw) as twin:
        twin.eval(tokens(n, seed=3))
        logits = twin.eval(probe)
    return m, probe, logits


@pytest.mark.parametrize("other, word", [(dict(n_layer=3), "n_layer"), (dict(n_head_kv=4), "n_head_kv"),
                                         (dict(rope_base=50000.0), "model info")])
def test_another_models_state_is_refused_and_nothing_changes(synthetic_model, llama, tmp_path, other, word):
    state = saved(synthetic_model("llama", "F32", **TRAIN, **other), tokens(30))
    m, probe, logits = holding(llama)
    with m:
        before = m.tokens
        with pytest.raises(InvalidArgumentError, match=word):
            m.load_state(state)
        assert_unchanged(m, before, probe, logits)


def test_c_api_refuses_another_shape_and_keeps_the_context(synthetic_model, llama):
    with Runtime(synthetic_model("llama", "F32", n_layer=3, **TRAIN), n_ctx=N_CTX) as a:
        a.eval(tokens(30))
        raw = a.ctx.state_get()
    with Runtime(llama, n_ctx=N_CTX) as b:
        b.eval(tokens(20))
        with pytest.raises(InvalidArgumentError, match="n_layer = 3, this model has 2"):
            b.ctx.state_set(raw)
        assert b.n_past == 20


def test_c_api_refuses_truncated_corrupt_and_too_long_states(llama):
    with Runtime(llama, n_ctx=N_CTX) as a:
        a.eval(tokens(100))
        raw = a.ctx.state_get()
        assert len(raw) == a.ctx.state_size() and len(raw) > 100 * a.ctx.kv_bytes_per_token
    with Runtime(llama, n_ctx=N_CTX) as b:
        b.eval(tokens(10))
        with pytest.raises(ModelLoadError, match="truncated"):
            b.ctx.state_set(raw[:-1])
        with pytest.raises(ModelLoadError, match="trailing"):
            b.ctx.state_set(raw + b"\0")
        with pytest.raises(ModelLoadError, match="truncated"):
            b.ctx.state_set(raw[:20])  # part of the header
        with pytest.raises(ModelLoadError, match="magic"):
            b.ctx.state_set(b"X" + raw[1:])
        assert b.n_past == 10
    with Runtime(llama, n_ctx=64) as c:
        with pytest.raises(InvalidArgumentError, match="holds 100 tokens, this context's n_ctx is 64"):
            c.ctx.state_set(raw)
        assert c.n_past == 0


def test_different_kv_type_is_refused(llama):
    state = saved(llama, tokens(30), kv_type="f32")
    m, probe, logits = holding(llama)
    with m:
        with pytest.raises(InvalidArgumentError, match="f32 KV cache"):
            m.load_state(state)
        assert_unchanged(m, tokens(40, seed=3), probe, logits)
    with Runtime(llama, n_ctx=N_CTX, kv_type=KV_F32) as a:
        a.eval(tokens(30))
        raw = a.ctx.state_get()
    with Runtime(llama, n_ctx=N_CTX) as b:
        with pytest.raises(InvalidArgumentError, match=r"f32/f32 \(K/V\) cache, this context's is f16/f16"):
            b.ctx.state_set(raw)
        assert b.n_past == 0


def test_state_longer_than_n_ctx_is_refused(llama):
    state = saved(llama, tokens(150))
    with Model(llama, n_ctx=100, n_threads=2) as m:
        with pytest.raises(InvalidArgumentError, match="150 tokens"):
            m.load_state(state)
        assert m.n_past == 0


def test_tokens_that_do_not_match_the_rows_are_refused(llama):
    state = saved(llama, tokens(30))
    state.tokens = state.tokens[:-1]
    with model(llama) as m:
        with pytest.raises(InvalidArgumentError, match="do not hold its 29 tokens"):
            m.load_state(state)
        assert m.n_past == 0


@pytest.mark.parametrize("damage", ["flip_kv_byte", "flip_token", "truncate", "append", "magic", "version", "empty"])
def test_damaged_file_is_refused_and_nothing_changes(llama, tmp_path, damage):
    path = tmp_path / "s.bin"
    with model(llama) as m:
        m.eval(tokens(30))
        m.save_state_file(path)
    data = bytearray(path.read_bytes())
    if damage == "flip_kv_byte":
        data[len(data) // 2] ^= 0x10
    elif damage == "flip_token":
        (meta_len,) = struct.unpack_from("<I", data, 12)  # after the magic and the version
        data[32 + meta_len] ^= 1  # the first token's low byte
    elif damage == "truncate":
        del data[-100:]
    elif damage == "append":
        data += b"\0"
    elif damage == "magic":
        data[0] ^= 0xFF
    elif damage == "empty":
        data = bytearray()
    else:
        data[8] = 9
    path.write_bytes(bytes(data))
    m, probe, logits = holding(llama)
    with m:
        before = m.tokens
        with pytest.raises(ModelLoadError):
            m.load_state_file(path)
        assert_unchanged(m, before, probe, logits)


def test_missing_file_is_a_model_load_error(llama, tmp_path):
    with model(llama) as m:
        with pytest.raises(ModelLoadError, match="cannot read"):
            m.load_state_file(tmp_path / "none.bin")


def run_chat(*args):
    return subprocess.run([sys.executable, "-m", "ggml_rerope.chat", *args], input="", capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))


@pytest.mark.usefixtures("default_model_file")
def test_chat_prompt_cache_reuses_the_document_on_the_second_run(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("The secret word is PINEAPPLE. " * 40 + "Remember it.")
    cache = tmp_path / "doc.cache"
    common = ("--file", str(doc), "--prompt-cache", str(cache), "--prompt", "What is the secret word?",
              "--temp", "0", "-n", "8", "-c", "1024")
    first = run_chat(*common)
    assert first.returncode == 0, first.stderr
    saved_n = re.search(r"\[prompt cache: saved (\d+) tokens", first.stderr)
    assert saved_n and cache.exists(), first.stderr
    second = run_chat(*common)
    assert second.returncode == 0, second.stderr
    loaded = re.search(r"\[prompt cache: loaded (\d+) tokens", second.stderr)
    assert loaded and loaded.group(1) == saved_n.group(1), second.stderr
    reused = re.search(r"prompt: (\d+) new tokens.*?(\d+) reused", second.stderr)
    assert reused and int(reused.group(2)) >= int(loaded.group(1)) and int(reused.group(1)) < 40, second.stderr
    assert first.stdout == second.stdout  # greedy: the same answer from the cache as from a prefill

    other = tmp_path / "other.txt"
    other.write_text("A different document entirely. " * 30)
    third = run_chat("--file", str(other), "--prompt-cache", str(cache), "--prompt", "Summarize.", "--temp", "0",
                     "-n", "4", "-c", "1024")
    assert third.returncode == 0, third.stderr
    assert "[prompt cache: saved" in third.stderr and "does not match" in third.stderr, third.stderr


def _mutants(raw, rng, n, header_bytes=64):
    """Bit flips, byte runs and interesting integers, mostly in the header, and truncations."""
    interesting = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1)
    for _ in range(n):
        b = bytearray(raw)
        kind = rng.integers(4)
        pos = int(rng.integers(min(header_bytes, len(b)) if rng.random() < 0.8 else len(b)))
        if kind == 0:
            b[pos] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            b[pos : pos + 8] = bytes([int(rng.integers(256))]) * 8
        elif kind == 2:
            width = int(rng.choice([4, 8]))
            values = [v for v in interesting if v < 2 ** (8 * width)]
            value = values[int(rng.integers(len(values)))]
            b[pos : pos + width] = value.to_bytes(width, "little")
        else:
            del b[int(rng.integers(len(b))) :]
        yield bytes(b)


def test_fuzzed_states_are_refused_cleanly_or_load(llama, tmp_path):
    """The C state parser (ggml_rerope_state_set) and the state file reader on mutated inputs: each
    either loads or raises a typed error leaving the context as it was; none crashes."""
    from ggml_rerope.errors import ReropeError

    rng = np.random.default_rng(7)
    with Runtime(llama, n_ctx=N_CTX) as a:
        a.eval(tokens(12))
        raw = a.ctx.state_get()
    refused = 0
    with Runtime(llama, n_ctx=N_CTX) as b:
        b.eval(tokens(5))
        for blob in _mutants(raw, rng, 400):
            try:
                b.ctx.state_set(blob)
            except ReropeError:
                refused += 1
                assert b.n_past == 5
            else:  # a mutation the header does not describe (row bytes, an unused field) loads
                assert b.n_past == 12
                b.ctx.truncate(0)
                b.eval(tokens(5))
    assert refused >= 100  # the header mutations reached the checks (213 with this seed)

    path = tmp_path / "s.state"
    with model(llama) as m:
        m.eval(tokens(12))
        m.save_state_file(path)
    good = path.read_bytes()
    with model(llama) as m:
        m.eval(tokens(5))
        before = m.tokens
        for blob in _mutants(good, rng, 200):
            path.write_bytes(blob)
            with pytest.raises((ModelLoadError, InvalidArgumentError)):
                m.load_state_file(path)
            assert m.tokens == before


def test_read_file_state_is_a_value_of_its_own(default_model_file, tmp_path):
    """read_file's state outlives the file and pickles (as llama-cpp-python's LlamaState does)."""
    import pickle

    from ggml_rerope.saved_state import read_file

    with Model(default_model_file, n_ctx=64, n_threads=2) as m:
        m.eval(list(range(10, 30)))
        m.save_state_file(tmp_path / "s.state")
        want = m.save_state()
    state = read_file(tmp_path / "s.state")
    (tmp_path / "s.state").unlink()
    assert isinstance(state.kv, bytes) and state.kv == want.kv
    assert pickle.loads(pickle.dumps(state)).kv == want.kv
