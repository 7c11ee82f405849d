"""Context shift: ggml_rerope_kv_remove and Model(context_shift=True).

The cache holds raw keys, so removing rows and moving the later ones down is the whole shift: a
moved row's position is its new index. On a one-layer model a cached row depends on its token only
(K and V are projections of the token's embedding), so after a shift the next logits must equal a
fresh prefill of the kept tokens; bound: max abs diff < 1e-4 with an F32 model and F32 KV (the two
runs differ only in float summation order). With more layers the kept rows still carry what the
dropped tokens contributed (as in llama.cpp's shift), so there the tests check the move itself:
removing a tail equals truncating, and two removes equal one."""

from __future__ import annotations

import numpy as np
import pytest

from ggml_rerope import chat
from ggml_rerope._internals import KV_F32, Runtime
from ggml_rerope.errors import ContextFullError, InvalidArgumentError
from ggml_rerope.model import Model
from ggml_rerope.schemes import WINDOW_NONE

ATOL = 1e-4
SCHEMES = {
    "plain-rope": dict(window=WINDOW_NONE, logn_train_len=0),
    "rerope-w8": dict(window=8, logn_train_len=0),  # window far smaller than the context
    "dual-chunk-12-8": dict(window=12, far_mode=3, chunk_len=8, logn_train_len=0),  # chunks move with the shift
}


@pytest.fixture(scope="module")
def one_layer(synthetic_model):
    return synthetic_model("llama", "F32", seed=11, n_layer=1)


def logits_after(path, scheme, prefix, nxt, n_ctx):
    with Runtime(path, n_ctx=n_ctx, kv_type=KV_F32) as rt:
        rt.set_scheme(**scheme)
        rt.eval(prefix)
        return rt.eval(nxt)


@pytest.mark.parametrize("scheme", SCHEMES, ids=list(SCHEMES))
@pytest.mark.parametrize("n_past,p0,p1", [(40, 4, 20), (700, 4, 100)], ids=["small", "moves-several-chunks"])
def test_shift_equals_fresh_prefill_of_kept_tokens(one_layer, scheme, n_past, p0, p1):
    rng = np.random.default_rng(n_past)
    tokens = rng.integers(3, 384, n_past)
    nxt = rng.integers(3, 384, 1)
    with Runtime(one_layer, n_ctx=n_past + 4, kv_type=KV_F32) as rt:
        rt.set_scheme(**SCHEMES[scheme])
        rt.eval(tokens)
        unshifted = logits_after(one_layer, SCHEMES[scheme], tokens, nxt, n_past + 4)
        rt.ctx.kv_remove(p0, p1)
        assert rt.n_past == n_past - (p1 - p0)
        shifted = rt.eval(nxt)
    kept = np.concatenate([tokens[:p0], tokens[p1:]])
    fresh = logits_after(one_layer, SCHEMES[scheme], kept, nxt, n_past + 4)
    d = np.abs(shifted - fresh).max()
    assert d < ATOL, d
    # The dropped tokens mattered: without the shift the logits are far from the fresh ones.
    assert np.abs(unshifted - fresh).max() > 100 * ATOL


def two_layer_logits(path, tokens, nxt, edits):
    with Runtime(path, n_ctx=len(tokens) + 4, kv_type=KV_F32) as rt:
        rt.eval(tokens)
        for kind, *a in edits:
            rt.ctx.kv_remove(*a) if kind == "remove" else rt.truncate(*a)
        return rt.n_past, rt.eval(nxt)


def test_remove_tail_equals_truncate_and_removes_compose(synthetic_model):
    path = synthetic_model("qwen3", "F32", seed=12)  # two layers
    rng = np.random.default_rng(3)
    tokens, nxt = rng.integers(3, 384, 50), rng.integers(3, 384, 1)
    n_a, tail_removed = two_layer_logits(path, tokens, nxt, [("remove", 30, 50)])
    n_b, truncated = two_layer_logits(path, tokens, nxt, [("truncate", 30)])
    assert n_a == n_b == 30 and np.array_equal(tail_removed, truncated)
    n_a, twice = two_layer_logits(path, tokens, nxt, [("remove", 4, 10), ("remove", 4, 8)])
    n_b, once = two_layer_logits(path, tokens, nxt, [("remove", 4, 14)])
    assert n_a == n_b == 40 and np.array_equal(twice, once)
    n_a, nothing = two_layer_logits(path, tokens, nxt, [("remove", 7, 7)])
    n_b, plain = two_layer_logits(path, tokens, nxt, [])
    assert n_a == n_b == 50 and np.array_equal(nothing, plain)


@pytest.mark.parametrize("p0,p1", [(-1, 3), (5, 4), (0, 11), (11, 11)])
def test_kv_remove_bad_arguments(one_layer, p0, p1):
    with Runtime(one_layer, n_ctx=16) as rt:
        rt.eval(np.arange(3, 13))
        with pytest.raises(InvalidArgumentError, match="n_past"):
            rt.ctx.kv_remove(p0, p1)
        assert rt.n_past == 10


# -- Model ----------------------------------------------------------------------------------------

TEXT = (
    "Well, Prince, so Genoa and Lucca are now just family estates of the Buonapartes. But I warn you, "
    "if you don't tell me that this means war, if you still try to defend the infamies and horrors "
    "perpetrated by that Antichrist, I really believe he is Antichrist, I will have nothing more to do "
    "with you and you are no longer my friend."
)


@pytest.fixture(scope="module")
def shifting():
    with Model(n_ctx=48, n_batch=16, seed=0, context_shift=True, n_keep=5) as m:
        yield m


def test_model_eval_past_n_ctx_follows_llama_cpp_rule(shifting):
    tokens = shifting.tokenize(TEXT)
    assert len(tokens) > 60
    shifting.reset()
    expect: list[int] = []
    for t in tokens:
        if len(expect) + 1 > 48:  # llama.cpp: keep n_keep, discard half of the rest
            n_discard = (len(expect) - 5) // 2
            del expect[5 : 5 + n_discard]
        shifting.eval([t])
        expect.append(t)
    assert shifting._tokens == expect and shifting.n_past == len(expect) <= 48


def test_model_generates_past_n_ctx(shifting):
    prompt = shifting.tokenize(TEXT)[:30]
    text = "".join(shifting.generate(prompt, max_tokens=60, temperature=0.8, seed=1, stop=None))
    assert shifting.last_timings.completion_tokens == 60, shifting.last_timings  # 30 + 60 > n_ctx = 48
    assert text and shifting.n_past <= 48 and shifting.n_past == len(shifting._tokens)
    assert shifting._tokens[:5] == prompt[:5]


def test_model_long_prompt_is_cut_with_shift_and_refused_without(shifting):
    long_prompt = shifting.tokenize(TEXT)
    text = "".join(shifting.generate(long_prompt, max_tokens=4, temperature=0))
    assert shifting._tokens[:5] == long_prompt[:5] and text
    with Model(n_ctx=48, seed=0) as plain:
        assert not plain.context_shift
        with pytest.raises(ContextFullError):
            list(plain.generate(long_prompt, max_tokens=4))
        plain.eval(long_prompt[:48])
        with pytest.raises(ContextFullError):
            plain.eval(long_prompt[48:49])
        assert plain.n_past == 48


def test_model_context_shift_arguments():
    with pytest.raises(TypeError, match="context_shift"):
        Model(context_shift="yes")
    with pytest.raises(ValueError, match="n_keep"):
        Model(n_keep=-1)


def test_chat_cli_context_shift_flags():
    args = chat.build_parser().parse_args(["--context-shift", "--keep", "7", "-c", "64"])
    assert args.context_shift and args.keep == 7
    off = chat.build_parser().parse_args([])
    assert not off.context_shift and off.keep is None
    with chat._load(args) as m:
        assert m.context_shift and m.n_keep == 7
    args = chat.build_parser().parse_args(["--context-shift", "-c", "64", "-s", "You are terse."])
    with chat._load(args) as m:
        chat.Chat(m, args, None)
        system = m.tokenizer.chat_tokens([{"role": "system", "content": "You are terse."}],
                                         add_generation_prompt=False)
        assert m.n_keep == len(system) > 0
