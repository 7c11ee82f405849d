"""The longest context that fits a GPU of a given size, per KV cache type, from the runtime's memory
plan (weights and KV exact, compute estimated; ggml_rerope.placement.memory_plan) and the CUDA
context's own share (CUDA_RESERVE). No GPU needed: the plan is asked about hypothetical GPUs
(gpu_free). python/fit_check.py checks the rows on a GPU, ours and llama.cpp's use at each.

    python python/fit_table.py [model.gguf ...] [--gib 8,24] [--types f16,q8_0,q4_0] [--json]
"""

from __future__ import annotations

import argparse
import json
import os

from ggml_rerope.default_model import default_model_path
from ggml_rerope.placement import memory_plan

STEP = 256  # contexts are reported in multiples of this
# What a process holds on a GPU besides its buffers: the CUDA context and the libraries' workspaces. The
# plan cannot see it (a real GPU's free memory already excludes it); on an H200 the processes of
# python/fit_check.py held 509 MiB more than their plans, for both engines' loads: 576 MiB keeps a margin.
CUDA_RESERVE = 576 << 20


def fits(path: str, n_ctx: int, type_k: str, gib: float) -> bool:
    free = int(gib * 2**30) - CUDA_RESERVE
    plan = memory_plan(path, n_ctx=n_ctx, type_k=type_k, type_v=type_k, n_gpu_layers=-1, gpu_free=[free])
    return all(d.fits for d in plan)


def longest(path: str, type_k: str, gib: float, limit: int = 1 << 24) -> int:
    """The largest multiple of STEP that fits (0: not even STEP tokens), by bisection."""
    lo, hi = 0, limit // STEP
    if not fits(path, STEP, type_k, gib):
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(path, mid * STEP, type_k, gib):
            lo = mid
        else:
            hi = mid - 1
    return lo * STEP


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="GGUF files (default: the default model)")
    p.add_argument("--gib", default="8,24", help="GPU sizes in GiB (default 8,24)")
    p.add_argument("--types", default="f16,q8_0,q4_0", help="KV cache types, K and V alike")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    models = a.models or [default_model_path()]
    sizes = [float(x) for x in a.gib.split(",")]
    types = [t for t in a.types.split(",") if t]
    rows = [{"model": os.path.basename(m), "type": t, "gib": g, "n_ctx": longest(m, t, g)}
            for m in models for t in types for g in sizes]
    if a.json:
        print(json.dumps(rows))
        return 0
    print("| model | cache | " + " | ".join(f"{g:g} GiB" for g in sizes) + " |")
    print("|---|---|" + "---:|" * len(sizes))
    for m in models:
        for t in types:
            cells = [next(r["n_ctx"] for r in rows if r["model"] == os.path.basename(m) and r["type"] == t
                          and r["gib"] == g) for g in sizes]
            print(f"| {os.path.basename(m)} | {t} | " + " | ".join(f"{c:,}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
