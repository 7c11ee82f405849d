"""The passkey tool: prompt construction (size, depth, tokenization), scoring on oracle engines,
and end to end on the default model at a few hundred tokens."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from ggml_rerope.passkey import PromptBuilder, filler_sentences, first_number, make_keys, passkey


@pytest.fixture(scope="module")
def runtime():
    from ggml_rerope.evaluators import open_evaluator

    ev = open_evaluator(None, n_ctx=320, scheme="rerope", n_batch=128)
    yield ev
    ev.close()


@pytest.mark.parametrize("filler", ["standard", "shared text"])
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_prompt_size_depth_and_tokenization(runtime, request, filler, depth):
    path = None if filler == "standard" else str(request.getfixturevalue("shared_text"))
    b = PromptBuilder(runtime.tokenize, filler_sentences(path))
    pr = b.build(300, "12345", depth)
    assert 250 <= len(pr.tokens) <= 300
    text = runtime.detokenize(pr.tokens)
    assert text.count("12345") == 2 and text.rstrip().endswith("The pass key is")
    # pieces tokenized apart join exactly as the whole text tokenizes
    assert runtime.tokenize(text, add_bos=True) == pr.tokens
    # the needle sits after `depth` of the filler
    filler_total = len(pr.tokens) - len(b.head) - len(b.question) - len(runtime.tokenize(
        " The pass key is 12345. Remember it. 12345 is the pass key.", add_bos=False))
    before = pr.needle_token - len(b.head)
    longest = max(len(b.unit_tokens(i)) for i in range(100))  # covers every unit of 300 tokens
    assert abs(before - depth * filler_total) <= longest / 2 + 1  # the nearest unit boundary


def test_prompts_of_one_budget_share_the_filler_prefix(runtime):
    b = PromptBuilder(runtime.tokenize, filler_sentences())
    a, c = b.build(300, "11111", 0.5), b.build(300, "22222", 0.5)
    assert a.tokens[:a.needle_token] == c.tokens[:c.needle_token] and a.needle_token == c.needle_token


def test_first_number_and_keys():
    assert first_number(" 73914. Remember") == "73914"
    assert first_number(" is 7 3 9") == "7"
    assert first_number(" unknown") is None
    keys = make_keys(3, 20)
    assert keys == make_keys(3, 20) and keys != make_keys(4, 20)
    assert all(re.fullmatch(r"[1-9]\d{4}", k) for k in keys)


class OracleEvaluator:
    """Answers by reading the key out of the prompt (or a wrong one): checks the scoring."""

    def __init__(self, runtime, wrong=False):
        self.rt, self.wrong = runtime, wrong
        self.n_ctx, self.n_vocab = runtime.n_ctx, runtime.n_vocab
        self.tokenize, self.detokenize = runtime.tokenize, runtime.detokenize
        self.answer = []
        self.n_past = 0

    def reset(self):
        self.n_past = 0

    def is_eog(self, t):
        return False

    def _next(self):
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        if self.answer:
            logits[self.answer.pop(0)] = 1.0
        return logits

    def prefill(self, tokens):
        key = re.search(r"pass key is (\d+)", self.detokenize(tokens)).group(1)
        if self.wrong:
            key = str(int(key) + 1)
        self.answer = self.tokenize(" " + key + ".", add_bos=False)
        self.n_past = len(tokens)
        return self._next()

    def eval(self, tokens, logits_all=False):
        self.n_past += len(tokens)
        return self._next()


@pytest.mark.parametrize("wrong", [False, True])
def test_scoring_on_an_oracle(runtime, wrong):
    res = passkey(OracleEvaluator(runtime, wrong), 300, trials=3, depths=[0, 0.5, 1], show_progress=False)
    want = 0.0 if wrong else 1.0
    assert res.accuracy == want
    assert [d["accuracy"] for d in res.per_depth] == [want] * 3
    assert len(res.samples) == 9 and all(s["prompt_tokens"] <= 300 - 8 for s in res.samples)


def test_argument_errors(runtime):
    with pytest.raises(ValueError, match="depths"):
        passkey(runtime, 300, depths=[1.5], show_progress=False)
    with pytest.raises(ValueError, match="trials"):
        passkey(runtime, 300, trials=0, show_progress=False)
    with pytest.raises(ValueError, match="context"):
        passkey(runtime, 1000, show_progress=False)


def test_default_model_finds_the_key_inside_its_trained_context(runtime):
    """320 tokens, far inside SmolLM2's 8192: the test format must work there at every depth,
    or longer-context results would measure the format, not the positions."""
    res = passkey(runtime, 320, trials=2, depths=[0, 0.5, 1], seed=1, show_progress=False)
    assert res.accuracy == 1.0, res.samples
    assert all(s["answer"].strip().startswith(s["key"]) for s in res.samples)


def test_cli_json():
    out = subprocess.run([sys.executable, "-m", "ggml_rerope.passkey", "--ctx", "256", "--trials", "1",
                          "--depths", "0,1", "--json", "--threads", "2", "--rope-scaling", "leaky-rerope",
                          "--rerope-window", "64", "--rerope-leaky-k", "4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["n_ctx"] == 256 and d["trials"] == 1 and [x["depth"] for x in d["per_depth"]] == [0.0, 1.0]
    assert "k=4" in d["scheme"] and 0.0 <= d["accuracy"] <= 1.0
    assert "ETA" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--ctx", "10"], "context too small for the passkey prompt"),
    (["--ctx", "0"], "n_ctx must be >= 1, got 0"),
    (["--ctx", "200", "--trials", "0"], "trials must be >= 1, got 0"),
    (["--ctx", "200", "--filler", "/nonexistent/filler.txt"], "/nonexistent/filler.txt"),
])
def test_cli_bad_input_is_one_error_line(args, message):
    out = subprocess.run([sys.executable, "-m", "ggml_rerope.passkey", *args, "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr  # no traceback
