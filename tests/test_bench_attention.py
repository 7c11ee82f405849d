"""The operator benchmark's --quick smoke run: every column is measured and reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_attention_quick():
    proc = subprocess.run([sys.executable, "-m", "ggml_rerope.bench", "attention", "--quick", "--json",
                           "--shapes", "smollm2", "--threads", "2"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert [r["n"] for r in res["prefill"]] == [128, 320]
    for r in res["prefill"]:
        for key in ("rerope_s", "rope_s", "ggml_fa_s", "naive_s"):
            assert r[key] > 0, key
    (dec,) = res["decode"]
    assert dec["decode_gbs"] > 0 and dec["memcpy_gbs"] > 0
    assert {v["target"].split(":")[0] for v in res["verdicts"]}  # verdicts are reported


def test_bench_dispatcher_usage():
    proc = subprocess.run([sys.executable, "-m", "ggml_rerope.bench", "nonsense"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_bench_attention_rejects_sizes_below_one():
    for bad in ("0", "-5"):
        proc = subprocess.run([sys.executable, "-m", "ggml_rerope.bench", "attention", "--sizes", "64", bad],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and f"--sizes must be >= 1, got {bad}" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
