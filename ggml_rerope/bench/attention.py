"""Operator benchmark: `python -m ggml_rerope.bench attention [--json] [--threads 2] [--repeats N] [--quick]`.

Per shape (SmolLM2: 9 q / 3 kv heads, d=64; Llama-3-8B: 32 / 8, d=128), f16 K/V, causal
prefill of n tokens, all measured in one run, medians of --repeats:
  rerope   our kernel, ReRoPE w=1024
  rope     the same kernel with w > n (plain RoPE)
  naive    two full score matrices per head (near and far, like the transformers patch),
           NumPy float32, one head at a time; skipped where it would need > 4 GB
  ggml_fa  ggml_rope_ext on q and k + ggml_flash_attn_ext (f16 K/V, causal mask), inside the
           timed ggml graph, same threads
and decode (1 query, n_kv = 16384, w=1024) in GB/s of K+V read, against copying the same bytes
with NumPy (1 thread, and --threads threads each copying a part).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time

import numpy as np

from .. import _binding
from .ggml_graphs import FlashAttnRope

SHAPES = {"smollm2": (9, 3, 64), "llama3-8b": (32, 8, 128)}
WINDOW = 1024
NAIVE_LIMIT_BYTES = 4 << 30


class HostCall:
    """ggml_rerope_attn_host with pointers cast once, so the timing is the C call alone."""

    def __init__(self, q, k, v, window, threads, q_pos=None):
        ffi, lib = _binding.ffi, _binding.lib
        n_q, h, d = q.shape
        n_kv, h_kv, _ = k.shape
        self.arrays = [q, k, v]
        self.out = np.empty_like(q)
        self.qp = None if q_pos is None else np.ascontiguousarray(q_pos, dtype=np.int32)
        ptr = lambda t, a: ffi.cast(t, a.ctypes.data)  # noqa: E731
        self.call = call = ffi.new("ggml_rerope_attn_call *")
        call.params = lib.ggml_rerope_default_params(d)
        call.params.window = int(window)
        call.q, call.k, call.v = ptr("const float *", q), ptr("const void *", k), ptr("const void *", v)
        call.out = ptr("float *", self.out)
        call.q_pos = ffi.NULL if self.qp is None else ptr("const int32_t *", self.qp)
        call.n_q, call.n_head, call.n_kv, call.n_head_kv = n_q, h, n_kv, h_kv
        call.k_type = call.v_type = lib.GGML_REROPE_KV_F16 if k.dtype == np.float16 else lib.GGML_REROPE_KV_F32
        self.threads = int(threads)

    def __call__(self):
        status = _binding.lib.ggml_rerope_attn_host(self.call, self.threads)
        if status != 0:
            raise RuntimeError(_binding.last_error())
        return self.out


def naive_two_path(q, k, v, window):
    """ReRoPE as the transformers patch computes it: for each head, a full score matrix with
    RoPE (near) and one with the query rotated by w and keys unrotated (far), then a select,
    a causal mask and a softmax. NumPy float32, one head at a time."""
    n, h, d = q.shape
    h_kv = k.shape[1]
    half = d // 2
    theta = (10000.0 ** (-2.0 * np.arange(half) / d)).astype(np.float64)

    def rot(x, pos):
        ang = pos[:, None].astype(np.float64) * theta
        c, s = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
        y = x.copy()
        y[:, 0::2] = x[:, 0::2] * c - x[:, 1::2] * s
        y[:, 1::2] = x[:, 0::2] * s + x[:, 1::2] * c
        return y

    pos = np.arange(n)
    dist = pos[:, None] - pos[None, :]
    near_sel = dist < window
    causal = dist >= 0
    out = np.empty((n, h, d), np.float32)
    scale = np.float32(1.0 / np.sqrt(d))
    kf = k.astype(np.float32)
    vf = v.astype(np.float32)
    for head in range(h):
        g = head // (h // h_kv)
        qh = q[:, head, :]
        s_near = rot(qh, pos) @ rot(kf[:, g, :], pos).T
        s_far = rot(qh, np.full(n, window)) @ kf[:, g, :].T
        s = np.where(near_sel, s_near, s_far) * scale
        s = np.where(causal, s, -np.inf)
        s -= s.max(axis=1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=1, keepdims=True)
        out[:, head, :] = s @ vf[:, g, :]
    return out


def naive_bytes(n):
    return 6 * n * n * 4  # two score matrices, select, mask and temporaries (float32)


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_rate(arrays, threads, repeats):
    """GB/s of copying `arrays` (bytes read) with `threads` Python threads (NumPy releases the GIL)."""
    dsts = [np.empty_like(a) for a in arrays]
    total = sum(a.nbytes for a in arrays)
    flat = [(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)) for a, b in zip(arrays, dsts)]

    def work(i):
        for src, dst in flat:
            lo, hi = len(src) * i // threads, len(src) * (i + 1) // threads
            np.copyto(dst[lo:hi], src[lo:hi])

    def run():
        if threads == 1:
            work(0)
            return
        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    run()
    return total / median_time(run, repeats) / 1e9


def make_inputs(n_q, n_kv, h, h_kv, d, rng):
    q = rng.standard_normal((n_q, h, d), dtype=np.float32)
    k = rng.standard_normal((n_kv, h_kv, d), dtype=np.float32).astype(np.float16)
    v = rng.standard_normal((n_kv, h_kv, d), dtype=np.float32).astype(np.float16)
    return q, k, v


def bench_prefill(shape, n, args, rng, log):
    h, h_kv, d = SHAPES[shape]
    q, k, v = make_inputs(n, n, h, h_kv, d, rng)
    row = {"shape": shape, "n": n}
    rerope = HostCall(q, k, v, WINDOW, args.threads)
    rope = HostCall(q, k, v, n + 1, args.threads)
    rerope()
    rope()
    row["rerope_s"] = median_time(rerope, args.repeats)
    row["rope_s"] = median_time(rope, args.repeats)
    fa = FlashAttnRope(q, k, v, threads=args.threads)
    try:
        fa.run()
        row["ggml_fa_s"] = median_time(fa.run, args.repeats)
    finally:
        fa.free()
    if n > args.naive_max_n:
        row["naive_s"] = None
        row["naive_note"] = f"skipped: n > {args.naive_max_n}"
    elif naive_bytes(n) > NAIVE_LIMIT_BYTES:
        row["naive_s"] = None
        row["naive_note"] = f"skipped: needs ~{naive_bytes(n) / 2**30:.1f} GB per head (> 4 GB)"
    else:
        reps = 1 if n >= 8192 else args.repeats
        row["naive_s"] = median_time(lambda: naive_two_path(q, k, v, WINDOW), reps)
        row["naive_repeats"] = reps
    row["rerope_over_rope"] = row["rerope_s"] / row["rope_s"]
    row["rerope_over_ggml_fa"] = row["rerope_s"] / row["ggml_fa_s"]
    row["naive_over_rerope"] = row["naive_s"] / row["rerope_s"] if row["naive_s"] else None
    log(row)
    return row


def bench_decode(shape, n_kv, args, rng, log):
    h, h_kv, d = SHAPES[shape]
    q, k, v = make_inputs(1, n_kv, h, h_kv, d, rng)
    call = HostCall(q, k, v, WINDOW, args.threads)
    call()
    reps = max(args.repeats, 20)
    t = median_time(call, reps)
    kv_bytes = k.nbytes + v.nbytes
    row = {"shape": shape, "n_kv": n_kv, "kv_bytes": kv_bytes, "decode_s": t, "decode_gbs": kv_bytes / t / 1e9,
           "memcpy_gbs_1thread": copy_rate([k, v], 1, reps),
           "memcpy_gbs_threads": copy_rate([k, v], args.threads, reps)}
    row["memcpy_gbs"] = max(row["memcpy_gbs_1thread"], row["memcpy_gbs_threads"])
    row["decode_pct_of_memcpy"] = 100.0 * row["decode_gbs"] / row["memcpy_gbs"]
    log(row)
    return row


def verdicts(prefill, decode):
    out = []
    for r in prefill:
        if r["n"] in (8192, 16384):
            out.append((f"{r['shape']} n={r['n']}: ReRoPE / same-kernel RoPE <= 1.10", r["rerope_over_rope"] <= 1.10,
                        f"{r['rerope_over_rope']:.3f}"))
        out.append((f"{r['shape']} n={r['n']}: ReRoPE / ggml FA+RoPE <= 1.0", r["rerope_over_ggml_fa"] <= 1.0,
                    f"{r['rerope_over_ggml_fa']:.3f}"))
        if r["n"] == 8192:
            ok = r["naive_over_rerope"] is not None and r["naive_over_rerope"] >= 20
            val = "not measured" if r["naive_over_rerope"] is None else f"{r['naive_over_rerope']:.1f}x"
            out.append((f"{r['shape']} n=8192: naive / ReRoPE >= 20", ok, val))
    for r in decode:
        out.append((f"{r['shape']} decode n_kv={r['n_kv']}: >= 70% of memcpy", r["decode_pct_of_memcpy"] >= 70,
                    f"{r['decode_pct_of_memcpy']:.0f}%"))
    return [{"target": t, "met": bool(m), "value": v} for t, m, v in out]


def print_table(result):
    print(f"\nReRoPE attention operator, f16 K/V, {result['threads']} threads, medians of {result['repeats']} "
          f"(simd: {result['simd']})")
    hdr = f"{'shape':<10} {'n':>6} {'rerope w=1024':>14} {'rope (w>n)':>11} {'naive':>9} {'ggml FA+rope':>13}" \
          f" {'re/rope':>8} {'re/FA':>6} {'naive/re':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in result["prefill"]:
        naive = f"{r['naive_s']:.3f}" if r["naive_s"] else "skipped"
        nr = f"{r['naive_over_rerope']:.1f}x" if r["naive_over_rerope"] else "-"
        print(f"{r['shape']:<10} {r['n']:>6} {r['rerope_s']:>13.3f}s {r['rope_s']:>10.3f}s {naive:>9}"
              f" {r['ggml_fa_s']:>12.3f}s {r['rerope_over_rope']:>8.3f} {r['rerope_over_ggml_fa']:>6.3f} {nr:>9}")
    for r in result["prefill"]:
        if r.get("naive_note"):
            print(f"  naive {r['shape']} n={r['n']}: {r['naive_note']}")
    print(f"\n{'decode':<10} {'n_kv':>6} {'K+V MB':>7} {'time':>9} {'GB/s':>7} {'memcpy 1t':>10} "
          f"{'memcpy Nt':>10} {'% memcpy':>9}")
    for r in result["decode"]:
        print(f"{r['shape']:<10} {r['n_kv']:>6} {r['kv_bytes'] / 1e6:>7.1f} {r['decode_s'] * 1e3:>7.3f}ms"
              f" {r['decode_gbs']:>7.1f} {r['memcpy_gbs_1thread']:>10.1f} {r['memcpy_gbs_threads']:>10.1f}"
              f" {r['decode_pct_of_memcpy']:>8.0f}%")
    print("\n(% memcpy is against the faster of the two copies)\ntargets:")
    for v in result["verdicts"]:
        print(f"  [{'met' if v['met'] else 'MISSED'}] {v['target']}: {v['value']}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ggml_rerope.bench attention", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print the results as JSON only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every column")
    ap.add_argument("--sizes", type=int, nargs="+", help="prefill lengths (default 2048 8192 16384)")
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    ap.add_argument("--decode-only", action="store_true", help="skip the prefill table")
    ap.add_argument("--save", metavar="PATH", help="also write the JSON result to PATH")
    ap.add_argument("--naive-max-n", type=int, default=8192, help="largest n the naive version runs at")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        ap.error("--threads and --repeats must be >= 1")
    if args.sizes is not None and min(args.sizes) < 1:
        ap.error(f"--sizes must be >= 1, got {min(args.sizes)}")
    sizes = args.sizes or ([128, 320] if args.quick else [2048, 8192, 16384])
    n_decode = 2048 if args.quick else 16384
    if args.quick:
        args.repeats = min(args.repeats, 2)
    rng = np.random.default_rng()
    log = (lambda row: None) if args.json else (lambda row: print("  measured", row, flush=True))
    prefill = [] if args.decode_only else [bench_prefill(s, n, args, rng, log) for s in args.shapes for n in sizes]
    decode = [bench_decode(s, n_decode, args, rng, log) for s in args.shapes]
    simd = _binding.ffi.string(_binding.lib.ggml_rerope_simd_name(_binding.lib.ggml_rerope_get_simd())).decode()
    result = {"threads": args.threads, "repeats": args.repeats, "simd": simd, "window": WINDOW,
              "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "prefill": prefill, "decode": decode}
    result["verdicts"] = verdicts(prefill, decode)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(result, f, indent=2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return result
