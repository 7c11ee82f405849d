"""python -m ggml_rerope.bench kv-decode [model] --ctx N [--types f16,q8_0,q4_0]: decode time per
token at a long context for each KV cache type, against f16 in the same run.

Filling a cache of N tokens by prefill takes minutes on a few cores; decode speed only needs N rows
of plausible keys and values. So each context prefills `--fill` real tokens and its saved state is
tiled up to N rows (same bytes repeated: the attention reads every row whatever it holds), loaded
with ggml_rerope_state_set, then decode steps are timed, types interleaved, medians reported.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from typing import Optional

import numpy as np

from .._internals import KV_TYPES, RuntimeContext, RuntimeModel
from ..default_model import default_model_path
from ..kv_quant import row_bytes

_N_PAST_OFFSET = 24  # of n_past in the state header: after magic, version, n_layer, n_head_kv, head_dim, type_k


def tiled_state(ctx: RuntimeContext, info, n_fill: int, n: int, type_k: str, type_v: str) -> bytes:
    """The context's state of n_fill tokens with each layer's K and V rows repeated up to n rows."""
    st = ctx.state_get()
    k_row = row_bytes(type_k, info.head_dim) * info.n_head_kv
    v_row = row_bytes(type_v, info.head_dim) * info.n_head_kv
    header_bytes = len(st) - info.n_layer * n_fill * (k_row + v_row)  # the rest is the rows
    layers = np.frombuffer(st, np.uint8, offset=header_bytes).reshape(info.n_layer, -1)
    k, v = layers[:, : n_fill * k_row], layers[:, n_fill * k_row :]
    reps = -(-n // n_fill)

    def grow(rows: np.ndarray) -> np.ndarray:
        per = rows.shape[1] // n_fill
        return np.tile(rows.reshape(info.n_layer, n_fill, per), (1, reps, 1))[:, :n].reshape(info.n_layer, -1)

    header = bytearray(st[:header_bytes])
    struct.pack_into("i", header, _N_PAST_OFFSET, n)
    return bytes(header) + np.concatenate([grow(k), grow(v)], axis=1).tobytes()


def run(args) -> dict:
    model = RuntimeModel(args.model or default_model_path(), n_gpu_layers=args.n_gpu_layers)
    try:
        info = model.info
        rng = np.random.default_rng(0)
        fill = rng.integers(0, model.n_vocab, args.fill)
        contexts = {}
        for t in args.types:
            ctx = RuntimeContext(model, n_ctx=args.ctx + args.steps, n_threads=args.threads, type_k=KV_TYPES[t],
                                 type_v=KV_TYPES[t])
            ctx.decode(fill, np.zeros(fill.size), np.zeros(fill.size))
            ctx.state_set(tiled_state(ctx, info, args.fill, args.ctx, t, t))
            contexts[t] = ctx
        times: dict[str, list[float]] = {t: [] for t in contexts}
        for _ in range(args.repeats):
            for t, ctx in contexts.items():
                ctx.truncate(args.ctx)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    ctx.decode(np.array([5]), np.zeros(1))
                times[t].append((time.perf_counter() - t0) / args.steps)
        for ctx in contexts.values():
            ctx.close()
    finally:
        model.close()
    base = float(np.median(times[args.types[0]]))
    rows = []
    for t, x in times.items():
        med = float(np.median(x))
        rows.append({"type": t, "ms_per_token": 1e3 * med, f"speed_vs_{args.types[0]}": base / med,
                     "kv_bytes_per_token": row_bytes(t, info.head_dim) * info.n_head_kv * 2 * info.n_layer})
    return {"model": args.model or default_model_path(), "ctx": args.ctx, "threads": args.threads,
            "n_gpu_layers": args.n_gpu_layers, "steps": args.steps, "repeats": args.repeats, "rows": rows}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ggml_rerope.bench kv-decode", description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="GGUF file (default: the default model)")
    p.add_argument("--ctx", type=int, default=32768, help="tokens in the cache when decoding (default 32768)")
    p.add_argument("--types", default="f16,q8_0,q4_0", help="cache types, the first is the baseline")
    p.add_argument("--fill", type=int, default=1024, help="tokens really prefilled before tiling (default 1024)")
    p.add_argument("--steps", type=int, default=4, help="decode steps per timing (default 4)")
    p.add_argument("--repeats", type=int, default=5, help="timings per type; medians (default 5)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, help="-1: the model on the GPU")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.types = [t.strip() for t in args.types.split(",") if t.strip()]
    bad = [t for t in args.types if t not in KV_TYPES]
    if bad or not args.types:
        print(f"error: --types: unknown cache type(s) {bad}; known: {', '.join(KV_TYPES)}", file=sys.stderr)
        return 2
    if args.ctx < 1 or args.fill < 1 or args.fill > args.ctx or args.steps < 1 or args.repeats < 1:
        print("error: need 1 <= --fill <= --ctx, --steps >= 1, --repeats >= 1", file=sys.stderr)
        return 2
    res = run(args)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"decode at {res['ctx']} tokens, {res['threads'] or 'all'} threads, ngl {res['n_gpu_layers']}")
    for r in res["rows"]:
        print(f"  {r['type']:>6}  {r['ms_per_token']:8.2f} ms/token  {r[f'speed_vs_{args.types[0]}']:5.2f}x "
              f"of {args.types[0]}  {r['kv_bytes_per_token'] / 1024:.1f} KiB/token")
    return 0
