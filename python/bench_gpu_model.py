"""End-to-end model benchmark, ours vs llama.cpp, on a Llama-3-8B-shaped Q4_0 GGUF (results: BENCHMARKS.md,
GPU runtime end to end).

The model has random weights and is written on the benchmark machine (about 4.5 GB, 30-60 s;
ggml_rerope/bench/random_llama_gguf.py), reused when --out already holds one of that shape. For each
context N of --contexts: prefill tok/s of a prompt of N - 64 random token ids, then decode tok/s of
64 greedy steps after it (the context then holds exactly N tokens), for
  ours:      ggml_rerope.Model(n_ctx=N, n_gpu_layers=--ngl, n_batch, rope_scaling="rerope")
             (window n_ctx_train / 2 = 4096, log-n on: the defaults);
  llama.cpp: llama.cpp's C API through llama-cpp-python (n_gpu_layers=--ngl, flash attention,
             n_batch, n_ubatch; plain RoPE, f16 KV as ours),
the engines and timing loop of `python -m ggml_rerope.bench model` (ggml_rerope/bench/model.py).
Same token ids, same batch sizes and threads, one engine alive at a time, one warm-up pass each
(graph allocation, CUDA start-up) before the timed runs. Times include each engine's Python
layer and the host copy of the last logits (that copy is what waits for the GPU). Target: ours
>= 0.9x llama.cpp, prefill and decode.

On a GPU machine (when it has no gguf / llama-cpp-python / cffi of its own: they travel
as wheels in .whl, llama-cpp-python built with CMAKE_ARGS="-DGGML_CUDA=on"; python/gpu_run.sh
installs .whl and builds build-gpu first, then `python/gpu_run.sh model` runs this command):

    GGML_REROPE_LIBRARY=build-gpu/src/libggml_rerope.so PYTHONPATH=$PWD \\
        python3 python/bench_gpu_model.py --out /tmp/llama3-8b-random-q4_0.gguf --json $OUT/bench_model.json

CPU self-check (tiny shape, seconds):

    GGML_REROPE_LIBRARY=build-bench/src/libggml_rerope.so PYTHONPATH=$PWD \\
        python python/bench_gpu_model.py --shape tiny --ngl 0 --contexts 256 --out /tmp/tiny.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
import traceback
from typing import Optional

import numpy as np

TARGET_RATIO = 0.9
ENGINES = ("ours", "llama.cpp")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=("8b", "tiny"), default="8b", help="model shape (tiny: CPU self-check)")
    p.add_argument("--out",
                   help="GGUF path (default /tmp/ggml_rerope_bench_<shape>_q4_0.gguf); reused if it has the shape")
    p.add_argument("--contexts", default="8192,32768", help="comma-separated contexts N (default 8192,32768)")
    p.add_argument("--ngl", type=int, default=-1, help="layers on the GPU, both engines (-1 all; 0 CPU)")
    p.add_argument("--n-batch", type=int, default=None,
                   help="batch of both engines (default 2048 with a GPU, 512 on CPU)")
    p.add_argument("--n-ubatch", type=int, default=None, help="llama.cpp micro-batch (default = --n-batch)")
    p.add_argument("--decode", type=int, default=64, help="greedy decode steps after the prompt (default 64)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per engine and context; medians reported")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of both engines (default: all cores)")
    p.add_argument("--engines", default=",".join(ENGINES), help="which engines (default ours,llama.cpp)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the prompt")
    p.add_argument("--json", help="also write the results as JSON to this path")
    from ggml_rerope.cache_flags import add_cache_type_arguments

    add_cache_type_arguments(p)
    return p


# -- device -----------------------------------------------------------------------------------


def gpu_name() -> Optional[str]:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # no torch, or a broken CUDA runtime: the CPU name is recorded instead
        pass
    return None


# -- engines ----------------------------------------------------------------------------------


def make_engine(kind: str, path: str, n_ctx: int, args):
    """The engines of `python -m ggml_rerope.bench model`, with both on the GPU (--ngl)."""
    from ggml_rerope.bench.model import LlamaCpp, Ours
    from ggml_rerope.cache_flags import cache_types

    type_k, type_v = cache_types(args)  # the same for both engines
    if kind == "ours":  # window None: the default n_ctx_train / 2, log-n on
        return Ours(path, n_ctx, args.threads, args.n_batch, None, n_gpu_layers=args.ngl, type_k=type_k,
                    type_v=type_v)
    return LlamaCpp(path, n_ctx, args.threads, args.n_batch, args.n_ubatch, n_gpu_layers=args.ngl, type_k=type_k,
                    type_v=type_v)


def contexts_and_engines(args, floor: int, floor_flag: str) -> tuple:
    """--contexts (integers > floor) and --engines (some of ENGINES); ValueError naming the flag."""
    try:
        contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--contexts must be comma-separated integers, got {args.contexts!r}") from None
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not contexts or min(contexts) <= floor:
        raise ValueError(f"--contexts must be > {floor_flag} ({floor}), got {args.contexts!r}")
    if any(e not in ENGINES for e in engines) or not engines:
        raise ValueError(f"--engines must name some of {','.join(ENGINES)}, got {args.engines!r}")
    return contexts, engines


def model_path(args) -> str:
    return args.out or f"/tmp/ggml_rerope_bench_{args.shape}_q4_0.gguf"


# -- measuring (ggml_rerope.bench.model.measure) ----------------------------------------------


def run(args) -> dict:
    from ggml_rerope.bench.machine import cpu_name
    from ggml_rerope.bench.model import measure
    from ggml_rerope.bench.random_llama_gguf import SHAPES, ensure_model
    from ggml_rerope.cache_flags import cache_types

    contexts, engines = contexts_and_engines(args, args.decode, "--decode")
    for name in ("decode", "repeats", "n_batch", "n_ubatch", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    out = model_path(args)
    t0 = time.perf_counter()
    path, reused = ensure_model(out, args.shape, args.seed)
    gen_s = time.perf_counter() - t0
    print(f"model {path}: {'reused' if reused else f'written in {gen_s:.1f} s'}, "
          f"{os.path.getsize(path) / 2**20:.1f} MiB", flush=True)
    gpu = gpu_name() if args.ngl != 0 else None
    result = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": gpu or cpu_name(), "gpu": gpu, "cpu": cpu_name(),
        "model": str(path), "shape": args.shape, "shape_params": SHAPES[args.shape],
        "cache_types": "/".join(cache_types(args)),
        "model_reused": reused, "model_write_s": None if reused else gen_s,
        "ngl": args.ngl, "n_batch": args.n_batch, "n_ubatch": args.n_ubatch, "threads": args.threads,
        "decode_tokens": args.decode, "repeats": args.repeats, "target": f"ours >= {TARGET_RATIO}x llama.cpp",
        "rows": [],
    }
    rng = np.random.default_rng(args.seed + 1)
    n_vocab = int(SHAPES[args.shape]["n_vocab"])
    for n in contexts:
        prompt = rng.integers(0, n_vocab, n - args.decode, dtype=np.int32)  # same ids for both engines
        row: dict[str, object] = {"ctx": n, "prompt_tokens": int(prompt.size)}
        for kind in engines:  # one engine alive at a time (GPU memory)
            eng = None
            try:
                t1 = time.perf_counter()
                eng = make_engine(kind, str(path), n, args)
                load_s = time.perf_counter() - t1
                row[kind] = measure(eng, prompt, args.decode, args.repeats, warmup=args.n_batch)
                row[kind].update(label=eng.label, load_s=load_s)
            except Exception as e:  # keep the other engine's numbers; the exit status says it failed
                traceback.print_exc()
                row[kind] = {"error": f"{type(e).__name__}: {e}"}
            finally:
                if eng is not None:
                    eng.close()
        if all("prefill_tok_s" in row.get(k, {}) for k in ENGINES):
            row["ratio"] = {ph: row["ours"][f"{ph}_tok_s"] / row["llama.cpp"][f"{ph}_tok_s"]
                            for ph in ("prefill", "decode")}
        result["rows"].append(row)
        print_row(row, engines, first=len(result["rows"]) == 1, result=result)
    return result


def print_row(row: dict, engines: list[str], first: bool, result: dict) -> None:
    if first:
        print(f"device {result['device']}; ngl {result['ngl']}, n_batch {result['n_batch']}, "
              f"n_ubatch {result['n_ubatch']}, {result['threads']} threads, decode {result['decode_tokens']} "
              f"tokens, medians of {result['repeats']}")
        for k in engines:
            if "label" in row.get(k, {}):
                print(f"  {k}: {row[k]['label']}")
        print(f"{'ctx':>6}  {'phase':<8}" + "".join(f"{k + ' tok/s':>18}" for k in engines)
              + (f"{'ours/llama.cpp':>16}  target {TARGET_RATIO}x" if len(engines) == 2 else ""))
    for i, ph in enumerate(("prefill", "decode")):
        cells = ""
        for k in engines:
            r = row.get(k, {})
            cells += f"{r[ph + '_tok_s']:>18.1f}" if ph + "_tok_s" in r else f"{'error':>18}"
        tail = ""
        if "ratio" in row:
            ratio = row["ratio"][ph]
            tail = f"{ratio:>15.2f}x  {'met' if ratio >= TARGET_RATIO else 'MISSED'}"
        print(f"{(str(row['ctx']) if i == 0 else ''):>6}  {ph:<8}{cells}{tail}")
    for k in engines:
        if "error" in row.get(k, {}):
            print(f"        {k} failed: {row[k]['error']}")
    sys.stdout.flush()


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_batch is None:
        args.n_batch = 512 if args.ngl == 0 else 2048
    if args.n_ubatch is None:
        args.n_ubatch = args.n_batch
    if args.threads is None:
        from ggml_rerope.host import usable_cores

        args.threads = usable_cores()
    try:
        result = run(args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    failed = any("error" in row.get(k, {}) for row in result["rows"] for k in ENGINES)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
