"""python/quality_report.py: plans (jobs and evaluated tokens), runs, caches, resumes, stops on a
time budget, and renders intervals and paired differences; end to end on tiny contexts, and on
hand-made cache records whose intervals are known."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "python"))

import quality_jobs as qj  # noqa: E402
import quality_render  # noqa: E402
import quality_report as qr  # noqa: E402
import quality_rows  # noqa: E402

from ggml_rerope import schemes  # noqa: E402

SCHEMES = "none (RoPE),power (Giraffe k=0.5),longrope,llama.cpp:none"


def tiny_args(tmp_path, text, *extra):
    return ["--text", str(text), "--contexts", "128,192", "--score-last", "32", "--paper-windows", "2",
            "--passkey-contexts", "192", "--passkey-trials", "2", "--shard-trials", "1", "--passkey-depths", "1",
            "--passkey-formats", "landmark", "--passkey-fillers", "grass", "--retrieval-contexts", "192",
            "--retrieval-trials", "1", "--retrieval-depths", "0,1", "--retrieval-fillers", "grass",
            "--base-context", "128", "--batch", "64", "--threads", "1", "--schemes", SCHEMES,
            "--cache", str(tmp_path / "cache.jsonl"), "--out", str(tmp_path / "quality.md"), "--no-progress", *extra]


def run_report(tmp_path, text, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "python", "quality_report.py"), *tiny_args(tmp_path, text, *extra)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_report_plans_runs_resumes_and_renders(tmp_path, shared_text):
    plan = run_report(tmp_path, shared_text, "--plan")
    assert plan.returncode == 0, plan.stderr
    # 4 rows (RoPE, power, llama.cpp, longrope) that compute different things at 128 and 192:
    # paper 2 windows x (128 + 192) tokens; passkey depth 1: the first prompt in full, then 8 answer
    # tokens per trial; multi-key: the haystack, then 2 x (48 question + 10 answer) tokens
    want = 4 * (2 * (128 + 192) + (192 + 2 * 8) + (192 + 2 * (48 + 10)))
    assert f"total: {4 * (4 + 2 + 1)} jobs, {want:,d} evaluated tokens" in plan.stdout, plan.stdout
    assert not (tmp_path / "cache.jsonl").exists()  # a plan runs nothing

    out = run_report(tmp_path, shared_text, "--partial", "test run")
    assert out.returncode == 0, out.stderr
    recs = [json.loads(line) for line in (tmp_path / "cache.jsonl").read_text().splitlines()]
    ok = [r for r in recs if not r.get("error")]
    assert len(ok) == 3 * (4 + 2 + 1) and all(r["v"] == 2 for r in recs)
    assert sorted({r["label"] for r in recs if r.get("error")}) == ["longrope"]
    for r in (r for r in ok if r["measure"] == "paper"):
        nll = np.load(tmp_path / "cache_nll" / r["nll_file"])
        assert nll.dtype == np.float16 and nll.shape == (32,)  # half precision: 1e-3 nats, far below any interval
        assert r["loss"] == pytest.approx(nll.astype(np.float64).mean(), abs=2e-3)
    # the same 32 tokens at both contexts: close, not equal
    rope = {(r["ctx"], r["shard"]["end"]): np.load(tmp_path / "cache_nll" / r["nll_file"]) for r in ok
            if r["measure"] == "paper" and r["label"] == "none (RoPE)"}
    assert set(rope) == {(128, 192), (128, 384), (192, 192), (192, 384)}
    assert not np.array_equal(rope[(128, 192)], rope[(192, 192)])
    assert abs(rope[(128, 192)].mean() - rope[(192, 192)].mean()) < 0.5
    md = (tmp_path / "quality.md").read_text()
    assert "PARTIAL REPORT" in md and "| none (RoPE) | " in md and "| *llama.cpp none* | " in md
    for head in ("ReRoPE-paper protocol", "Difference from plain RoPE at 128", "best llama.cpp scheme",
                 "Passkey retrieval: every format", "Retrieval: multikey", "by depth"):
        assert head in md, head
    assert "longrope (paper): needs per-dimension factors" in md
    assert " [" in md.split("ReRoPE-paper protocol")[1].split("\n| none (RoPE) | ")[1].split("\n")[0]
    with open(tmp_path / "quality.md", "a") as f:
        f.write("\n<!-- analysis -->\nmy notes\n")

    again = run_report(tmp_path, shared_text)
    assert again.returncode == 0, again.stderr
    assert "0 jobs to do" in again.stderr
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == len(recs)
    assert (tmp_path / "quality.md").read_text().rstrip().endswith("my notes")

    # more trials later: only the new shards; a spent time budget starts none of them
    more = run_report(tmp_path, shared_text, "--passkey-trials", "3", "--plan")
    assert "total: 3 jobs" in more.stdout, more.stdout
    stopped = run_report(tmp_path, shared_text, "--passkey-trials", "3", "--time-budget", "0")
    assert stopped.returncode == 0, stopped.stderr
    assert "3 jobs left; rerun to resume" in stopped.stderr
    assert "**3 jobs not run yet**" in (tmp_path / "quality.md").read_text()
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == len(recs)


def _put(cache, args, label, measure, ctx, shard, setup, **fields):
    row = next(r for r in quality_rows.all_rows() if r.label == label)
    nll = fields.pop("nll", None)
    cache.put(dict(id=qj.Cache.ident(row, measure, ctx, shard, setup), v=2, row=row.key, label=row.label,
                   engine=row.engine, measure=measure, ctx=ctx, shard=dict(shard), **fields), nll)


def test_render_intervals_and_paired_differences_on_known_records(tmp_path, default_model_file):
    """Hand-made records: power at 192 is RoPE at 128 minus 0.05 on every token, llama.cpp is RoPE
    plus 0.02: the paired differences are those constants exactly, whatever the token noise."""
    args = qr.parse_args(["--model", str(default_model_file), "--text", "war_and_peace.txt", "--measures",
                          "paper,passkey", "--contexts", "128,192", "--score-last", "32", "--paper-windows", "2",
                          "--passkey-trials", "20", "--shard-trials", "20", "--passkey-depths", "0.5",
                          "--passkey-formats", "ruler", "--passkey-fillers", "text", "--base-context", "128",
                          "--cache", str(tmp_path / "c.jsonl")])
    cache = qj.Cache(tmp_path / "c.jsonl")
    setup = qj.setup_of(args)
    rng = np.random.default_rng(0)
    for shard in qj.shards(args, "paper"):
        base = rng.gamma(3.0, 1.0, 32)
        for label, ctx, nll in (("none (RoPE)", 128, base), ("power (Giraffe k=0.5)", 192, base - 0.05),
                                ("llama.cpp none", 192, base + 0.02), ("none (RoPE)", 192, base + 0.01)):
            _put(cache, args, label, "paper", ctx, shard, setup, nll=nll, loss=float(nll.mean()))
    (shard,) = qj.shards(args, "passkey")
    _put(cache, args, "none (RoPE)", "passkey", 128, shard, setup, correct=20, trials=20)
    _put(cache, args, "none (RoPE)", "passkey", 192, shard, setup, correct=10, trials=20)
    md = quality_render.render(args, quality_rows.all_rows(), qj.Cache(tmp_path / "c.jsonl"))
    vs_rope = md.split("Difference from plain RoPE at 128")[1].split("###")[0]
    assert "| power (Giraffe k=0.5) |  | -0.050 [-0.050, -0.050] * |" in vs_rope
    assert "| *llama.cpp none* |  | +0.020 [+0.020, +0.020] * |" in vs_rope
    vs_best = md.split("best llama.cpp scheme")[1].split("###")[0]
    assert "192: llama.cpp none" in vs_best and "| power (Giraffe k=0.5) |  | -0.070 [-0.070, -0.070] * |" in vs_best
    loss = md.split("ReRoPE-paper protocol")[1].split("###")[0]
    line = next(x for x in loss.splitlines() if x.startswith("| none (RoPE) |"))
    lo, hi = (float(x) for x in line.split("|")[2].split("[")[1].rstrip("] ").split(","))
    assert lo < hi  # the loss itself has token noise: a real interval
    assert "| linear | " in loss and " = |" in loss  # linear at 128 is RoPE: shown from RoPE's records
    # passkey: 20/20 is not a point; RoPE at 192 vs 128 by Newcombe
    assert "100% [84, 100] 20/20" in md and "50% [30, 70] 10/20" in md
    assert "-0.500 [" in md.split("Pass-rate difference")[1]


def test_cache_skips_cut_lines_and_other_versions(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(dict(id="a", v=2, x=1)) + "\n" + json.dumps(dict(id="b", measure="loss")) + "\n"
                 + '{"id": "c", "v": 2, "x"')  # a run killed mid-write
    c = qj.Cache(p)
    assert list(c.items) == ["a"] and c.skipped == 2
    c.put(dict(id="d", v=2), np.arange(4, dtype=np.float64))
    assert np.load(c.nll_dir / "d.npy").dtype == np.float16  # stored in half precision, read as float64
    assert c.nll(c.get("d")).dtype == np.float64 and list(c.nll(c.get("d"))) == [0, 1, 2, 3]
    assert sorted(qj.Cache(p).items) == ["a", "d"]


def test_paper_windows_score_the_same_tokens_and_keep_the_nll():
    """perplexity() on several ends: one row of NLL per window, each the last M of that window."""
    from ggml_rerope.perplexity import perplexity, window_ends
    from test_perplexity_tool import FakeEvaluator, direct_nll

    assert window_ends(3, 64) == [64, 128, 192]
    with pytest.raises(ValueError, match="at most 2 fit"):
        window_ends(3, 64, n_tokens=150)
    rng = np.random.default_rng(5)
    tokens = rng.integers(2, 37, 300).tolist()
    ends, m = window_ends(3, 90), 12
    for n in (40, 64):
        res = perplexity(FakeEvaluator(n_ctx=64, n_batch=8), tokens, n, score_last=m, end_token=ends, keep_nll=True,
                         show_progress=False)
        assert res.nll.shape == (3, m) and res.nll.dtype == np.float32
        assert res.protocol == {"kind": "score-last", "score_last": m, "end_tokens": ends}
        for row, e in zip(res.nll, ends):
            w = list(tokens[e - n:e])
            w[0] = 1
            np.testing.assert_allclose(row, direct_nll(w)[-m:], rtol=1e-6)
        assert "nll" not in res.to_dict()


def test_perplexity_cli_windows_and_saved_nll(tmp_path, shared_text):
    out = subprocess.run([sys.executable, "-m", "ggml_rerope.perplexity", str(shared_text), "--ctx", "64",
                          "--score-last", "16", "--windows", "3", "--save-nll", str(tmp_path / "n.npy"), "--json",
                          "--no-progress", "--threads", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    nll = np.load(tmp_path / "n.npy")
    assert d["protocol"]["end_tokens"] == [64, 128, 192] and d["n_scored"] == 48 and nll.shape == (3, 16)
    assert d["loss"] == pytest.approx(float(nll.astype(np.float64).mean()), rel=1e-5)
    assert d["chunk_losses"] == pytest.approx(nll.astype(np.float64).mean(axis=1), rel=1e-5)


def test_an_empty_cache_leaves_the_page_alone(tmp_path):
    page = tmp_path / "quality.md"
    page.write_text("rendered from another cache\n")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "python", "quality_report.py"), "--render-only",
                          "--cache", str(tmp_path / "none.jsonl"), "--out", str(page)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "has no records" in out.stderr, out.stderr
    assert page.read_text() == "rendered from another cache\n"


def test_bad_configurations_are_refused(tmp_path):
    base = ["--cache", str(tmp_path / "c.jsonl"), "--plan"]
    for extra, message in ((["--passkey-formats", "nope"], "--passkey-formats"),
                           (["--paper-windows", "0"], "window"),
                           (["--measures", "last"], "--measures")):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "python", "quality_report.py"), *base, *extra],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and message in out.stderr, out.stderr


def test_rows_of_the_same_computation_share_one_measurement():
    """The report runs one measurement for rows that compute the same thing at a context (and
    shows it for both, marked '='); rows that differ must never share."""
    hyper = schemes.hyper_from(dict(n_rot=64, rope_base=10000.0, n_ctx_train=8192, head_dim=64))
    rows = {r.label: r for r in quality_rows.all_rows(8192)}

    def key(label, ctx):
        return quality_rows.computation(rows[label], ctx, hyper)

    plain = ("linear", "ntk", "dynamic-ntk", "yarn", "rerope w=4096 log-n", "rerope w=4096",
             "leaky w=2048 k=auto log-n", "leaky w=2048 k=auto")
    for label in plain:  # factor 1 / window >= N / k = 1 / log-n idle: RoPE itself
        assert key(label, 4096) == key("none (RoPE)", 4096), label
    assert key("rerope w=4096 log-n", 8192) == key("rerope w=4096", 8192) != key("none (RoPE)", 8192)
    for label in ("power (Giraffe k=0.5)", "truncate (Giraffe)", "self-extend", "rerope w=2048"):
        assert key(label, 4096) != key("none (RoPE)", 4096), label  # these change RoPE at any length
    at_16k = [key(label, 16384) for label in rows if label not in ("longrope",)]
    assert len(set(at_16k)) == len(at_16k), "two different schemes share a key at 16k"
    assert key("llama.cpp linear", 8192) == key("llama.cpp none", 8192) != key("llama.cpp linear", 16384)
    assert key("llama.cpp none", 4096) != key("none (RoPE)", 4096)  # other engine: measured apart


def test_searched_longrope_factors_become_a_row(tmp_path, monkeypatch):
    """A factors file that the search wrote is a row of its own: plain RoPE inside the trained
    context (short set of ones), the searched long set past it."""
    hyper = schemes.hyper_from(dict(n_rot=8, rope_base=10000.0, n_ctx_train=64, head_dim=8))
    monkeypatch.setattr(quality_rows, "SEARCHED_LONGROPE", tmp_path / "missing.json")
    assert not [r for r in quality_rows.all_rows(64) if r.label == "longrope searched 64k"]
    path = tmp_path / "longrope_64k.json"
    path.write_text(json.dumps({"long_factor": [1.0, 1.5, 2.0, 3.0], "short_factor": [1.0] * 4}))
    monkeypatch.setattr(quality_rows, "SEARCHED_LONGROPE", path)
    (row,) = [r for r in quality_rows.all_rows(64) if r.label == "longrope searched 64k"]
    assert row.options == {"factors": [1.0, 1.5, 2.0, 3.0], "short_factors": [1.0] * 4}
    long = schemes.make_scheme(row.scheme, hyper, 256, **row.options).resolve(256)
    assert np.allclose(long.factors(hyper), [1.0, 1 / 1.5, 0.5, 1 / 3.0])
    assert quality_rows.computation(row, 256, hyper) != quality_rows.computation(
        quality_rows.Row("", "ggml-rerope", "none"), 256, hyper)


@pytest.mark.parametrize("flags, spacing", [([], 65536), (["--contexts", "16384,32768"], 65536),
                                            (["--paper-contexts", "8192"], 65536), (["--contexts", "128,192"], 192),
                                            (["--quick"], 8192), (["--quick", "--contexts", "4096"], 8192),
                                            (["--paper-spacing", "1000", "--contexts", "512"], 1000)])
def test_paper_windows_of_a_slice_are_the_reports(flags, spacing):
    """A run of some of the default contexts scores the same windows as the whole report."""
    assert qr.parse_args(["--model", "m.gguf", *flags]).paper_spacing == spacing


def test_a_window_whose_losses_did_not_come_back_is_planned_again(tmp_path, default_model_file):
    """A cache copied without (part of) its _nll folder: the record alone does not make the window done."""
    args = qr.parse_args(["--model", str(default_model_file), "--text", "war_and_peace.txt", "--measures", "paper",
                          "--contexts", "128", "--score-last", "32", "--paper-windows", "2", "--schemes", "none (RoPE)",
                          "--cache", str(tmp_path / "c.jsonl")])
    cache = qj.Cache(tmp_path / "c.jsonl")
    setup = qj.setup_of(args)
    for shard in qj.shards(args, "paper"):
        _put(cache, args, "none (RoPE)", "paper", 128, shard, setup, nll=np.ones(32), loss=1.0)
    rows = quality_rows.select_rows(quality_rows.all_rows(), args.schemes)
    hyper = schemes.hyper_from(args.model)
    assert qj.plan_jobs(args, rows, qj.Cache(tmp_path / "c.jsonl"), hyper) == []
    lost = next(iter(cache.items.values()))
    (cache.nll_dir / lost["nll_file"]).unlink()
    (job,) = qj.plan_jobs(args, rows, qj.Cache(tmp_path / "c.jsonl"), hyper)
    assert job.spec["end"] == lost["shard"]["end"]
