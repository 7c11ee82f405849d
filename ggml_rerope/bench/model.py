"""Model benchmark: `python -m ggml_rerope.bench model [MODEL] --ctx N [N ...] [--vs-llama-cpp]`.

For each N: prefill tokens/s over an N-token prompt (the shared text) and decode tokens/s at
depth N (greedy, --decode tokens after the prefill), medians over --repeats, for ours (ReRoPE,
window --window) and, with --vs-llama-cpp, llama.cpp through llama-cpp-python's C API (flash
attention on, same threads, batch = ubatch, f16 KV cache, n_ctx = N + decode tokens). Also KV
bytes per token (ours: the runtime's count; llama.cpp: 2 * n_layer * n_head_kv * head_dim * 2 for
f16) and peak resident memory, each engine in a child process of its own that loads model +
context and runs the prefill (peak_rss_self: VmHWM, as ru_maxrss of a forked child would
include the parent's pages). Both engines get the same token ids.
"""

from __future__ import annotations

import argparse
import builtins
import functools
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

import numpy as np

from ..cache_flags import add_cache_type_arguments, cache_types
from ..host import usable_cores


def default_text() -> Optional[pathlib.Path]:
    repo = pathlib.Path(__file__).resolve().parents[2]
    for p in (repo.parent / "shared" / "data" / "war_and_peace.txt", repo / "shared" / "data" / "war_and_peace.txt"):
        if p.is_file():
            return p
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ggml_rerope.bench model", description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="GGUF file (default: the bundled SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--ctx", type=int, nargs="+", required=True, help="prompt length(s) N in tokens")
    p.add_argument("--vs-llama-cpp", action="store_true", help="measure llama.cpp in the same run")
    p.add_argument("--threads", type=int, default=None, help="threads for both engines (default: all cores)")
    p.add_argument("--batch", type=int, default=512, help="micro-batch (llama.cpp n_batch = n_ubatch)")
    p.add_argument("--repeats", type=int, default=3, help="repeats; medians are reported")
    p.add_argument("--decode", type=int, default=32, help="decode tokens measured after the prefill")
    p.add_argument("--window", type=int, default=1024, help="our ReRoPE window")
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                   help="layers on the GPU for both engines, llama.cpp's count (the output head first; -1: all)")
    p.add_argument("--text", help="text file the prompt comes from (default ../shared/data/war_and_peace.txt)")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-memory child processes")
    add_cache_type_arguments(p)  # both engines get the same cache types
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--rss-child", choices=("ours", "llama.cpp"), help=argparse.SUPPRESS)
    p.add_argument("--tokens-file", help=argparse.SUPPRESS)
    return p


# -- engines ----------------------------------------------------------------------------------


class Ours:
    name = "ours"

    def __init__(self, path: str, n_ctx: int, threads: int, batch: int, window: Optional[int],
                 n_gpu_layers: int = 0, type_k: str = "f16", type_v: str = "f16"):
        from ..model import Model

        self.m = Model(path, n_ctx=n_ctx, n_threads=threads, n_batch=batch, rope_scaling="rerope",
                       rerope_window=window, n_gpu_layers=n_gpu_layers, type_k=type_k, type_v=type_v)
        self.label = f"ours ({self.m.scheme.describe()})"

    def reset(self):
        self.m.reset()

    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        return self.m.eval(tokens)

    def decode(self, token: int) -> np.ndarray:
        return self.m.eval([token])

    def kv_bytes_per_token(self) -> int:
        return self.m.kv_bytes_per_token

    def close(self):
        self.m.close()


class LlamaCpp:
    """llama.cpp through the one llama.cpp driver (ggml_rerope.llama_cpp_engine; no Llama object)."""

    name = "llama.cpp"
    label = "llama.cpp (flash attn)"

    def __init__(self, path: str, n_ctx: int, threads: int, batch: int, ubatch: Optional[int] = None,
                 n_gpu_layers: int = 0, type_k: str = "f16", type_v: str = "f16"):
        from ..kv_quant import TYPE_IDS  # ggml's type ids, what llama.cpp takes
        from ..llama_cpp_engine import LlamaCppEngine

        self.engine = LlamaCppEngine(path, n_ctx, n_batch=batch, n_ubatch=ubatch, n_threads=threads,
                                     n_gpu_layers=n_gpu_layers, flash_attn=True, type_k=TYPE_IDS[type_k],
                                     type_v=TYPE_IDS[type_v])

    def reset(self):
        self.engine.reset()

    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        return self.engine.eval(tokens)

    def decode(self, token: int) -> np.ndarray:
        return self.engine.eval([token])

    def kv_bytes_per_token(self) -> int:
        return self.engine.kv_bytes_per_token()

    def close(self):
        self.engine.close()


def make_engine(kind: str, path: str, n_ctx: int, args):
    type_k, type_v = cache_types(args)
    if kind == "ours":
        return Ours(path, n_ctx, args.threads, args.batch, args.window, n_gpu_layers=args.n_gpu_layers, type_k=type_k,
                    type_v=type_v)
    return LlamaCpp(path, n_ctx, args.threads, args.batch, n_gpu_layers=args.n_gpu_layers, type_k=type_k,
                    type_v=type_v)


# -- measuring --------------------------------------------------------------------------------


def measure(engine, tokens: np.ndarray, n_decode: int, repeats: int, warmup: int = 64) -> dict[str, object]:
    """Median prefill and decode tokens/s; one untimed warm-up pass of `warmup` tokens first
    (graph allocation; on a GPU, a full batch so its start-up is out of the timing)."""
    engine.reset()
    logits = engine.prefill(tokens[: min(len(tokens), warmup)])
    engine.decode(int(np.argmax(logits)))
    prefill, decode, finite = [], [], True
    for _ in range(repeats):
        engine.reset()
        t0 = time.perf_counter()
        logits = engine.prefill(tokens)
        prefill.append(len(tokens) / (time.perf_counter() - t0))
        finite &= bool(np.isfinite(logits).all())
        t0 = time.perf_counter()
        for _ in range(n_decode):
            logits = engine.decode(int(np.argmax(logits)))
        decode.append(n_decode / (time.perf_counter() - t0))
        finite &= bool(np.isfinite(logits).all())
    return {
        "prefill_tok_s": statistics.median(prefill),
        "decode_tok_s": statistics.median(decode),
        "prefill_runs": prefill,
        "decode_runs": decode,
        "logits_finite": finite,
    }


def peak_rss_child(kind: str, path: str, tokens_file: str, n_ctx: int, args) -> int:
    """Peak resident bytes of a fresh process that loads `kind` and runs the prefill."""
    cmd = [sys.executable, "-m", "ggml_rerope.bench.model", path, "--ctx", str(n_ctx), "--rss-child", kind,
           "--tokens-file", tokens_file, "--threads", str(args.threads), "--batch", str(args.batch),
           "--window", str(args.window), "--decode", str(args.decode), "-ngl", str(args.n_gpu_layers)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{kind} memory child failed: {r.stderr.strip()[-500:]}")
    return int(json.loads(r.stdout.strip().splitlines()[-1])["maxrss_bytes"])


def peak_rss_self() -> int:
    """Peak resident bytes of this process. Linux: VmHWM of /proc/self/status, because getrusage's
    ru_maxrss survives exec: a child forked from a big parent would report the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if sys.platform == "darwin" else kb * 1024  # bytes on macOS, KiB elsewhere


def rss_child_main(args) -> int:
    tokens = np.load(args.tokens_file)
    engine = make_engine(args.rss_child, args.model, len(tokens) + args.decode, args)
    engine.prefill(tokens)
    print(json.dumps({"maxrss_bytes": peak_rss_self()}))
    engine.close()
    return 0


def prompt_tokens(model_path: str, text_path: pathlib.Path, n: int) -> np.ndarray:
    from ..tokenizer import Tokenizer

    tok = Tokenizer(model_path)
    try:
        n_chars = 8 * n
        with open(text_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        while True:
            ids = tok.tokenize(text[:n_chars], add_bos=True)
            if len(ids) >= n or n_chars >= len(text):
                break
            n_chars *= 2
    finally:
        tok.close()
    if len(ids) < n:
        raise ValueError(f"{text_path} has only {len(ids)} tokens, fewer than --ctx {n}")
    return np.asarray(ids[:n], dtype=np.int32)


def verdicts(row: dict) -> dict[str, str]:
    out = {}
    o, ref = row["ours"], row.get("llama.cpp")
    if not ref:
        return out
    for key, name in (("prefill_tok_s", "prefill"), ("decode_tok_s", "decode")):
        ratio = o[key] / ref[key]
        out[name] = f"{'met' if ratio >= 1.0 else 'MISSED'} ({ratio:.2f}x)"
    out["kv"] = "met (equal)" if o["kv_bytes_per_token"] == ref["kv_bytes_per_token"] else (
        f"MISSED ({o['kv_bytes_per_token']} vs {ref['kv_bytes_per_token']})")
    if o.get("peak_rss_bytes") and ref.get("peak_rss_bytes"):
        ratio = o["peak_rss_bytes"] / ref["peak_rss_bytes"]
        out["rss"] = f"{'met' if ratio <= 1.1 else 'MISSED'} ({ratio:.2f}x)"
    return out


def run(args) -> dict:
    from ..default_model import default_model_path

    path = args.model or default_model_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    text = pathlib.Path(args.text) if args.text else default_text()
    if text is None or not text.is_file():
        raise FileNotFoundError("no text: pass --text PATH (default ../shared/data/war_and_peace.txt)")
    if args.threads is None:
        args.threads = usable_cores()
    for name in ("batch", "repeats", "decode", "window", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1")
    kinds = ["ours"] + (["llama.cpp"] if args.vs_llama_cpp else [])
    result = {"model": path, "text": str(text), "threads": args.threads, "batch": args.batch,
              "decode_tokens": args.decode, "repeats": args.repeats, "window": args.window,
              "n_gpu_layers": args.n_gpu_layers,
              "cache_types": "/".join(cache_types(args)), "rows": []}
    for n in args.ctx:
        if n < 1:
            raise ValueError("--ctx must be >= 1")
        tokens = prompt_tokens(path, text, n)
        row = {"ctx": n}
        for kind in kinds:  # one engine alive at a time
            eng = make_engine(kind, path, n + args.decode, args)
            try:
                row[kind] = measure(eng, tokens, args.decode, args.repeats)
                row[kind]["kv_bytes_per_token"] = eng.kv_bytes_per_token()
                row[kind]["label"] = eng.label
            finally:
                eng.close()
            # each engine's numbers as soon as they exist: a long run cut short still says something
            print(f"[{kind} at {n} tokens: prefill {row[kind]['prefill_tok_s']:.1f} tok/s, decode "
                  f"{row[kind]['decode_tok_s']:.1f} tok/s]", file=sys.stderr, flush=True)
        if not args.no_rss:
            with tempfile.TemporaryDirectory() as d:
                tf = os.path.join(d, "tokens.npy")
                np.save(tf, tokens)
                for kind in kinds:
                    row[kind]["peak_rss_bytes"] = peak_rss_child(kind, path, tf, n, args)
        row["verdicts"] = verdicts(row)
        result["rows"].append(row)
        # the table goes to stdout, or to stderr when stdout carries the JSON
        print_row(row, first=len(result["rows"]) == 1, result=result, out=sys.stderr if args.json else sys.stdout)
    return result


def print_row(row: dict, first: bool, result: dict, out=None) -> None:
    out = out or sys.stdout
    print = functools.partial(builtins.print, file=out)  # noqa: A001
    kinds = [k for k in ("ours", "llama.cpp") if k in row]
    if first:
        print(f"model {os.path.basename(result['model'])}, {result['threads']} threads, batch {result['batch']}, "
              f"decode {result['decode_tokens']} tokens, medians of {result['repeats']}")
        print("  ".join(f"{row[k]['label']}" for k in kinds))
        head = f"{'ctx':>6}  {'metric':<16}" + "".join(f"{k:>14}" for k in kinds)
        if len(kinds) == 2:
            head += f"{'ratio':>9}  target"
        print(head)
    n = row["ctx"]
    v = row["verdicts"]
    lines = [("prefill tok/s", "prefill_tok_s", "{:.1f}", "prefill"),
             ("decode tok/s", "decode_tok_s", "{:.1f}", "decode"),
             ("KV bytes/token", "kv_bytes_per_token", "{:.0f}", "kv"),
             ("peak RSS MiB", "peak_rss_bytes", "{:.1f}", "rss")]
    for i, (label, key, fmt, vk) in enumerate(lines):
        if key not in row["ours"]:
            continue
        scale = 1 / 2**20 if key == "peak_rss_bytes" else 1
        cells = "".join(f"{fmt.format(row[k][key] * scale):>14}" for k in kinds)
        tail = ""
        if len(kinds) == 2:
            tail = f"{row['ours'][key] / row['llama.cpp'][key]:>8.2f}x  {v.get(vk, '')}"
        print(f"{(str(n) if i == 0 else ''):>6}  {label:<16}{cells}{tail}")
    out.flush()


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rss_child:
        return rss_child_main(args)
    try:
        result = run(args)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
