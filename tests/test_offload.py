"""Partial offload and layer split, the parts a machine without a GPU can check:

- the layer -> device rule (ggml_rerope_split_layers) against a transcription of llama.cpp's
  load_tensors (llama-model.cpp), and its errors;
- the memory plan on hypothetical GPUs: exact weight and KV bytes, fits / does not fit;
- the mixed execution path (pieces per device, copies between devices) with CPU backends standing in
  for GPUs (GGML_REROPE_RUNTIME_ATTN=outside-split[:N]): its logits equal the plain CPU path's, for
  several placements, one and two sequences, f16 and q8_0 caches."""

from __future__ import annotations

import bisect
import itertools

import numpy as np
import pytest

import ggml_rerope
from ggml_rerope._internals import KV_TYPES, Runtime
from ggml_rerope.placement import memory_plan, split_layers
from gguf_factory import DEFAULT_SHAPE, write_model


def llama_cpp_split(n_layer, ngl, shares, split_mode="layer", main_gpu=0):
    """llama-model.cpp's rule, transcribed: layer n_layer is the output head."""
    if ngl == 0:
        return [-1] * (n_layer + 1)
    if ngl < 0:
        ngl = 2**31 - 1
    n = len(shares)
    if split_mode == "none":
        shares = [1.0 if i == main_gpu else 0.0 for i in range(n)]
    if sum(shares) == 0:
        shares = [1.0] * n
    cum = list(itertools.accumulate(shares))
    cum = [c / cum[-1] for c in cum]
    start = max(n_layer + 1 - ngl, 0)
    act = min(ngl, n_layer + 1)
    out = []
    for il in range(n_layer + 1):
        if il < start or il - start >= act:
            out.append(-1)
        else:
            out.append(min(bisect.bisect_right(cum, (il - start) / act), n - 1))
    return out


@pytest.mark.parametrize("n_layer", [1, 2, 5, 24])
def test_split_follows_llama_cpp(n_layer):
    shares_list = [[1.0], [1.0, 1.0], [3.0, 1.0], [0.0, 1.0, 2.0], [1.0, 0.0, 0.0, 5.0]]
    ngls = [0, 1, 2, n_layer // 2, n_layer - 1, n_layer, n_layer + 1, 99, -1]
    for shares, ngl in itertools.product(shares_list, ngls):
        got = split_layers(n_layer, ngl, n_gpu=len(shares), tensor_split=shares)
        assert got == llama_cpp_split(n_layer, ngl, shares), (n_layer, ngl, shares)
        for main_gpu in range(len(shares)):
            got = split_layers(n_layer, ngl, n_gpu=len(shares), split_mode="none", main_gpu=main_gpu,
                               tensor_split=shares)
            assert got == llama_cpp_split(n_layer, ngl, shares, "none", main_gpu)


def test_split_counts_the_head_as_the_first_offloaded_layer():
    assert split_layers(4, 1) == [-1, -1, -1, -1, 0]        # the head alone
    assert split_layers(4, 3) == [-1, -1, 0, 0, 0]          # the head and the last 2 layers
    assert split_layers(4, 4) == [-1, 0, 0, 0, 0]           # layer 0 stays (llama.cpp: "4/5 layers")
    assert split_layers(4, 5) == split_layers(4, -1) == [0] * 5
    assert split_layers(4, -1, n_gpu=2, tensor_split=[1, 1]) == [0, 0, 0, 1, 1]


def test_split_errors():
    with pytest.raises(ggml_rerope.UnsupportedError, match="split_mode row"):
        split_layers(4, -1, split_mode="row")
    with pytest.raises(ValueError, match="main_gpu = 2, but there are 2 GPUs"):
        split_layers(4, -1, n_gpu=2, split_mode="none", main_gpu=2)
    with pytest.raises(ValueError, match=r"tensor_split\[1\] = -1 must be finite and >= 0"):
        split_layers(4, -1, n_gpu=2, tensor_split=[1, -1])
    with pytest.raises(ValueError, match="n_gpu_layers must be >= -1"):
        split_layers(4, -2)
    with pytest.raises(ggml_rerope.CudaError, match="n_gpu_layers = 3 asks for a GPU"):
        split_layers(4, 3, n_gpu=0)
    with pytest.raises(ValueError, match="split_mode must be one of"):
        split_layers(4, 3, split_mode="rows")
    assert split_layers(4, 0, n_gpu=0) == [-1] * 5  # nothing asked of a GPU


def tensor_bytes(path):
    import gguf
    r = gguf.GGUFReader(str(path))
    return {t.name: int(t.n_bytes) for t in r.tensors}


@pytest.mark.parametrize("tie", [False, True])
def test_memory_plan_on_what_if_gpus(tmp_path, tie):
    path = write_model(tmp_path / "m.gguf", wtype="Q8_0", seed=1, tie_output=tie, n_layer=4)
    sizes = tensor_bytes(path)
    n_ctx = 1024
    with Runtime(path, n_ctx=n_ctx, n_batch=64) as rt:
        kv_per_token = rt.ctx.kv_bytes_per_token
    # everything on one 8 GiB GPU: the CPU keeps the token embedding only
    cpu, gpu = memory_plan(path, n_ctx=n_ctx, n_batch=64, n_gpu_layers=-1, gpu_free=[8 << 30])
    assert (cpu.name, gpu.name, gpu.is_gpu, cpu.is_gpu) == ("CPU", "GPU0", True, False)
    assert cpu.weight_bytes == sizes["token_embd.weight"] and cpu.kv_bytes == 0 and len(cpu.layers) == 0
    head_copy = sizes["token_embd.weight"] if tie else 0  # a tied head gets its own copy on the GPU
    assert gpu.weight_bytes == sum(sizes.values()) - sizes["token_embd.weight"] + head_copy
    assert gpu.kv_bytes == kv_per_token * n_ctx and gpu.layers == range(0, 4) and gpu.has_output
    assert gpu.compute_bytes > 0 and gpu.fits and gpu.free_bytes == 8 << 30
    # 3 of 5 (the head and layers 2, 3) over two GPUs 1:2; q8_0 cache
    plan = memory_plan(path, n_ctx=n_ctx, n_batch=64, n_gpu_layers=3, tensor_split=[1, 2], type_k="q8_0", type_v="f16",
                       gpu_free=[1 << 30, 1 << 30])
    assert [p.name for p in plan] == ["CPU", "GPU0", "GPU1"]
    assert [(p.layers, p.has_output) for p in plan] == [(range(0, 2), False), (range(2, 3), False),
                                                        (range(3, 4), True)]
    per_layer_f16 = kv_per_token // 4 // 2  # K or V of one layer, one token, f16
    q8_row = per_layer_f16 // 2 * 34 // 32
    assert plan[1].kv_bytes == (q8_row + per_layer_f16) * n_ctx
    assert sum(p.weight_bytes for p in plan) == sum(sizes.values()) + head_copy
    # a GPU too small: the plan says so (loading would raise OutOfMemoryError naming it)
    small = memory_plan(path, n_ctx=n_ctx, n_gpu_layers=-1, gpu_free=[1 << 20])
    assert not small[1].fits and small[1].total_bytes > small[1].free_bytes
    assert memory_plan(path, n_ctx=n_ctx)[0].layers == range(0, 4)  # no GPU asked for: the CPU's
    with pytest.raises(ValueError, match="gpu_free"):
        memory_plan(path, n_gpu_layers=-1, gpu_free=[-1])


def logits_of(path, tokens, split, n_batch, kv, ngl=0, n_seq=1):
    """Prefill tokens[:split] of each sequence (all logits) then decode the rest, sequences interleaved."""
    with Runtime(path, n_ctx=n_seq * (len(tokens) + 4), n_batch=n_batch, type_k=kv, type_v=kv, n_gpu_layers=ngl,
                 n_seq_max=n_seq) as rt:
        ctx = rt.ctx
        rt.set_scheme(window=9, logn_train_len=16)
        rows = []
        seqs = np.repeat(np.arange(n_seq), split)
        toks = np.concatenate([np.roll(tokens, s)[:split] for s in range(n_seq)])
        rows.append(ctx.decode(toks, seqs, np.ones(toks.size)))
        for i in range(split, len(tokens)):
            step = np.array([np.roll(tokens, s)[i] for s in range(n_seq)])
            rows.append(ctx.decode(step, np.arange(n_seq)))
        return np.concatenate(rows)


@pytest.mark.parametrize("stand_ins", [1, 2])
@pytest.mark.parametrize("kv", ["f16", "q8_0"])
@pytest.mark.parametrize("n_seq", [1, 2])
def test_mixed_placement_equals_cpu(tmp_path, monkeypatch, capfd, stand_ins, kv, n_seq):
    L = 4
    path = write_model(tmp_path / "m.gguf", arch="qwen2", wtype="Q4_0", seed=3, n_layer=L)
    tokens = np.random.default_rng(5).integers(3, DEFAULT_SHAPE["n_vocab"], 30)
    monkeypatch.delenv("GGML_REROPE_RUNTIME_ATTN", raising=False)
    ref = logits_of(path, tokens, 24, 16, KV_TYPES[kv], n_seq=n_seq)
    assert np.isfinite(ref).all()
    monkeypatch.setenv("GGML_REROPE_RUNTIME_ATTN", f"outside-split:{stand_ins}")
    monkeypatch.setenv("GGML_REROPE_VERBOSE", "1")
    for ngl in (1, L // 2, L - 1, L, -1):
        capfd.readouterr()
        got = logits_of(path, tokens, 24, 16, KV_TYPES[kv], ngl=ngl, n_seq=n_seq)
        err = capfd.readouterr().err
        # the stand-ins held what the rule gives them (the test would be void on one device)
        n_dev = len({d for d in split_layers(L, ngl, n_gpu=stand_ins) if d >= 0})
        assert err.count("ggml_rerope: plan stand-in") >= n_dev and f"on {n_dev + 1} devices" in err, err
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5, err_msg=f"ngl {ngl}")


def test_stand_ins_hold_their_layers_kv(tmp_path, monkeypatch, capfd):
    """The KV cache and compute buffers really are per device: a stand-in's plan line has its layers'
    KV bytes, and state save/load (rows read and written per layer) still round-trips."""
    path = write_model(tmp_path / "m.gguf", seed=2, n_layer=3)
    monkeypatch.setenv("GGML_REROPE_RUNTIME_ATTN", "outside-split:2")
    monkeypatch.setenv("GGML_REROPE_VERBOSE", "1")
    tokens = np.arange(3, 40)
    with Runtime(path, n_ctx=64, n_batch=8, n_gpu_layers=-1) as rt:
        err = capfd.readouterr().err
        assert "plan stand-in0" in err and "plan stand-in1" in err
        first = rt.eval(tokens, all_logits=True)
        state = rt.ctx.state_get()
        rt.ctx.truncate(0)
        rt.ctx.state_set(state)
        nxt = rt.eval(np.array([7]))
    monkeypatch.delenv("GGML_REROPE_RUNTIME_ATTN")
    with Runtime(path, n_ctx=64, n_batch=8) as rt:
        np.testing.assert_allclose(first, rt.eval(tokens, all_logits=True), rtol=0, atol=1e-5)
        np.testing.assert_allclose(nxt, rt.eval(np.array([7])), rtol=0, atol=1e-5)


def test_model_rejects_row_split_and_bad_main_gpu(tmp_path):
    path = write_model(tmp_path / "m.gguf", seed=1)
    with pytest.raises(ValueError, match="split_mode"):
        ggml_rerope._internals.RuntimeModel(path, n_gpu_layers=-1, split_mode="diagonal")
    with pytest.raises(ValueError, match="at most 16 devices"):
        ggml_rerope._internals.RuntimeModel(path, n_gpu_layers=-1, tensor_split=[1] * 17)


def test_verbose_model_prints_the_plan(tmp_path, monkeypatch, capfd):
    path = write_model(tmp_path / "m.gguf", seed=1, n_layer=3)
    monkeypatch.setenv("GGML_REROPE_RUNTIME_ATTN", "outside-split")
    with ggml_rerope.Model(path, n_ctx=64, n_gpu_layers=2, verbose=True):
        pass
    err = capfd.readouterr().err
    assert "plan CPU: layers 0..1:" in err and "plan stand-in0: layers 2..2 + output head:" in err, err
