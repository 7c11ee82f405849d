"""ggml_rerope.Llama as a drop-in for llama_cpp.Llama: one script written against llama-cpp-python's
API runs on both classes (default model, temperature 0, n_ctx 256 so every distance is inside the
trained context and rope_scaling="none" is plain RoPE), and both return the same shapes and texts.

Texts: the two runtimes are not the same float program (fused attention with raw f16 keys vs
llama.cpp's rotated keys; see tests/test_runtime_vs_llama_cpp.py), and on this 30-layer Q4_1 model
the logits differ by ~0.1-0.2 at a position, as much as llama.cpp's own flash-attention on vs off.
Greedy decoding therefore follows the same path until a near-tie. Measured on 14 prompts x 24
tokens: ours matched llama.cpp (FA off) 7 times, and llama.cpp FA on matched llama.cpp FA off only
6 times; every divergence inspected had a top-2 margin of 0.02-0.19 logit, and there llama.cpp
with FA on chose what we chose. So a text may differ only where `_assert_same_or_tie` shows a
tie: at the first differing token the reference's top-2 margin is < TIE_MARGIN, each engine's
choice is the other's runner-up, and the tokens before it are equal.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from ggml_rerope import Llama, llama_args  # noqa: E402

pytestmark = pytest.mark.needs_default_model

N_CTX = 256
TIE_MARGIN = 0.5  # logits; llama.cpp FA on/off differ by ~0.17 on average on this model
PROMPTS = ["The capital of France is", "def fibonacci(n):", "List three colors:"]
CHATS = [[{"role": "user", "content": "What is the capital of France? Answer in one word."}]]
SHORT = 8


def _open(cls, path, **kw):
    # one thread for prompts too: llama.cpp defaults n_threads_batch to every core, which spins on a busy machine
    return cls(model_path=str(path), n_ctx=N_CTX, n_threads=1, n_threads_batch=1, verbose=False, logits_all=True,
               **kw)


@pytest.fixture(scope="module")
def engines(default_model_file):
    ref = _open(llama_cpp.Llama, default_model_file)
    ours = _open(Llama, default_model_file, rope_scaling="none")
    yield ref, ours
    ours.close()
    ref.close()


def script(llm) -> dict:
    """A user's script for llama-cpp-python's API (nothing of ggml_rerope in it)."""
    out = {}
    out["completions"] = [llm(p, max_tokens=SHORT, temperature=0) for p in PROMPTS]
    out["chats"] = [llm.create_chat_completion(m, max_tokens=SHORT, temperature=0) for m in CHATS]
    out["stream"] = list(llm.create_completion(PROMPTS[0], max_tokens=SHORT, temperature=0, stream=True))
    out["chat_stream"] = list(llm.create_chat_completion(CHATS[0], max_tokens=SHORT, temperature=0, stream=True))
    out["stop"] = llm(PROMPTS[0], max_tokens=SHORT, temperature=0, stop=["."])
    out["logprobs"] = llm(PROMPTS[0], max_tokens=3, temperature=0, logprobs=2)
    out["tokens"] = llm.tokenize(b"Hello world <|im_start|>", add_bos=True, special=True)
    out["plain_tokens"] = llm.tokenize(b"Hello world <|im_start|>", add_bos=False, special=False)
    out["text"] = llm.detokenize(out["tokens"])
    out["n_ctx"] = llm.n_ctx()
    return out


@pytest.fixture(scope="module")
def results(engines):
    ref, ours = engines
    return script(ref), script(ours)


def shape(x):
    """The structure of a result: dict keys and value kinds, numbers of any width alike."""
    if isinstance(x, dict):
        return {k: shape(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [shape(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return "bool"
    if isinstance(x, (int, np.integer)):
        return "int"
    if isinstance(x, (float, np.floating)):
        return "number"
    return type(x).__name__


def _chunk_text(chunk) -> str:
    c = chunk["choices"][0]
    return c["text"] if "text" in c else c["delta"].get("content", "")


# -- shapes ----------------------------------------------------------------------------------


def test_result_dicts_have_llama_cpp_pythons_shape(results):
    ref, ours = results
    for key in ("completions", "chats", "stop", "logprobs"):
        assert shape(ours[key]) == shape(ref[key]), key
    for r, o in zip(ref["completions"] + [ref["stop"]], ours["completions"] + [ours["stop"]]):
        assert o["id"].startswith("cmpl-") and r["id"].startswith("cmpl-")
        assert o["object"] == r["object"] == "text_completion"
        assert o["model"] == r["model"]
        assert o["choices"][0]["finish_reason"] in ("stop", "length")
    for r, o in zip(ref["chats"], ours["chats"]):
        assert o["id"].startswith("chatcmpl-") and o["object"] == r["object"] == "chat.completion"
        assert o["choices"][0]["message"]["role"] == "assistant"
    u = ours["completions"][0]["usage"]
    assert u == ref["completions"][0]["usage"]  # same prompt tokens, max_tokens reached by both
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_stream_chunks_have_llama_cpp_pythons_shape(results):
    ref, ours = results
    for key in ("stream", "chat_stream"):
        r, o = ref[key], ours[key]
        assert shape(o[-1]) == shape(r[-1]), key  # the closing chunk: empty text / delta, finish_reason
        assert o[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        assert all(c["choices"][0]["finish_reason"] is None for c in o[:-1])
        body_shapes = {str(shape(c)) for c in r[1:-1]} if key == "chat_stream" else {str(shape(c)) for c in r[:-1]}
        ours_body = o[1:-1] if key == "chat_stream" else o[:-1]
        assert ours_body and all(str(shape(c)) in body_shapes for c in ours_body), key
        assert len({c["id"] for c in o}) == 1
    assert ours["chat_stream"][0]["choices"][0]["delta"] == {"role": "assistant"}
    assert ours["stream"][0]["id"].startswith("cmpl-") and ours["chat_stream"][0]["id"].startswith("chatcmpl-")


def test_tokens_and_context_match(results):
    ref, ours = results
    assert ours["tokens"] == ref["tokens"]
    assert ours["plain_tokens"] == ref["plain_tokens"]
    assert ours["text"] == ref["text"] and isinstance(ours["text"], bytes)
    assert ours["n_ctx"] == ref["n_ctx"] == N_CTX


# -- texts -----------------------------------------------------------------------------------


def _greedy(llm, tokens, n):
    """Up to n greedy tokens through llama-cpp-python's low-level generate() (both classes have it)."""
    eos = llm.token_eos()
    out = []
    for t in llm.generate(tokens, temp=0):
        if len(out) >= n or t == eos:
            break
        out.append(t)
    return out


def _ref_logits(ref, tokens):
    ref.reset()
    ref.eval(tokens)
    return np.array(ref.scores[len(tokens) - 1], dtype=np.float64)


def _assert_same_or_tie(ref, ours, prompt_tokens, ref_text, our_text, n):
    if ref_text == our_text:
        return True
    a, b = _greedy(ref, prompt_tokens, n), _greedy(ours, prompt_tokens, n)
    d = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    assert d is not None, f"texts differ ({ref_text!r} vs {our_text!r}) but the greedy tokens agree: {a} {b}"
    ctx = list(prompt_tokens) + a[:d]
    lr = _ref_logits(ref, ctx)
    lo = ours.rerope_model.logits(ctx)[-1].astype(np.float64)
    r1, r2 = np.argsort(-lr)[:2]
    o1, o2 = np.argsort(-lo)[:2]
    margin = lr[r1] - lr[r2]
    assert margin < TIE_MARGIN and (o1, o2) == (r2, r1), (
        f"not a tie at token {d}: reference top-2 {r1, r2} margin {margin:.3f}, ours {o1, o2} "
        f"(texts {ref_text!r} vs {our_text!r})")
    return False


def test_greedy_texts_match_or_differ_only_at_a_tie(engines, results):
    ref_llm, ours_llm = engines
    ref, ours = results
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    same = 0
    for p, r, o in zip(PROMPTS, ref["completions"], ours["completions"]):
        toks = ref_llm.tokenize(p.encode(), add_bos=True, special=True)
        same += _assert_same_or_tie(ref_llm, ours_llm, toks, r["choices"][0]["text"], o["choices"][0]["text"], SHORT)
    fmt = Jinja2ChatFormatter(template=ref_llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>",
                              bos_token="<|im_start|>")
    for m, r, o in zip(CHATS, ref["chats"], ours["chats"]):
        toks = ref_llm.tokenize(fmt(messages=m).prompt.encode(), add_bos=False, special=True)
        same += _assert_same_or_tie(ref_llm, ours_llm, toks, r["choices"][0]["message"]["content"],
                                    o["choices"][0]["message"]["content"], SHORT)
    # the streams and the stop cut follow the first completion / chat
    assert "".join(_chunk_text(c) for c in ours["stream"]) == ours["completions"][0]["choices"][0]["text"]
    assert "".join(_chunk_text(c) for c in ours["chat_stream"]) == ours["chats"][0]["choices"][0]["message"]["content"]
    full = ours["completions"][0]["choices"][0]["text"]
    if "." in full:
        assert ours["stop"]["choices"][0]["text"] == full[: full.index(".")]
        assert ours["stop"]["choices"][0]["finish_reason"] == "stop"
    assert same >= 1, "no exact match at all: more than near-ties differ"


def test_logprobs_agree_with_llama_cpp(results):
    ref, ours = results
    r, o = ref["logprobs"]["choices"][0]["logprobs"], ours["logprobs"]["choices"][0]["logprobs"]
    if ref["logprobs"]["choices"][0]["text"] != ours["logprobs"]["choices"][0]["text"]:
        pytest.skip("greedy paths differ (a near-tie, checked by the text test)")
    assert o["tokens"] == r["tokens"] and o["text_offset"] == r["text_offset"]
    # log-probabilities of the same tokens, within the two runtimes' logit noise
    assert np.allclose(o["token_logprobs"], r["token_logprobs"], atol=0.1)
    for ro, oo in zip(r["top_logprobs"], o["top_logprobs"]):
        assert len(oo) == len(ro) and list(oo)[0] == list(ro)[0]


# -- stop sequences and streaming ------------------------------------------------------------


def test_stop_sequence_across_tokens_in_a_stream(engines):
    _, ours = engines
    full = ours(PROMPTS[0], max_tokens=SHORT, temperature=0)["choices"][0]["text"]
    toks = ours.tokenize(PROMPTS[0].encode())
    pieces = [ours.detokenize([t]).decode() for t in _greedy(ours, toks, SHORT)]
    # a stop string made of the end of one token and the start of the next
    i = next(i for i in range(1, len(pieces)) if len(pieces[i - 1]) >= 2 and len(pieces[i]) >= 2)
    stop = pieces[i - 1][-2:] + pieces[i][:2]
    cut = full[: full.index(stop)]
    chunks = list(ours(PROMPTS[0], max_tokens=SHORT, temperature=0, stop=[stop], stream=True))
    texts = [_chunk_text(c) for c in chunks]
    assert "".join(texts) == cut
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    shown = ""
    for t in texts:  # never a part of the stop string that is taken back later
        shown += t
        assert cut.startswith(shown)
    whole = ours(PROMPTS[0], max_tokens=SHORT, temperature=0, stop=stop)["choices"][0]
    assert whole["text"] == cut and whole["finish_reason"] == "stop"


def test_streamed_logprobs_cover_the_text(engines):
    _, ours = engines
    whole = ours(PROMPTS[1], max_tokens=6, temperature=0, logprobs=1)["choices"][0]
    chunks = list(ours(PROMPTS[1], max_tokens=6, temperature=0, logprobs=1, stream=True))
    lps = [c["choices"][0]["logprobs"] for c in chunks[:-1]]
    assert [t for lp in lps for t in lp["tokens"]] == whole["logprobs"]["tokens"]
    assert np.allclose([x for lp in lps for x in lp["token_logprobs"]], whole["logprobs"]["token_logprobs"])
    assert "".join(_chunk_text(c) for c in chunks) == whole["text"]


def test_max_tokens_and_finish_reasons(engines):
    _, ours = engines
    out = ours(PROMPTS[0], max_tokens=3, temperature=0)
    assert out["usage"]["completion_tokens"] == 3 and out["choices"][0]["finish_reason"] == "length"
    chat = ours.create_chat_completion(CHATS[0], temperature=0, max_tokens=64)
    assert chat["choices"][0]["finish_reason"] == "stop"  # the model ends its short answer itself
    # max_tokens None / <= 0: until the context is full (llama-cpp-python's rule)
    with Llama(ours.model_path, n_ctx=24, n_threads=1, verbose=False) as small:
        room = 24 - len(small.tokenize(PROMPTS[0].encode()))
        for max_tokens in (None, 0, -1, 1000):
            out = small(PROMPTS[0], max_tokens=max_tokens, temperature=0)
            n, why = out["usage"]["completion_tokens"], out["choices"][0]["finish_reason"]
            assert (n == room and why == "length") or (n < room and why == "stop"), (max_tokens, n, why)


def test_sampling_arguments_and_seeds(engines):
    _, ours = engines
    kw = dict(max_tokens=6, temperature=1.0, top_k=20, top_p=0.9, min_p=0.02, repeat_penalty=1.1,
              frequency_penalty=0.5, presence_penalty=0.5)
    a = ours(PROMPTS[2], seed=11, **kw)["choices"][0]["text"]
    b = ours(PROMPTS[2], seed=11, **kw)["choices"][0]["text"]
    assert a == b
    texts = {ours(PROMPTS[2], seed=s, **kw)["choices"][0]["text"] for s in range(6)}
    assert len(texts) > 1
    banned = ours.tokenize(b" Red", add_bos=False)[0]
    for _ in range(2):
        out = ours(PROMPTS[2], max_tokens=4, temperature=0, logit_bias={banned: -100.0}, logprobs=5)
        assert " Red" not in out["choices"][0]["logprobs"]["tokens"]


# -- errors and arguments --------------------------------------------------------------------


def test_errors_match_llama_cpp_python(engines):
    ref, ours = engines
    long_prompt = " ".join(["word"] * (N_CTX + 10))
    for llm in (ref, ours):
        with pytest.raises(ValueError, match=r"Requested tokens \(\d+\) exceed context window of 256"):
            llm(long_prompt, max_tokens=4)
    with pytest.raises(ValueError, match="logits_all"):
        Llama(model_path=ours.model_path, n_ctx=64, n_threads=1, verbose=False)(PROMPTS[0], max_tokens=2, logprobs=1)
    with pytest.raises(ValueError, match="grammar"):
        ours(PROMPTS[0], max_tokens=2, grammar=object())
    with pytest.raises(ValueError, match="mirostat"):
        ours(PROMPTS[0], max_tokens=2, mirostat_mode=2)
    with pytest.raises(TypeError):
        ours.tokenize("not bytes")


def test_constructor_arguments(default_model_file):
    names = set(inspect.signature(llama_cpp.Llama.__init__).parameters) - {"self", "kwargs"}
    groups = [llama_args.APPLIED, set(llama_args.NO_EFFECT), set(llama_args.UNSUPPORTED)]
    assert set().union(*groups) == names  # every llama-cpp-python keyword has a stated fate
    assert sum(len(g) for g in groups) == len(names)
    for name, default in {**llama_args.NO_EFFECT, **llama_args.UNSUPPORTED}.items():
        assert inspect.signature(llama_cpp.Llama.__init__).parameters[name].default == default, name
    path = str(default_model_file)
    with pytest.raises(TypeError, match="n_ctxx"):
        Llama(path, n_ctxx=64)
    with pytest.raises(ValueError, match="lora_path"):
        Llama(path, n_ctx=64, lora_path="adapter.gguf")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with Llama(path, n_ctx=0, n_batch=1024, flash_attn=True, use_mmap=True, verbose=False) as llm:
            assert llm.n_ctx() == llm.n_ctx_train == 8192  # n_ctx 0 = trained context
            assert llm.n_batch == 1024
    assert [str(w.message) for w in seen if "flash_attn" in str(w.message)]
    assert not [w for w in seen if "use_mmap" in str(w.message)]  # the default value: no noise
    with Llama(path, n_ctx=64, rope_scaling_type=1, rope_freq_scale=0.5, verbose=False) as llm:
        assert llm.scheme.name == "linear"
    with Llama(path, n_ctx=64, verbose=False) as llm:
        assert llm.scheme.name == "rerope" and llm.chat_format == "chat_template.default"
    with Llama(path, n_ctx=64, type_k=0, type_v=0, verbose=False) as llm:
        assert llm.rerope_model.kv_type == "f32"
    with pytest.raises(ValueError):
        Llama(path, n_ctx=64, rope_scaling="linear", rope_scaling_type=2)
