"""python/quality_report.py end to end on tiny contexts: runs, caches, resumes, renders."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def run_report(tmp_path, text, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "python", "quality_report.py"), "--text", str(text), "--contexts", "128",
           "--passkey-contexts", "200", "--passkey-trials", "1", "--passkey-depths", "1",
           "--score-last", "32", "--end-token", "300", "--bucket", "64", "--batch", "64", "--threads", "2",
           "--schemes", "rerope w=4096 log-n,longrope,llama.cpp:none",
           "--cache", str(tmp_path / "cache.jsonl"), "--out", str(tmp_path / "quality.md"), "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_report_runs_resumes_and_renders(tmp_path, shared_text):
    out = run_report(tmp_path, shared_text, "--partial", "test run")
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "cache.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 3  # 3 rows x (loss, last, passkey)
    md = (tmp_path / "quality.md").read_text()
    assert "PARTIAL REPORT" in md and "| rerope w=4096 log-n |" in md and "| *llama.cpp none* |" in md
    assert "Passkey retrieval" in md and "ReRoPE-paper protocol" in md
    assert "longrope: needs per-dimension factors" in md  # n/a rows say why
    # a second run finds everything in the cache and keeps hand-written analysis
    with open(tmp_path / "quality.md", "a") as f:
        f.write("\n<!-- analysis -->\nmy notes\n")
    again = run_report(tmp_path, shared_text)
    assert again.returncode == 0, again.stderr
    assert "0 (row, context) runs to do" in again.stderr
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 9
    assert (tmp_path / "quality.md").read_text().rstrip().endswith("my notes")


def test_rows_of_the_same_computation_share_one_measurement():
    """The report runs one measurement for rows that compute the same thing at a context (and
    shows it for both, marked '='); rows that differ must never share."""
    sys.path.insert(0, os.path.join(ROOT, "python"))
    import quality_report as qr

    from ggml_rerope import schemes

    hyper = schemes.hyper_from(dict(n_rot=64, rope_base=10000.0, n_ctx_train=8192, head_dim=64))
    rows = {r.label: r for r in qr.all_rows(8192)}

    def key(label, ctx):
        return qr.computation(rows[label], ctx, hyper)

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
