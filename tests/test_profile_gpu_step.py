"""python/profile_gpu_step.py's accounting on hand-made device events: the union of overlapping
intervals, idle = wall - busy, and the kind of each kernel name (the GPU run is not possible here)."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

import profile_gpu_step as pgs  # noqa: E402


def test_union_counts_overlap_once():
    assert pgs.union_us([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25
    assert pgs.union_us([]) == 0


@pytest.mark.parametrize("name, kind", [
    ("void rerope_cuda::(anonymous namespace)::decode_mma_kernel<128, F16KV>(AttnArgs)", "attention (ours)"),
    ("void flash_attn_ext_f16<128, 128, 4>(char const*, ...)", "attention (llama.cpp)"),
    ("void mul_mat_vec_q<(ggml_type)2, 1>(void const*, ...)", "matmul"),
    ("void mul_mat_q<(ggml_type)2, 128, false>(char const*, ...)", "matmul"),
    ("Memcpy DtoH (Device -> Pageable)", "copies"),
    ("void k_set_rows<float, __half>(...)", "copies"),
    ("void rms_norm_f32<1024>(float const*, ...)", "norm, rope, elementwise"),
    ("void rope_norm<true, float>(...)", "norm, rope, elementwise"),
    ("some_new_kernel", "other"),
])
def test_kernel_kinds(name, kind):
    assert pgs.kind_of(name) == kind


def test_summary_per_step():
    trace = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "mul_mat_vec_q", "ts": 0, "dur": 600},
        {"ph": "X", "cat": "kernel", "name": "rerope_cuda::decode", "ts": 500, "dur": 300},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoH", "ts": 900, "dur": 100},
        {"ph": "X", "cat": "cpu_op", "name": "not on the device", "ts": 0, "dur": 5000},
        {"ph": "X", "cat": "kernel", "name": "mul_mat_vec_q", "ts": 2000, "dur": 600},
    ]}
    s = pgs.summarize(pgs.device_events(trace), wall_s=0.004, steps=2)
    assert s["wall_ms"] == pytest.approx(2.0)
    assert s["busy_ms"] == pytest.approx((900 + 600) / 2 / 1000)  # 0-800, 900-1000, 2000-2600
    assert s["idle_ms"] == pytest.approx(2.0 - 0.75)
    assert s["kernels"] == 2
    assert s["by_kind_ms"] == pytest.approx({"matmul": 0.6, "attention (ours)": 0.15, "copies": 0.05})
    assert list(s["by_kind_ms"]) == ["matmul", "attention (ours)", "copies"]


def test_the_profiled_steps_end_with_the_context_full(monkeypatch):
    """The prompt, the profiled micro-batch and the decode steps fill exactly N tokens."""
    class Engine:
        def __init__(self):
            self.n, self.calls = 0, []

        def reset(self):
            self.n = 0

        def prefill(self, tokens):
            self.n += len(tokens)
            self.calls.append(len(tokens))
            return np.zeros(8, dtype=np.float32)

        def decode(self, token):
            return self.prefill([token])

    profiled_calls = []
    monkeypatch.setattr(pgs, "profiled", lambda fn: (profiled_calls.append(fn()), ([], 0.001))[1])
    eng, n, ubatch, steps = Engine(), 5000, 2048, 16
    r = pgs.profile_engine(eng, np.arange(n - steps), ubatch, steps)
    assert eng.n == n
    assert eng.calls[:2] == [n - steps - ubatch - 2, ubatch] and eng.calls[2:] == [1] * (2 + steps)
    assert len(profiled_calls) == 2 and set(r) == {"prefill_ubatch", "decode_step"}


@pytest.mark.parametrize("flags, message", [
    (["--contexts", "8k"], "--contexts must be comma-separated integers"),
    (["--contexts", "2000"], "--contexts must be > --n-batch + --steps + 2 (2066)"),
    (["--engines", "vllm"], "--engines must name some of ours,llama.cpp"),
    (["--steps", "0"], "--steps and --n-batch must be >= 1"),
])
def test_bad_flags_are_refused_before_any_work(flags, message, capsys):
    assert pgs.main(flags) == 2
    assert message in capsys.readouterr().err
