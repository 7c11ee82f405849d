"""`python -m ggml_rerope.bench model` end to end on a tiny context: both engines measured,
the JSON shape, KV bytes per token equal, peak memory from separate processes."""

import json
import os
import subprocess
import sys

from ggml_rerope.bench import model as bench_model


def test_bench_model_smoke(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("It was the best of times, it was the worst of times. " * 40)
    r = subprocess.run(
        [sys.executable, "-m", "ggml_rerope.bench", "model", "--ctx", "64", "--vs-llama-cpp", "--threads", "1",
         "--repeats", "1", "--decode", "2", "--text", str(text), "--json"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    (row,) = out["rows"]
    assert row["ctx"] == 64
    for kind in ("ours", "llama.cpp"):
        m = row[kind]
        assert m["prefill_tok_s"] > 0 and m["decode_tok_s"] > 0
        assert m["peak_rss_bytes"] > 50 * 2**20  # a loaded model, not an empty interpreter
    assert row["ours"]["kv_bytes_per_token"] == row["llama.cpp"]["kv_bytes_per_token"] == 2 * 30 * 3 * 64 * 2
    assert set(row["verdicts"]) == {"prefill", "decode", "kv", "rss"}
    assert "prefill tok/s" in r.stderr  # the table, on stderr next to the JSON


def test_bench_model_errors(tmp_path):
    assert bench_model.main(["--ctx", "64", "--text", str(tmp_path / "none.txt")]) == 1
    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert bench_model.main(["--ctx", "64", "--text", str(short)]) == 1
