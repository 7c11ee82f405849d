"""The runtime's GPU execution path, checked on the CPU: the graph runs in pieces on one backend,
every layer's attention between two pieces, the token embedding looked up on the host
(GGML_REROPE_RUNTIME_ATTN=outside), which is how a model on the GPU runs (ggml-cuda cannot run a
custom op). Its logits must equal
those of the usual CPU path (the attention as a custom node in the graph), prefill and decode.
Also: the errors of n_gpu_layers on a machine or build without a GPU."""

import numpy as np
import pytest

import ggml_rerope
from ggml_rerope._cuda import cuda_available
from ggml_rerope._internals import KV_F16, KV_F32, Runtime
from gguf_factory import write_model


def logits_both_ways(monkeypatch, capfd, path, tokens, split, kv_type, window, n_batch=16):
    """Prefill tokens[:split] (all logits) then decode the rest one by one, in both modes."""
    out = {}
    monkeypatch.setenv("GGML_REROPE_VERBOSE", "1")
    for mode in ("node", "outside"):
        monkeypatch.setenv("GGML_REROPE_RUNTIME_ATTN", mode)
        capfd.readouterr()
        rt = Runtime(path, n_ctx=len(tokens) + 3, n_batch=n_batch, kv_type=kv_type)
        # the context says which path it took (the test would be void if both were the same)
        assert ("attention between graph pieces" in capfd.readouterr().err) == (mode == "outside")
        try:
            rt.set_scheme(window=window, logn_train_len=16)
            rows = [rt.eval(tokens[:split], all_logits=True)]
            rows += [rt.eval(tokens[i:i + 1]).reshape(1, -1) for i in range(split, len(tokens))]
            out[mode] = np.concatenate(rows)
        finally:
            rt.close()
    return out["node"], out["outside"]


@pytest.mark.parametrize("arch,wtype,kv_type", [("llama", "Q8_0", KV_F16), ("qwen2", "F16", KV_F32),
                                                ("qwen3", "Q4_0", KV_F16)])
def test_outside_attention_equals_in_graph(tmp_path, monkeypatch, capfd, arch, wtype, kv_type):
    path = write_model(tmp_path / f"{arch}.gguf", arch=arch, wtype=wtype, seed=3)
    rng = np.random.default_rng(7)
    tokens = rng.integers(3, 384, size=45).tolist()
    # window 9 < length: near, far and mixed tiles; n_batch 16: several micro-batches per prefill
    node, outside = logits_both_ways(monkeypatch, capfd, path, tokens, split=40, kv_type=kv_type, window=9)
    assert node.shape == outside.shape == (40 + 5, 384)
    assert np.isfinite(node).all()
    np.testing.assert_allclose(outside, node, rtol=0, atol=1e-5)


@pytest.mark.skipif(cuda_available(), reason="checks the errors of a machine without a GPU")
@pytest.mark.parametrize("ngl", [-1, 1, 2, 99])
def test_gpu_layers_without_gpu_is_a_clear_cuda_error(tmp_path, ngl):
    path = write_model(tmp_path / "m.gguf", seed=1)  # 2 layers
    with pytest.raises(ggml_rerope.CudaError, match="n_gpu_layers"):
        ggml_rerope.Model(path, n_ctx=64, n_gpu_layers=ngl)


@pytest.mark.skipif(cuda_available(), reason="checks the errors of a machine without a GPU")
@pytest.mark.parametrize("tool", [["ggml_rerope.passkey", "--ctx", "256"],
                                  ["ggml_rerope.perplexity", "README.md", "--ctx", "64"]])
def test_cli_gpu_flag_without_gpu_is_one_error_line(tool, tmp_path):
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    path = write_model(tmp_path / "m.gguf", seed=1)
    args = [sys.executable, "-m", tool[0], str(path), *tool[1:], "-ngl", "-1"]
    env = dict(os.environ, PYTHONPATH=str(root))
    r = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: n_gpu_layers = -1 asks for the GPU")
