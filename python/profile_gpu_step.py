"""Where the time of one decode step and one prefill micro-batch goes inside the model on the GPU, ours
and llama.cpp CUDA (flash attention) in the same run (BENCHMARKS.md, "GPU runtime end to end").

For each context N and engine: the prompt is evaluated up to N - steps - ubatch - 2 tokens, then one
micro-batch of `ubatch` tokens and `steps` decode steps are profiled (after two untimed decode steps),
so the cache holds N tokens at the end. The torch profiler (CUPTI) records every kernel and copy of
the process, ggml-cuda's and ours alike; per phase it reports

  wall      host time per step (the engine's call, which ends with the copy of the logits),
  busy      the union of the device intervals (kernels, copies) inside it,
  idle      wall - busy: launches, host work between pieces, event waits, the logits' return,

and the device time per kind of kernel (matmul, attention, norm / rope / elementwise, copies).

    GGML_REROPE_LIBRARY=... PYTHONPATH=$PWD python3 python/profile_gpu_step.py \\
        --out /tmp/llama3-8b-random-q4_0.gguf --contexts 8192,32768 --json $OUT/profile.json

Needs torch with CUDA (its profiler) besides the benchmark's needs; `python/gpu_run.sh profile` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
import traceback
from typing import Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Substrings of demangled kernel names, first match wins (ggml-cuda's names, cuBLAS's, ours).
KINDS = (
    ("attention (ours)", ("rerope_cuda::",)),
    ("attention (llama.cpp)", ("flash_attn",)),
    ("matmul", ("mul_mat", "gemm", "gemv", "mmq", "mmvq", "mmf", "cutlass", "cublas", "xmma", "ampere_", "sm90_")),
    ("copies", ("memcpy", "memset", "cpy", "set_rows", "get_rows", "concat", "dup")),
    ("norm, rope, elementwise", ("norm", "rope", "bin_bcast", "add", "mul", "silu", "glu", "scale", "soft_max",
                                 "unary", "argmax", "sum")),
)
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, needles in KINDS:
        if any(n in low for n in needles):
            return kind
    return "other"


def union_us(intervals) -> float:
    """Total length of the union of (start, end) intervals (kernels of two streams overlap)."""
    total, end = 0.0, -float("inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def device_events(trace: dict) -> list:
    """(name, start_us, end_us) of every kernel, copy and memset of a chrome trace (torch.profiler)."""
    out = []
    for e in trace.get("traceEvents", []):
        if e.get("ph") == "X" and e.get("cat") in DEVICE_CATEGORIES:
            ts, dur = float(e["ts"]), float(e.get("dur", 0.0))
            out.append((str(e.get("name", "")), ts, ts + dur))
    return out


def summarize(events: list, wall_s: float, steps: int) -> dict:
    """Per step: wall, device busy (union), idle, and device time by kind (ms)."""
    per = 1e-3 / steps  # us over all steps -> ms per step
    by_kind: dict = {}
    for name, a, b in events:
        k = kind_of(name)
        by_kind[k] = by_kind.get(k, 0.0) + (b - a) * per
    busy = union_us([(a, b) for _, a, b in events]) * per
    wall = 1e3 * wall_s / steps
    return {"wall_ms": wall, "busy_ms": busy, "idle_ms": max(0.0, wall - busy), "kernels": len(events) / steps,
            "by_kind_ms": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]))}


def profiled(fn) -> tuple:
    """Runs fn under the torch profiler; (its device events, host seconds)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    return device_events(trace), wall


def profile_engine(eng, prompt: np.ndarray, ubatch: int, steps: int) -> dict:
    """One profiled micro-batch of `ubatch` prompt tokens, two untimed decode steps (the 1-token
    graph warmed), then `steps` profiled greedy decode steps."""
    eng.reset()
    head = len(prompt) - ubatch - 2
    eng.prefill(prompt[:head])
    ev, wall = profiled(lambda: eng.prefill(prompt[head:head + ubatch]))
    prefill = summarize(ev, wall, 1)
    eng.decode(int(prompt[-2]))
    state = {"logits": eng.decode(int(prompt[-1]))}

    def decode_steps():
        for _ in range(steps):
            state["logits"] = eng.decode(int(np.argmax(state["logits"])))

    ev, wall = profiled(decode_steps)
    return {"prefill_ubatch": prefill, "decode_step": summarize(ev, wall, steps)}


def print_phase(ctx: int, engine: str, phase: str, s: dict) -> None:
    kinds = ", ".join(f"{k} {v:.3f}" for k, v in s["by_kind_ms"].items())
    print(f"{ctx:>6} {engine:<10} {phase:<15} wall {s['wall_ms']:8.3f} ms  busy {s['busy_ms']:8.3f}  "
          f"idle {s['idle_ms']:7.3f}  kernels {s['kernels']:6.0f}  | {kinds}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=("8b", "tiny"), default="8b")
    p.add_argument("--out", help="GGUF path (written when missing, as python/bench_gpu_model.py does)")
    p.add_argument("--contexts", default="8192,32768")
    p.add_argument("--engines", default="ours,llama.cpp")
    p.add_argument("--steps", type=int, default=16, help="profiled decode steps (default 16)")
    p.add_argument("--n-batch", type=int, default=2048, help="batch = micro-batch of both engines (default 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    from ggml_rerope.cache_flags import add_cache_type_arguments

    add_cache_type_arguments(p)
    return p


def main(argv: Optional[list] = None) -> int:
    from bench_gpu_model import contexts_and_engines, make_engine, model_path  # the benchmark's engines, on the GPU

    from ggml_rerope.bench.random_llama_gguf import SHAPES, ensure_model
    from ggml_rerope.host import usable_cores

    args = build_parser().parse_args(argv)
    args.ngl, args.n_ubatch, args.threads = -1, args.n_batch, usable_cores()
    try:
        if args.steps < 1 or args.n_batch < 1:
            raise ValueError(f"--steps and --n-batch must be >= 1, got {args.steps} and {args.n_batch}")
        contexts, engines = contexts_and_engines(args, args.n_batch + args.steps + 2, "--n-batch + --steps + 2")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path, _ = ensure_model(model_path(args), args.shape, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    rows, failed = [], False
    for n in contexts:
        prompt = rng.integers(0, int(SHAPES[args.shape]["n_vocab"]), n - args.steps, dtype=np.int32)
        for kind in engines:
            eng = None
            try:
                eng = make_engine(kind, str(path), n, args)
                r = profile_engine(eng, prompt, args.n_batch, args.steps)
                rows.append({"ctx": n, "engine": kind, **r})
                for phase in ("prefill_ubatch", "decode_step"):
                    print_phase(n, kind, phase, r[phase])
            except Exception as e:  # keep the other engine's numbers; the exit status says it failed
                traceback.print_exc()
                rows.append({"ctx": n, "engine": kind, "error": f"{type(e).__name__}: {e}"})
                failed = True
            finally:
                if eng is not None:
                    eng.close()
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"model": str(path), "n_batch": args.n_batch,
                                                       "steps": args.steps, "rows": rows}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
