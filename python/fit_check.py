"""Checks fit_table's rows on this machine's GPU: the longest context the memory plan allows in G GiB is
loaded by ours (every layer on the GPU, the row's cache type for K and V) and by llama.cpp (CUDA, flash
attention, the same types, n_ctx and n_batch), each in a child process that decodes a few tokens and
then holds still while nvidia-smi reads the device memory in use. Ours must stay within G GiB; llama.cpp's
use at the same context says whether it fits there too.

    python python/fit_check.py model.gguf [...] [--gib 8,24] [--types f16,q8_0,q4_0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fit_table import longest  # noqa: E402

N_BATCH = 512  # memory_plan's default, given to both engines

CHILD = r"""
import sys
engine, path, n_ctx, kv = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if engine == "ours":
    from ggml_rerope import Model
    m = Model(path, n_ctx=n_ctx, n_batch=N_BATCH, n_gpu_layers=-1, type_k=kv, type_v=kv)
    m.eval(list(range(1, 17)))
else:
    from ggml_rerope.kv_quant import TYPE_IDS
    from ggml_rerope.llama_cpp_engine import LlamaCppEngine
    m = LlamaCppEngine(path, n_ctx, n_batch=N_BATCH, n_gpu_layers=-1, flash_attn=True, type_k=TYPE_IDS[kv],
                       type_v=TYPE_IDS[kv])
    m.eval(list(range(1, 17)))
print("READY", flush=True)
sys.stdin.readline()
""".replace("N_BATCH", str(N_BATCH))


def gpu_used_bytes() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) << 20  # MiB


def measure(engine: str, path: str, n_ctx: int, kv: str) -> dict:
    """Device bytes the engine holds with the context loaded (used memory minus the idle baseline)."""
    base = gpu_used_bytes()
    t0 = time.time()
    child = subprocess.Popen([sys.executable, "-c", CHILD, engine, path, str(n_ctx), kv], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline().strip()
    if line != "READY":
        child.kill()
        err = child.stderr.read().strip().splitlines()
        return {"ok": False, "error": err[-1] if err else f"exit {child.wait()}"}
    used = gpu_used_bytes() - base
    child.communicate("\n", timeout=120)
    return {"ok": True, "used": used, "seconds": round(time.time() - t0, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="GGUF files")
    p.add_argument("--gib", default="8,24")
    p.add_argument("--types", default="f16,q8_0,q4_0")
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args()
    rows = []
    for path in a.models:
        for kv in a.types.split(","):
            for gib in (float(x) for x in a.gib.split(",")):
                n_ctx = longest(path, kv, gib)
                row = {"model": os.path.basename(path), "type": kv, "gib": gib, "n_ctx": n_ctx}
                for engine in ("ours", "llama.cpp"):
                    row[engine] = measure(engine, path, n_ctx, kv) if n_ctx else {"ok": False, "error": "n_ctx 0"}
                row["ours_within"] = row["ours"].get("ok") and row["ours"]["used"] <= gib * 2**30
                row["llama_cpp_within"] = row["llama.cpp"].get("ok") and row["llama.cpp"]["used"] <= gib * 2**30
                print(json.dumps(row), flush=True)
                rows.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["ours_within"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
