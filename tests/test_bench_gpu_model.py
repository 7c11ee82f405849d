"""python/bench_gpu_model.py on the CPU with the tiny shape: the random Q4_0 GGUF it writes (shape,
scales, reuse) loads in both engines, and the benchmark's JSON has positive tok/s for both."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import gguf
import numpy as np
import pytest

from ggml_rerope.bench import random_llama_gguf as rlg

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "python" / "bench_gpu_model.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return rlg.write_model(tmp_path_factory.mktemp("bench_gpu") / "tiny.gguf", "tiny")


def test_8b_plan_has_llama3_8b_parameter_count():
    # Llama-3-8B has 8,030,261,248 parameters; the plan's tensors must add up to the same.
    plan = list(rlg._tensor_plan(rlg.SHAPES["8b"]))
    assert sum(rows * cols for _, _, (rows, cols) in plan) == 8_030_261_248
    assert {kind for name, kind, _ in plan if name.endswith("norm.weight")} == {"norm"}
    assert sum(rlg._q4_nbytes(r, c) for _, k, (r, c) in plan if k == "q4") / 2**30 == pytest.approx(4.21, abs=0.01)


def test_tiny_file_structure_and_scales(tiny):
    s = rlg.SHAPES["tiny"]
    r = gguf.GGUFReader(str(tiny))
    t = {x.name: x for x in r.tensors}
    assert len(t) == 3 + 9 * s["n_layer"]
    assert t["output.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert t["blk.0.ffn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert list(t["blk.1.ffn_down.weight"].shape) == [s["n_ff"], s["n_embd"]]  # ggml order: ne0 = in
    assert r.get_field("llama.rope.freq_base").contents() == s["rope_base"]
    assert r.get_field("llama.attention.head_count_kv").contents() == s["n_head_kv"]
    for name, n_in in (("blk.0.attn_q.weight", s["n_embd"]), ("blk.0.ffn_down.weight", s["n_ff"])):
        w = gguf.quants.dequantize(t[name].data, t[name].tensor_type)
        assert np.isfinite(w).all()
        assert w.std() == pytest.approx(1 / np.sqrt(n_in), rel=0.1)  # unit-RMS in, unit-RMS out


def test_reuse_only_same_shape(tmp_path, tiny):
    p = tmp_path / "m.gguf"
    p.write_bytes(b"not a gguf file")
    path, reused = rlg.ensure_model(p, "tiny")
    assert not reused and rlg.file_shape(path) == "tiny"
    mtime = os.stat(path).st_mtime_ns
    path, reused = rlg.ensure_model(p, "tiny")
    assert reused and os.stat(path).st_mtime_ns == mtime
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(ValueError, match="shape"):
        rlg.write_model(tmp_path / "x.gguf", "70b")


def test_tiny_loads_in_both_engines(tiny):
    from ggml_rerope import Model
    from ggml_rerope.llama_cpp_engine import LlamaCppEngine

    s = rlg.SHAPES["tiny"]
    with Model(str(tiny), n_ctx=64, n_gpu_layers=0, n_threads=1) as m:
        assert (m.n_vocab, m.info["n_layer"], m.info["n_head_kv"]) == (s["n_vocab"], s["n_layer"], s["n_head_kv"])
        ours = m.prefill([5, 300, 7, 900])
    with LlamaCppEngine(str(tiny), 64, n_gpu_layers=0, n_threads=1, flash_attn=False) as lc:
        assert lc.n_vocab == s["n_vocab"]
        ref = lc.eval([5, 300, 7, 900])
    assert np.isfinite(ours).all() and np.isfinite(ref).all() and ref.std() > 0
    # 4 tokens are inside the ReRoPE window: ours computes what llama.cpp does (f16 KV, Q4_0 matmuls)
    assert np.abs(ours - ref).max() <= 0.02 * np.abs(ref).max() + 1e-3


def test_benchmark_json_cpu_tiny(tmp_path, tiny):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--shape", "tiny", "--ngl", "0", "--contexts", "256", "--threads", "1",
         "--out", str(tiny), "--json", str(out)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["model_reused"] is True and res["ngl"] == 0 and res["n_batch"] == 512 and res["device"]
    (row,) = res["rows"]
    assert row["ctx"] == 256 and row["prompt_tokens"] == 256 - 64
    for kind in ("ours", "llama.cpp"):
        assert row[kind]["prefill_tok_s"] > 0 and row[kind]["decode_tok_s"] > 0, row[kind]
        assert row[kind]["logits_finite"] is True
    for phase in ("prefill", "decode"):
        assert row["ratio"][phase] == pytest.approx(row["ours"][f"{phase}_tok_s"] / row["llama.cpp"][f"{phase}_tok_s"])
    assert "ours/llama.cpp" in r.stdout and "decode" in r.stdout


def test_benchmark_rejects_bad_arguments(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gpu_model", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    common = ["--shape", "tiny", "--ngl", "0", "--out", str(tmp_path / "t.gguf")]
    assert mod.main(common + ["--contexts", "64"]) == 2  # not more than the 64 decode steps
    assert mod.main(common + ["--contexts", "8k"]) == 2
    assert mod.main(common + ["--contexts", "256", "--engines", "vllm"]) == 2
    assert mod.main(common + ["--contexts", "256", "--n-batch", "0"]) == 2
