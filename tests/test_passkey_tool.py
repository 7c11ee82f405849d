"""The passkey tool: prompt construction per format and filler (size, depth, tokenization), keys
that do not depend on how trials are split, scoring on oracle engines, and end to end on the
default model at a few hundred tokens."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from ggml_rerope.passkey import (
    FORMATS,
    PromptBuilder,
    filler_name,
    filler_sentences,
    first_number,
    make_keys,
    passkey,
    trial_keys,
)
from oracle_evaluator import OracleEvaluator


@pytest.fixture(scope="module")
def runtime():
    from ggml_rerope.evaluators import open_evaluator

    ev = open_evaluator(None, n_ctx=320, scheme="rerope", n_batch=128)
    yield ev
    ev.close()


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("filler", ["standard", "shared text"])
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_prompt_size_depth_and_tokenization(runtime, request, fmt, filler, depth):
    path = None if filler == "standard" else "text:" + str(request.getfixturevalue("shared_text"))
    b = PromptBuilder(runtime.tokenize, filler_sentences(path), fmt)
    key, word = trial_keys(fmt, 0, 0, 1)[0]
    pr = b.build(300, key, depth, word)
    assert 250 <= len(pr.tokens) <= 300
    text = runtime.detokenize(pr.tokens)
    assert text.count(key) == FORMATS[fmt].needle.count("{key}")
    assert text.rstrip().endswith(FORMATS[fmt].question.format(word=word).strip().splitlines()[-1])
    # pieces tokenized apart join exactly as the whole text tokenizes
    assert runtime.tokenize(text, add_bos=True) == pr.tokens
    # the needle sits after `depth` of the filler
    question, needle = b.question_tokens(word), b.needle_tokens(key, word)
    assert pr.tokens[pr.needle_token:pr.needle_token + len(needle)] == needle
    filler_total = len(pr.tokens) - len(b.head) - len(question) - len(needle)
    before = pr.needle_token - len(b.head)
    longest = max(len(b.unit_tokens(i)) for i in range(100))  # covers every unit of 300 tokens
    assert abs(before - depth * filler_total) <= longest / 2 + 1  # the nearest unit boundary


def test_formats_key_digits_words_and_split_trials():
    """Trial i's key is the same however the trials are split; landmark keeps make_keys' keys."""
    assert [k for k, _ in trial_keys("landmark", 3, 0, 6)] == make_keys(3, 6)
    for fmt in FORMATS:
        whole = trial_keys(fmt, 3, 0, 6)
        assert trial_keys(fmt, 3, 2, 4) == whole[2:]
        assert trial_keys(fmt, 4, 0, 6) != whole
        assert all(re.fullmatch(rf"[1-9]\d{{{FORMATS[fmt].digits - 1}}}", k) for k, _ in whole)
        if FORMATS[fmt].uses_word:
            assert all(re.fullmatch(r"[a-z]+-[a-z]+", w) for _, w in whole)
    assert [len(k) for k, _ in trial_keys("ruler", 0, 0, 1)] == [7]


def test_filler_specs(shared_text):
    assert filler_sentences("grass") == filler_sentences(None) and len(filler_sentences(None)) == 1
    assert filler_sentences(f"text:{shared_text}") == filler_sentences(str(shared_text))
    assert len(filler_sentences(str(shared_text))) > 1000
    assert (filler_name(None), filler_name("grass"), filler_name(f"text:{shared_text}")) == ("grass", "grass", "text")
    with pytest.raises(ValueError, match="word"):
        PromptBuilder(lambda t, b: [1] * len(t.split()), [" a b."], "ruler").build(100, "1234567", 0.5)


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


class KeyOracle(OracleEvaluator):
    """Answers by reading the key out of the prompt (or a wrong one): checks the scoring."""

    def __init__(self, runtime, wrong=False):
        super().__init__(runtime)
        self.wrong = wrong

    def reply(self, text):
        key = re.search(r"(?:pass key is|numbers for [a-z-]+ is:|vault is) (\d+)", text).group(1)
        return " " + (str(int(key) + 1) if self.wrong else key) + "."


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("wrong", [False, True])
def test_scoring_on_an_oracle(runtime, wrong, fmt):
    res = passkey(KeyOracle(runtime, wrong), 300, trials=3, depths=[0, 0.5, 1], fmt=fmt, show_progress=False)
    want = 0.0 if wrong else 1.0
    assert res.accuracy == want and res.format == fmt and res.filler == "grass"
    assert [d["accuracy"] for d in res.per_depth] == [want] * 3
    gen = FORMATS[fmt].digits + 3
    assert len(res.samples) == 9 and all(s["prompt_tokens"] <= 300 - gen for s in res.samples)
    # Wilson 95 % of 3/3 and 0/3, per depth
    lo, hi = (0.4385, 1.0) if not wrong else (0.0, 0.5615)
    assert all(d["lo"] == pytest.approx(lo, abs=1e-4) and d["hi"] == pytest.approx(hi, abs=1e-4) for d in res.per_depth)


def test_trials_in_pieces_are_the_trials_at_once(runtime):
    whole = passkey(KeyOracle(runtime), 300, trials=4, depths=[0.5], fmt="ruler", show_progress=False)
    part = passkey(KeyOracle(runtime), 300, trials=2, depths=[0.5], fmt="ruler", first_trial=2,
                   show_progress=False)
    assert [s["key"] for s in part.samples] == [s["key"] for s in whole.samples[2:]]
    assert part.first_trial == 2 and part.trials == 2


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


@pytest.mark.parametrize("fmt", ["ruler", "vault"])
def test_default_model_reads_the_other_formats_inside_its_trained_context(runtime, fmt):
    res = passkey(runtime, 320, trials=1, depths=[0, 1], seed=1, fmt=fmt, show_progress=False)
    assert res.accuracy == 1.0, res.samples


def test_cli_json(shared_text):
    out = subprocess.run([sys.executable, "-m", "ggml_rerope.passkey", "--ctx", "256", "--trials", "1",
                          "--depths", "0,1", "--json", "--threads", "2", "--rope-scaling", "leaky-rerope",
                          "--rerope-window", "64", "--rerope-leaky-k", "4", "--format", "ruler",
                          "--filler", f"text:{shared_text}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["n_ctx"] == 256 and d["trials"] == 1 and [x["depth"] for x in d["per_depth"]] == [0.0, 1.0]
    assert "k=4" in d["scheme"] and 0.0 <= d["accuracy"] <= 1.0
    assert d["format"] == "ruler" and d["filler"] == "text" and all(len(s["key"]) == 7 for s in d["samples"])
    assert all(0.0 <= x["lo"] <= x["accuracy"] <= x["hi"] <= 1.0 for x in d["per_depth"])
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
