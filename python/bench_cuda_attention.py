"""Benchmark of the CUDA ReRoPE attention kernels against torch (results: BENCHMARKS.md, CUDA kernels).

Prefill TFLOP/s (causal, 32 heads, d = 128, FLOPs = 2 n^2 d heads: QK^T and PV over the causal half):
ours ReRoPE w = 1024, ours with w > n (plain RoPE through the same kernel), torch SDPA
(is_causal, bf16), and a naive two-path ReRoPE in torch (two full score matrices per head,
masked select; heads in chunks so it fits). Decode GB/s (1 query, 32 / 8 heads, d = 128, f16
K/V) against a device-to-device copy measured in the same run, plus torch SDPA decode.

Ours: q f32, K/V f16 raw (unrotated), tensor-core operands f16 (same rate as bf16).
--kv-type f16,q8_0,q4_0 (also bf16): our decode and prefill rows for each cache type; K/V quantized
on the GPU in ggml's block layouts. Decode GB/s counts the bytes the type stores (q8_0: 8.5 bits an
element, q4_0: 4.5), so a faster q8_0 decode shows as a shorter time, not a higher GB/s.
Times: CUDA events, warm-up, median of repeats. Decode inputs rotate among several copies
so they are not served from L2 (50 MB on an H100 / H200); decode is timed one call at a time (the host work of
a call exposed) and BACK_TO_BACK calls in a row (as a model's layers run: host work overlapped).

    GGML_REROPE_LIBRARY=build-cuda/src/libggml_rerope.so python python/bench_cuda_attention.py --json out.json
    ... --prefill "" --decode 32768 --kv-type f16,q8_0,q4_0      # decode of each cache type at 32k
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics

import torch
import torch.nn.functional as F

from ggml_rerope import _binding

ffi, lib = _binding.ffi, _binding.lib
D, H, H_KV_DECODE = 128, 32, 8
BACK_TO_BACK = 32  # decode calls per timed sample in the back-to-back rows (one per layer of an 8B model)


def time_ms(fn, warmup=3, reps=10, batch=1):
    """Median ms of one call. batch > 1: each timed sample is `batch` calls issued back to back
    (as a model's layers are), so a call's host work overlaps the GPU work of the one before."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(batch):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / batch)
    return statistics.median(times), times


def params_for(window, d=D):
    p = ffi.new("ggml_rerope_params *", lib.ggml_rerope_default_params(d))
    p.window = int(window)
    return p


KV_TYPE_IDS = {"f16": lib.GGML_REROPE_KV_F16, "bf16": lib.GGML_REROPE_KV_BF16, "q8_0": lib.GGML_REROPE_KV_Q8_0,
               "q4_0": lib.GGML_REROPE_KV_Q4_0}


def quantize(x, kv_type):
    """x (..., d) on the GPU -> the cache rows of kv_type: a half tensor for f16, else uint8
    (..., row bytes) in ggml's layout (q8_0: d = amax / 127; q4_0: d = max / -8, as ggml's
    reference quantizers; rounding ties may differ, which a benchmark does not mind)."""
    if kv_type == "f16":
        return x.half()
    if kv_type == "bf16":
        return x.bfloat16().view(torch.uint8)
    b = x.float().reshape(-1, 32)
    if kv_type == "q8_0":
        d = b.abs().amax(dim=1, keepdim=True) / 127
        q = torch.round(b / torch.where(d > 0, d, torch.ones_like(d))).clamp(-127, 127).to(torch.int8)
        blocks = torch.cat([d.half().view(torch.uint8), q.view(torch.uint8)], dim=1)
    elif kv_type == "q4_0":
        d = b.gather(1, b.abs().argmax(dim=1, keepdim=True)) / -8
        inv = torch.where(d != 0, 1 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
        q = (b * inv + 8.5).trunc().clamp(0, 15).to(torch.uint8)
        blocks = torch.cat([d.half().view(torch.uint8), q[:, :16] | (q[:, 16:] << 4)], dim=1)
    else:
        raise ValueError(f"unknown kv type {kv_type!r}")
    return blocks.reshape(*x.shape[:-1], -1).contiguous()


def ours(params, q, k, v, out, kv_type="f16", k_hadamard=0):
    """ggml_rerope_attn_cuda on torch device tensors (K/V rows of kv_type; k_hadamard: keys stored
    rotated, as the runtime stores quantized caches), on torch's current stream."""
    n_q, n_head, _ = q.shape
    n_kv, n_head_kv, _ = k.shape
    call = ffi.new("ggml_rerope_attn_call *")
    call.params = params[0]
    call.q = ffi.cast("const float *", q.data_ptr())
    call.k = ffi.cast("const void *", k.data_ptr())
    call.v = ffi.cast("const void *", v.data_ptr())
    call.out = ffi.cast("float *", out.data_ptr())
    call.n_q, call.n_head, call.n_kv, call.n_head_kv = n_q, n_head, n_kv, n_head_kv
    call.k_type = call.v_type = KV_TYPE_IDS[kv_type]
    call.k_hadamard = k_hadamard
    st = lib.ggml_rerope_attn_cuda(call, ffi.cast("void *", torch.cuda.current_stream().cuda_stream))
    if st != 0:
        raise RuntimeError(_binding.last_error())


def rotate(x, pos, base=10000.0):
    """NORM-mode RoPE of x (..., n, d) at positions pos (n,) (or a scalar), in f32."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float64) / d)
    ang = (torch.as_tensor(pos, device=x.device, dtype=torch.float64).reshape(-1, 1) * theta).float()
    c, s = torch.cos(ang), torch.sin(ang)
    xf = x.float()
    a, b = xf[..., 0::2], xf[..., 1::2]
    out = torch.empty_like(xf)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def naive_two_path(q, k, v, window, chunk):
    """Reference-patch style ReRoPE: two full n x n score matrices per head, masked select.
    q, k, v: (H, n, d) bf16 raw. Returns (H, n, d) bf16."""
    n = q.shape[1]
    pos = torch.arange(n, device=q.device)
    dist = pos[:, None] - pos[None, :]
    near, causal = dist < window, dist >= 0
    scale = 1.0 / math.sqrt(q.shape[-1])
    qn, kn = rotate(q, pos).bfloat16(), rotate(k, pos).bfloat16()
    qf = rotate(q, window).bfloat16()
    out = torch.empty_like(q)
    for h0 in range(0, q.shape[0], chunk):
        sl = slice(h0, h0 + chunk)
        s1 = qn[sl] @ kn[sl].transpose(-1, -2)
        s2 = qf[sl] @ k[sl].transpose(-1, -2)
        s = torch.where(near, s1, s2).masked_fill_(~causal, float("-inf")) * scale
        del s1, s2
        out[sl] = torch.softmax(s, dim=-1) @ v[sl]
        del s
    return out


def bench_prefill(n, rows, naive_ok, kv_types=("f16",)):
    g = torch.Generator(device="cuda").manual_seed(n)
    q = torch.randn(n, H, D, device="cuda", generator=g)
    k = torch.randn(n, H, D, device="cuda", generator=g).half()
    v = torch.randn(n, H, D, device="cuda", generator=g).half()
    out = torch.empty(n, H, D, device="cuda")
    flops = 2.0 * n * n * D * H
    res = {"n": n}
    reps = 10 if n <= 16384 else 5
    for name, w in (("ours_w1024", 1024), ("ours_w_gt_n", n + 1)):
        ms, _ = time_ms(functools.partial(ours, params_for(w), q, k, v, out), warmup=2, reps=reps)
        res[name] = {"ms": ms, "tflops": flops / ms / 1e9}
    for kv_type in kv_types:  # the other cache types, w = 1024
        if kv_type == "f16":
            continue
        kq, vq = quantize(k.float(), kv_type), quantize(v.float(), kv_type)
        ms, _ = time_ms(functools.partial(ours, params_for(1024), q, kq, vq, out, kv_type), warmup=2, reps=reps)
        res[f"ours_w1024_{kv_type}"] = {"ms": ms, "tflops": flops / ms / 1e9}
        del kq, vq
    qb, kb, vb = (t.transpose(0, 1).unsqueeze(0).bfloat16().contiguous() for t in (q, k, v))
    ms, _ = time_ms(functools.partial(F.scaled_dot_product_attention, qb, kb, vb, is_causal=True), warmup=3, reps=reps)
    res["sdpa_bf16"] = {"ms": ms, "tflops": flops / ms / 1e9}
    free, _ = torch.cuda.mem_get_info()
    per_head = 6 * n * n * 2  # s1, s2, where, mask/softmax temporaries (bf16)
    chunk = int(min(H, max(1, (free * 0.6) // per_head)))
    if naive_ok and per_head < free * 0.6:
        ms, _ = time_ms(functools.partial(naive_two_path, qb[0], kb[0], vb[0], 1024, chunk), warmup=1, reps=3)
        res["naive_two_path"] = {"ms": ms, "tflops": flops / ms / 1e9, "heads_per_chunk": chunk}
    else:
        res["naive_two_path"] = {"skipped": f"needs ~{per_head / 2**30:.1f} GiB per head, {free / 2**30:.1f} free"}
    # Sanity at the benchmarked shape: w > n equals RoPE (SDPA on rotated q, k), and
    # w = 1024 matches the naive two-path (both carry bf16/f16 rounding).
    if n <= rows:
        pos = torch.arange(n, device="cuda")
        p = params_for(n + 1)
        ours(p, q, k, v, out)
        ref = F.scaled_dot_product_attention(rotate(qb, pos), rotate(kb, pos), vb.float(), is_causal=True)
        ref = ref[0].transpose(0, 1)
        res["check_w_gt_n_vs_sdpa_rope_rel_err"] = float((out - ref).norm() / ref.norm())
        ours(params_for(1024), q, k, v, out)
        ref = naive_two_path(qb[0], kb[0], vb[0], 1024, chunk).float().transpose(0, 1)
        res["check_w1024_vs_naive_rel_err"] = float((out - ref).norm() / ref.norm())
    del q, k, v, out, qb, kb, vb
    torch.cuda.empty_cache()
    return res


def copy_bandwidth():
    n = 1 << 28  # 1 GiB of f32
    a = torch.randn(n, device="cuda")
    b = torch.empty_like(a)
    ms, _ = time_ms(functools.partial(b.copy_, a), warmup=3, reps=20)
    del a, b
    torch.cuda.empty_cache()
    return {"bytes": 2 * 4 * n, "ms": ms, "gbs": 2 * 4 * n / ms / 1e6}


def row_bytes(kv_type, d=D):
    return {"f16": 2 * d, "bf16": 2 * d, "q8_0": d // 32 * 34, "q4_0": d // 32 * 18}[kv_type]


def bench_decode(n_kv, copies, kv_type="f16", k_hadamard=0):
    g = torch.Generator(device="cuda").manual_seed(n_kv)
    sets = []
    for _ in range(copies):
        sets.append((torch.randn(1, H, D, device="cuda", generator=g),
                     quantize(torch.randn(n_kv, H_KV_DECODE, D, device="cuda", generator=g), kv_type),
                     quantize(torch.randn(n_kv, H_KV_DECODE, D, device="cuda", generator=g), kv_type)))
    out = torch.empty(1, H, D, device="cuda")
    kv_bytes = 2 * n_kv * H_KV_DECODE * row_bytes(kv_type)
    res = {"n_kv": n_kv, "kv_type": kv_type, "k_hadamard": k_hadamard, "kv_bytes": kv_bytes, "copies": copies}
    p = params_for(1024)
    it = [0]

    def run_ours():
        q, k, v = sets[it[0] % copies]
        it[0] += 1
        ours(p, q, k, v, out, kv_type, k_hadamard)

    ms, _ = time_ms(run_ours, warmup=10, reps=50)
    res["ours_w1024"] = {"ms": ms, "gbs": kv_bytes / ms / 1e6}
    ms, _ = time_ms(run_ours, warmup=10, reps=10, batch=BACK_TO_BACK)
    res["ours_w1024_b2b"] = {"ms": ms, "gbs": kv_bytes / ms / 1e6}
    if kv_type != "f16":
        return res  # torch has no such cache: its rows are the f16 ones
    tsets = [(q.view(1, H, 1, D).bfloat16(), k.transpose(0, 1).unsqueeze(0).contiguous(),
              v.transpose(0, 1).unsqueeze(0).contiguous()) for q, k, v in sets]
    tsets = [(q.half(), k, v) for q, k, v in tsets]

    def run_sdpa():
        q, k, v = tsets[it[0] % copies]
        it[0] += 1
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    ms, _ = time_ms(run_sdpa, warmup=10, reps=50)
    res["sdpa_f16"] = {"ms": ms, "gbs": kv_bytes / ms / 1e6}
    ms, _ = time_ms(run_sdpa, warmup=10, reps=10, batch=BACK_TO_BACK)
    res["sdpa_f16_b2b"] = {"ms": ms, "gbs": kv_bytes / ms / 1e6}
    return res  # the caller empties the CUDA cache: the timed closures hold the tensors until here


def profile_decode(n_kv):
    """Where a decode call's time goes: kernel times (torch profiler / CUPTI) and host time per call."""
    import time

    from torch.profiler import ProfilerActivity, profile

    q = torch.randn(1, H, D, device="cuda")
    k = torch.randn(n_kv, H_KV_DECODE, D, device="cuda").half()
    v = torch.randn(n_kv, H_KV_DECODE, D, device="cuda").half()
    out = torch.empty(1, H, D, device="cuda")
    p = params_for(1024)
    for _ in range(10):
        ours(p, q, k, v, out)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(100):
        ours(p, q, k, v, out)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    print(f"profile decode n_kv={n_kv}: host {1e6 * (t1 - t0) / 100:.1f} us/call issued, "
          f"{1e6 * (t2 - t0) / 100:.1f} us/call to completion")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            ours(p, q, k, v, out)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefill", default="4096,16384,32768")
    ap.add_argument("--decode", default="8192,32768,131072")
    ap.add_argument("--check-rows", type=int, default=4096, help="sanity-check sizes up to this n")
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", action="store_true", help="also profile decode calls (kernel and host times)")
    ap.add_argument("--kv-type", default="f16", help="cache types of our rows, comma-separated: f16,bf16,q8_0,q4_0")
    ap.add_argument("--k-hadamard", type=int, default=0,
                    help="decode: keys of the quantized types stored Hadamard-rotated in blocks of B dims, as the "
                         "runtime stores them (0: not rotated; the runtime uses 128 at d = 128)")
    args = ap.parse_args()
    kv_types = [t for t in args.kv_type.split(",") if t]
    for t in kv_types:
        if t not in KV_TYPE_IDS:
            ap.error(f"--kv-type: unknown type {t!r} (known: {', '.join(KV_TYPE_IDS)})")
    assert lib.ggml_rerope_cuda_available(), "no CUDA in this build / no device"
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "prefill": [], "decode": []}
    if args.profile:
        for n in (8192, 32768, 131072):
            profile_decode(n)
    res["copy"] = copy_bandwidth()
    print(f"copy: {res['copy']['gbs']:.0f} GB/s (read + write)", flush=True)
    for n in [int(x) for x in args.decode.split(",") if x]:
        for kv_type in kv_types:
            # enough copies that one call's K/V is not still in L2 from the call before
            copies = max(1, min(8, (256 << 20) // (2 * n * H_KV_DECODE * row_bytes(kv_type)) + 1))
            r = bench_decode(n, copies, kv_type, args.k_hadamard if kv_type in ("q8_0", "q4_0") else 0)
            torch.cuda.empty_cache()
            res["decode"].append(r)
            print(json.dumps(r), flush=True)
    for n in [int(x) for x in args.prefill.split(",") if x]:
        r = bench_prefill(n, args.check_rows, naive_ok=True, kv_types=kv_types)
        res["prefill"].append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)

    sd = {r["n"]: r["sdpa_bf16"]["tflops"] for r in res["prefill"]}
    print("\n| n | ours w=1024 | ours w>n | SDPA bf16 | naive two-path | ours/SDPA | ours/naive |")
    print("|---|---|---|---|---|---|---|")
    for r in res["prefill"]:
        nv = r["naive_two_path"].get("tflops")
        o = r["ours_w1024"]["tflops"]
        print(f"| {r['n']} | {o:.1f} | {r['ours_w_gt_n']['tflops']:.1f} | {sd[r['n']]:.1f} | "
              f"{f'{nv:.1f}' if nv else 'skipped'} | {o / sd[r['n']]:.2f} | {f'{o / nv:.0f}x' if nv else '-'} |")
    others = [t for t in kv_types if t != "f16"]
    if others and res["prefill"]:
        print("\n| n | " + " | ".join(f"ours w=1024 {t} TFLOP/s | {t}/f16 time" for t in others) + " |")
        print("|---|" + "---|---|" * len(others))
        for r in res["prefill"]:
            cells = [f"{r[f'ours_w1024_{t}']['tflops']:.1f} | {r[f'ours_w1024_{t}']['ms'] / r['ours_w1024']['ms']:.2f}"
                     for t in others]
            print(f"| {r['n']} | " + " | ".join(cells) + " |")
    cp = res["copy"]["gbs"]
    print(f"\ncopy {cp:.0f} GB/s; one call timed alone | {BACK_TO_BACK} calls back to back")
    print("| n_kv | kv type | ours us | ours GB/s | ours/copy | SDPA GB/s | SDPA/copy "
          "| ours b2b us | ours b2b GB/s | ours b2b/copy | SDPA b2b GB/s | SDPA b2b/copy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    def cell(r, key):
        return f"{r[key]['gbs']:.0f} | {r[key]['gbs'] / cp:.2f}" if key in r else "- | -"

    for r in res["decode"]:
        print(f"| {r['n_kv']} | {r['kv_type']} | {1e3 * r['ours_w1024']['ms']:.1f} | {cell(r, 'ours_w1024')} | "
              f"{cell(r, 'sdpa_f16')} | {1e3 * r['ours_w1024_b2b']['ms']:.1f} | {cell(r, 'ours_w1024_b2b')} | "
              f"{cell(r, 'sdpa_f16_b2b')} |")
    f16_us = {r["n_kv"]: r["ours_w1024_b2b"]["ms"] for r in res["decode"] if r["kv_type"] == "f16"}
    for r in res["decode"]:
        if r["kv_type"] != "f16" and r["n_kv"] in f16_us:
            print(f"decode n_kv={r['n_kv']}: {r['kv_type']} back to back takes "
                  f"{r['ours_w1024_b2b']['ms'] / f16_us[r['n_kv']]:.2f}x the f16 time")


if __name__ == "__main__":
    main()
