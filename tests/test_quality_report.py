"""python/quality_report.py end to end on tiny contexts: runs, caches, resumes, renders."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def run_report(tmp_path, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "python", "quality_report.py"), "--contexts", "128",
           "--passkey-contexts", "200", "--passkey-trials", "1", "--passkey-depths", "1",
           "--score-last", "32", "--end-token", "300", "--bucket", "64", "--batch", "64", "--threads", "2",
           "--schemes", "rerope w=4096 log-n,longrope,llama.cpp:none",
           "--cache", str(tmp_path / "cache.jsonl"), "--out", str(tmp_path / "quality.md"), "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_report_runs_resumes_and_renders(tmp_path):
    out = run_report(tmp_path, "--partial", "test run")
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
    again = run_report(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 (row, context) runs to do" in again.stderr
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 9
    assert (tmp_path / "quality.md").read_text().rstrip().endswith("my notes")
