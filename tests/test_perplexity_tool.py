"""The perplexity tool: its scoring convention on a deterministic fake engine (exact), and end to
end on the default model with a few hundred tokens (against logits computed directly)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from ggml_rerope.perplexity import perplexity, token_nll

V = 37


def fake_logits(history, pos):
    """Logits that depend on the token at `pos` and on the position, so mistakes in the
    offset, the BOS rule or the batching change the result."""
    t = history[pos]
    x = np.sin(np.arange(V) * (t + 1) * 0.37 + pos * 0.011) * 3
    return x.astype(np.float32)


class FakeEvaluator:
    def __init__(self, n_ctx=64, n_batch=8, add_bos=True, bos_id=1):
        self.n_ctx, self.n_batch, self.add_bos, self.bos_id, self.n_vocab = n_ctx, n_batch, add_bos, bos_id, V
        self.tokens = []
        self.calls = []

    def reset(self):
        self.tokens = []

    def eval(self, tokens, logits_all=False):
        tokens = [int(t) for t in tokens]
        assert len(tokens) <= self.n_batch  # the tool must feed micro-batches
        p0 = len(self.tokens)
        self.tokens += tokens
        self.calls.append((len(tokens), logits_all))
        rows = np.stack([fake_logits(self.tokens, p0 + i) for i in range(len(tokens))])
        return rows if logits_all else rows[-1]


def direct_nll(window):
    """-log p(window[p+1] | window[..p]) for p = 0 .. len-2, straight from the definition."""
    out = []
    for p in range(len(window) - 1):
        x = fake_logits(list(window), p).astype(np.float64)
        out.append(np.log(np.exp(x).sum()) - x[window[p + 1]])
    return np.array(out)


@pytest.mark.parametrize("n", [5, 701])  # 701: rows split over threads, uneven parts
def test_token_nll_is_log_softmax(n):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n, 11)) * 30).astype(np.float32)  # large logits: needs the max shift
    t = rng.integers(0, 11, n)
    xd = x.astype(np.float64)
    want = [math.log(np.exp(xd[i] - xd[i].max()).sum()) + xd[i].max() - xd[i, t[i]] for i in range(n)]
    # float32 exponentials: 1e-7 of the float32 logits' own precision, not a loss digit anyone reads
    np.testing.assert_allclose(token_nll(x, t), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("add_bos", [True, False])
def test_chunks_bos_rule_and_buckets(add_bos):
    rng = np.random.default_rng(1)
    tokens = rng.integers(2, V, 200).tolist()
    ev = FakeEvaluator(n_ctx=64, n_batch=8, add_bos=add_bos)
    res = perplexity(ev, tokens, 50, chunks=3, bucket=16, show_progress=False)
    nll = []
    for c in range(3):
        w = list(tokens[c * 50:(c + 1) * 50])
        if add_bos:
            w[0] = 1  # llama.cpp: the chunk's first token becomes BOS
        nll.append(direct_nll(w))
    all_nll = np.concatenate(nll)
    assert res.n_scored == 3 * 49 and res.chunks == 3 and res.n_ctx == 50
    assert res.loss == pytest.approx(all_nll.mean(), abs=1e-6)  # float32 exponentials
    assert res.ppl == pytest.approx(math.exp(all_nll.mean()), abs=1e-6)  # float32 exponentials
    assert res.chunk_losses == pytest.approx([x.mean() for x in nll], abs=1e-6)  # float32 exponentials
    # buckets by target position 1..49 in the chunk: [0,16) has 15 targets per chunk
    by_target = np.stack(nll)  # (3, 49): column p = target p+1
    for b in res.buckets:
        cols = [p - 1 for p in range(max(1, b["start"]), b["end"])]
        assert b["n"] == 3 * len(cols)
        assert b["loss"] == pytest.approx(by_target[:, cols].mean(), abs=1e-6)  # float32 exponentials
    assert [b["start"] for b in res.buckets] == [0, 16, 32, 48]
    assert max(n for n, _ in ev.calls) == 8


def test_score_last_protocol_scores_the_same_tokens_at_every_context():
    rng = np.random.default_rng(2)
    tokens = rng.integers(2, V, 300).tolist()
    E, M = 250, 20
    for n in (40, 64):
        ev = FakeEvaluator(n_ctx=64, n_batch=8)
        res = perplexity(ev, tokens, n, score_last=M, end_token=E, show_progress=False)
        w = list(tokens[E - n:E])
        w[0] = 1
        assert res.n_scored == M
        assert res.loss == pytest.approx(direct_nll(w)[-M:].mean(), abs=1e-6)  # float32 exponentials
        assert res.protocol == {"kind": "score-last", "score_last": M, "end_token": E}
        # only the micro-batches that hold scored positions asked for all logits
        assert sum(n_tok for n_tok, full in ev.calls if full) <= M + 8


def test_argument_errors():
    ev = FakeEvaluator()
    toks = list(range(2, 30)) * 10
    with pytest.raises(ValueError, match="chunk"):
        perplexity(ev, toks[:100], 60, chunks=2, show_progress=False)
    with pytest.raises(ValueError, match="together"):
        perplexity(ev, toks, 60, score_last=10, show_progress=False)
    with pytest.raises(ValueError, match="end_token"):
        perplexity(ev, toks, 60, score_last=10, end_token=30, show_progress=False)
    with pytest.raises(ValueError, match="context"):
        perplexity(ev, toks, 100, show_progress=False)


# ------------------------------------------------------------------ the default model, end to end


@pytest.fixture(scope="module")
def runtime():
    from ggml_rerope.evaluators import open_evaluator

    ev = open_evaluator(None, n_ctx=256, scheme="rerope", n_batch=64, window=64)
    yield ev
    ev.close()


@pytest.fixture(scope="module")
def text_tokens(runtime, shared_text):
    with open(shared_text, encoding="utf-8") as f:
        return runtime.tokenize(f.read(20000), add_bos=True)


def test_model_loss_equals_direct_logits(runtime, text_tokens):
    res = perplexity(runtime, text_tokens, 192, chunks=2, bucket=64, show_progress=False)
    # independent: one whole-window logits call per chunk, log-softmax in float64
    m = runtime.model
    nll = []
    for c in range(2):
        w = text_tokens[c * 192:(c + 1) * 192]
        if runtime.add_bos:
            w = [runtime.bos_id] + w[1:]
        lg = m.logits(w).astype(np.float64)[:-1]
        lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
        nll.append(lse - lg[np.arange(191), w[1:]])
    want = np.concatenate(nll).mean()
    assert res.loss == pytest.approx(want, abs=2e-3)  # micro-batches of 64 vs one call: float noise only
    assert 2.0 < res.loss < 6.0  # English prose, a small model: a sane range
    assert len(res.buckets) == 3


def test_cli_json(runtime, shared_text):
    out = subprocess.run([sys.executable, "-m", "ggml_rerope.perplexity", str(shared_text),
                          "--ctx", "128", "--chunks", "1",
                          "--rope-scaling", "rerope", "--rerope-window", "32", "--no-logn", "--bucket", "64",
                          "--batch", "64", "--json", "--threads", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    for key in ("loss", "ppl", "n_ctx", "chunks", "buckets"):
        assert key in d
    assert d["n_ctx"] == 128 and d["chunks"] == 1 and len(d["buckets"]) == 2
    assert d["ppl"] == pytest.approx(math.exp(d["loss"]))
    assert "w=32" in d["scheme"] and "logn" not in d["scheme"]
    assert "ETA" in out.stderr  # the progress bar


def test_cli_rejects_a_flag_of_another_scheme(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("Some text. " * 20)
    out = subprocess.run([sys.executable, "-m", "ggml_rerope.perplexity", str(text), "--ctx", "64",
                          "--rope-scaling", "yarn", "--rerope-window", "8"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--rerope-window" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/text.txt", "--ctx", "64"], "cannot read text file /nonexistent/text.txt"),
    (["TEXT", "--ctx", "0"], "n_ctx must be >= 1, got 0"),
    (["TEXT", "--ctx", "64", "--bucket", "0"], "bucket must be >= 1, got 0"),
    (["TEXT", "--ctx", "64", "--score-last", "8"], "--score-last and --end-token go together"),
])
def test_cli_bad_input_is_one_error_line(shared_text, args, message):
    args = [str(shared_text) if a == "TEXT" else a for a in args]
    out = subprocess.run([sys.executable, "-m", "ggml_rerope.perplexity", *args, "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), out.stderr  # no traceback


def test_cli_rejects_negative_chunks(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ggml_rerope.perplexity", str(tmp_path / "text.txt"), "--ctx", "64",
                          "--chunks", "-1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--chunks must be >= 0" in out.stderr


def test_llama_cpp_peer_agrees_with_runtime_on_plain_rope(text_tokens):
    from ggml_rerope.evaluators import open_evaluator

    res = {}
    for engine in ("ggml-rerope", "llama.cpp"):
        ev = open_evaluator(None, n_ctx=160, scheme="none", engine=engine, n_batch=64)
        try:
            res[engine] = perplexity(ev, text_tokens, 160, chunks=1, show_progress=False).loss
        finally:
            ev.close()
    # the same model and tokens, different kernels (F16 cache, quantized matmuls): close, not equal
    assert abs(res["ggml-rerope"] - res["llama.cpp"]) < 0.02, res
