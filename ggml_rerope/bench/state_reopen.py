"""How long a saved document takes to reopen (llama.cpp's --prompt-cache): a state file of N tokens is
written, then a fresh process loads the model, load_state_file's the state and evaluates one token, each
step timed. The file is made by tiling the state of a short real prefill up to N rows (what a reopen
costs depends on the bytes, not on their values; a real 30k prefill takes minutes on a laptop).

    python -m ggml_rerope.bench state-reopen [model.gguf] [--tokens 30000] [-ctk T -ctv T] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from ..cache_flags import add_cache_type_arguments, cache_types

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from ggml_rerope import Model
path, state_path, n_ctx, type_k, type_v, threads = sys.argv[1:7]
m = Model(path, n_ctx=int(n_ctx), n_threads=int(threads), type_k=type_k, type_v=type_v)
t1 = time.perf_counter()
m.load_state_file(state_path)
t2 = time.perf_counter()
n_loaded = m.n_past
m.eval([13])
t3 = time.perf_counter()
print(json.dumps({"import_and_model_load_s": t1 - t0, "load_state_file_s": t2 - t1, "first_token_s": t3 - t2,
                  "n_loaded": n_loaded}))
"""


def write_tiled_state(path: str, model_path: str, n: int, n_fill: int, type_k: str, type_v: str, threads: int) -> int:
    """Writes a state of n tokens (a prefill of n_fill tokens repeated); returns the file's bytes."""
    from .. import Model
    from ..saved_state import ModelState, model_identity, write_file
    from .kv_decode import tiled_state

    with Model(model_path, n_ctx=n + 8, n_threads=threads, type_k=type_k, type_v=type_v) as m:
        tokens = [13 + i % 200 for i in range(n_fill)]
        m.eval(tokens)
        ctx = m._live()
        kv = tiled_state(ctx, ctx.model.info, n_fill, n, type_k, type_v)
        reps = -(-n // n_fill)
        state = ModelState(tokens=(tokens * reps)[:n], kv=kv, kv_type=m.kv_type,
                           identity=model_identity(m._info_dict), scheme=m.scheme.describe())
        write_file(path, state)
    return os.path.getsize(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="GGUF file (default: the default model)")
    p.add_argument("--tokens", type=int, default=30000, help="tokens in the saved state (default 30000)")
    p.add_argument("--fill", type=int, default=1024, help="tokens really prefilled before tiling (default 1024)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="reopens timed; the median is reported")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_cache_type_arguments(p)
    args = p.parse_args(argv)
    from ..default_model import default_model_path

    model_path = args.model or default_model_path()
    type_k, type_v = cache_types(args)
    with tempfile.TemporaryDirectory() as tmp:
        state_path = os.path.join(tmp, "doc.state")
        t0 = time.perf_counter()
        size = write_tiled_state(state_path, model_path, args.tokens, args.fill, type_k, type_v, args.threads)
        made = time.perf_counter() - t0
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, "-c", CHILD, model_path, state_path, str(args.tokens + 8), type_k,
                                  type_v, str(args.threads)], capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    runs.sort(key=lambda r: r["load_state_file_s"] + r["first_token_s"])
    med = runs[len(runs) // 2]
    res = {"model": model_path, "tokens": args.tokens, "type_k": type_k, "type_v": type_v, "file_bytes": size,
           "made_s": made, **med, "reopen_s": med["load_state_file_s"] + med["first_token_s"], "runs": runs}
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"state of {args.tokens} tokens ({size / 2**20:.0f} MiB, {type_k}/{type_v}); median of {len(runs)}:")
        print(f"  model load {med['import_and_model_load_s']:.2f} s (with the imports), load_state_file "
              f"{med['load_state_file_s']:.2f} s, first token {med['first_token_s']:.2f} s: reopen "
              f"{res['reopen_s']:.2f} s (target < 1 s)")
    return 0
