"""`python -m ggml_rerope.chat` on the default model: one-shot answers (flag and stdin), --file,
clean errors; the interactive loop driven in-process (/reset, Ctrl-C during an answer and at
the prompt)."""

import builtins
import io
import os
import re
import subprocess
import sys

import pytest

from ggml_rerope import chat
from ggml_rerope.model import Model

QUESTION = "What is the capital of France? Answer in one word."


def run_cli(*args, stdin=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "ggml_rerope.chat", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def assert_clean_error(r, *words):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0]


def test_prompt_flag_answers_paris():
    r = run_cli("--prompt", QUESTION, "--temp", "0", "-c", "512")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert re.search(r"\d+ tokens, [\d.]+ tok/s", r.stderr)  # speed after the answer, on stderr


def test_prompt_from_stdin():
    r = run_cli("--temp", "0", "-c", "512", stdin=QUESTION + "\n")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_empty_stdin_is_an_error():
    assert_clean_error(run_cli("-c", "64", stdin=""), "no prompt")


def test_missing_model(tmp_path):
    assert_clean_error(run_cli(str(tmp_path / "missing.gguf"), "--prompt", "hi"), "not found", "missing.gguf")


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("hello, not a model\n" * 50)
    assert_clean_error(run_cli(str(bad), "--prompt", "hi"), "notes.gguf")


def test_missing_file_and_bad_flags(tmp_path):
    assert_clean_error(run_cli("--file", str(tmp_path / "doc.txt"), "--prompt", "hi"), "doc.txt")
    assert_clean_error(run_cli("-c", "0", "--prompt", "hi"), "n_ctx")
    assert_clean_error(run_cli("--rope-scaling", "bogus", "--prompt", "hi"), "bogus")


def test_file_goes_into_context_with_progress(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("Notes of the meeting. " * 60 + "The secret word is banana.")
    r = run_cli("--file", str(doc), "--prompt", "What is the secret word?",
                "--temp", "0", "-c", "1024", "-b", "64", "-n", "8")
    assert r.returncode == 0, r.stderr
    m = re.search(r"prompt: (\d+) new tokens", r.stderr)
    assert m and int(m.group(1)) > 300  # the document was evaluated with the question
    assert "ETA" in r.stderr  # progress line while the long prompt ran


def test_document_longer_than_context(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("word " * 400)
    assert_clean_error(run_cli("--file", str(doc), "--prompt", "hi", "-c", "128"), "128")


# -- the interactive loop, in-process ------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    with Model(n_ctx=512, seed=0) as m:
        yield m


class InterruptingOut(io.StringIO):
    """Stands for a terminal where Ctrl-C arrives after `after` pieces of an answer."""

    def __init__(self, after):
        super().__init__()
        self.after = after
        self.pieces = 0

    def write(self, s):
        if s != "\n":
            self.pieces += 1
            if self.pieces == self.after + 1:
                raise KeyboardInterrupt
        return super().write(s)


def feed_input(monkeypatch, items):
    it = iter(items)

    def fake_input(prompt=""):
        item = next(it)
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item()
        return item

    monkeypatch.setattr(builtins, "input", fake_input)


def test_interactive_ctrl_c_reset_and_exit(model, monkeypatch, capsys):
    args = chat.build_parser().parse_args(["--temp", "0", "-n", "12"])
    out = InterruptingOut(after=2)
    c = chat.Chat(model, args, None, out=out)
    feed_input(monkeypatch, ["Tell me a long story about a dragon.", "What is 2 + 2?", "/reset",
                             KeyboardInterrupt, "", KeyboardInterrupt, KeyboardInterrupt])
    assert chat.interactive(c) == 0  # the second Ctrl-C in a row at the prompt exits
    err = capsys.readouterr().err
    assert "[stopped]" in err and "[conversation reset]" in err and "Ctrl-C again" in err
    # After the first answer was stopped after 2 pieces, the second question was answered whole;
    # /reset then emptied the history.
    assert out.pieces > 3
    assert c.messages == []
    assert model.n_past == len(model.tokens)


def test_interactive_stopped_answer_stays_in_history(model, monkeypatch):
    args = chat.build_parser().parse_args(["--temp", "0", "-n", "12", "-s", "You are terse."])
    out = InterruptingOut(after=1)
    c = chat.Chat(model, args, None, out=out)
    feed_input(monkeypatch, ["Tell me a story.", "/exit"])
    assert chat.interactive(c) == 0
    roles = [m["role"] for m in c.messages]
    assert roles == ["system", "user", "assistant"]
    assert c.messages[2]["content"] == out.getvalue().strip()  # the one piece written before Ctrl-C
    # the next turn reuses the cache of the stopped one
    c.out = io.StringIO()
    c.answer("Go on.")
    assert model.last_timings.reused_tokens > 10
