#!/usr/bin/env python3
"""Long-context quality report: every position scheme, loss and passkey, against llama.cpp.

    python python/quality_report.py                       # the full report (hours on 2 cores)
    python python/quality_report.py --quick               # 4k + 8k, a few schemes: the pipeline check
    python python/quality_report.py --contexts 16384 --schemes rerope,llama.cpp:yarn --measures loss
    python python/quality_report.py --render-only         # tables and plots from the cache

Measures, on the default model and ../shared/data/war_and_peace.txt unless told otherwise:
- loss:    mean loss over the first N tokens (one chunk; ggml_rerope.perplexity's convention);
- last:    the ReRoPE paper's protocol: loss of the same --score-last tokens ending at
           --end-token given N tokens (N > score-last);
- passkey: passkey retrieval accuracy per depth (ggml_rerope.passkey, the standard format).
llama.cpp's own none / linear / yarn / NTK-base run through llama-cpp-python as peer rows.

Every finished measurement is appended to a cache (JSON lines, keyed by row, measure, context
and everything that changes the result), so the run can be stopped and resumed, and rows can be
added later. The markdown (docs/quality.md) and PNG plots are rendered from the cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ggml_rerope import schemes  # noqa: E402
from ggml_rerope.evaluators import llama_cpp_params, open_evaluator  # noqa: E402
from ggml_rerope.passkey import passkey  # noqa: E402
from ggml_rerope.perplexity import perplexity, read_text, tokenize_prefix  # noqa: E402


@dataclass(frozen=True)
class Row:
    label: str
    engine: str  # "ggml-rerope" or "llama.cpp"
    scheme: str
    options: dict = field(default_factory=dict)
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.label}"


def all_rows(n_ctx_train: int = 8192):
    """Every scheme with its defaults, the ReRoPE variants the defaults are chosen among, and the
    llama.cpp peers. Labels are what the tables show."""
    L = n_ctx_train
    ours = [
        Row("none (RoPE)", "ggml-rerope", "none"),
        Row("linear", "ggml-rerope", "linear"),
        Row("ntk", "ggml-rerope", "ntk"),
        Row("dynamic-ntk", "ggml-rerope", "dynamic-ntk"),
        Row("yarn", "ggml-rerope", "yarn"),
        Row("longrope", "ggml-rerope", "longrope",
            note="needs per-dimension factors: the default model's GGUF has no rope_freqs tensor"),
        Row("power (Giraffe k=0.5)", "ggml-rerope", "power"),
        Row("truncate (Giraffe)", "ggml-rerope", "truncate"),
        Row("self-extend", "ggml-rerope", "self-extend"),
        Row(f"rerope w={L // 2} log-n", "ggml-rerope", "rerope", dict(window=L // 2, logn=True)),
        Row(f"rerope w={L // 2}", "ggml-rerope", "rerope", dict(window=L // 2, logn=False)),
        Row(f"rerope w={L // 4} log-n", "ggml-rerope", "rerope", dict(window=L // 4, logn=True)),
        Row(f"rerope w={L // 4}", "ggml-rerope", "rerope", dict(window=L // 4, logn=False)),
        Row(f"leaky w={L // 4} k=auto log-n", "ggml-rerope", "leaky-rerope", dict(window=L // 4, logn=True)),
        Row(f"leaky w={L // 4} k=auto", "ggml-rerope", "leaky-rerope", dict(window=L // 4, logn=False)),
        Row(f"leaky w={L // 4} k=16 log-n", "ggml-rerope", "leaky-rerope",
            dict(window=L // 4, leaky_k=16.0, logn=True)),
    ]
    peers = [Row(f"llama.cpp {s}", "llama.cpp", s) for s in ("none", "linear", "yarn", "ntk")]
    return ours + peers


QUICK_ROWS = ("none (RoPE)", "yarn", "ntk", "self-extend", "rerope w=4096 log-n", "rerope w=4096",
              "rerope w=2048 log-n", "leaky w=2048 k=auto log-n", "llama.cpp none", "llama.cpp yarn")


def select_rows(rows, spec):
    """--schemes: comma list of labels, scheme names (all rows of that scheme) or llama.cpp:NAME."""
    if not spec:
        return rows
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.startswith("llama.cpp:"):
            hit = [r for r in rows if r.engine == "llama.cpp" and r.scheme == item.split(":", 1)[1]]
        else:
            hit = [r for r in rows if r.label == item] or [
                r for r in rows if r.engine == "ggml-rerope" and r.scheme == item]
        if not hit:
            raise SystemExit(f"--schemes: no row matches {item!r}; rows: {', '.join(r.label for r in rows)}")
        out += [r for r in hit if r not in out]
    return out


def computation(row: Row, ctx: int, hyper):
    """What a row computes at context ctx, as a hashable key. Rows with equal keys run the same
    computation, so one measurement serves them all: every scaling scheme is plain RoPE at
    N <= the trained context (factor 1), a ReRoPE window >= N is no window, log-n scales
    nothing below the trained length, and Leaky ReRoPE with k = 1 is RoPE."""
    if row.engine == "llama.cpp":
        p = llama_cpp_params(row.scheme, hyper, ctx)
        plain = p.get("rope_freq_scale", 1.0) == 1.0 and p.get("rope_freq_base", hyper.rope_base) == hyper.rope_base
        return ("llama.cpp", "none" if plain else row.scheme)
    try:
        scheme = schemes.make_scheme(row.scheme, hyper, ctx, **row.options)
    except ValueError:
        return ("ggml-rerope", row.key)  # cannot run here (longrope without factors): its own key
    s = scheme.resolve(ctx)
    window, far, k, group = s.window, s.far_mode, s.leaky_k, s.group_size
    if window >= ctx or (far == schemes.FAR_LEAKY and k == 1.0):
        window, far, k, group = None, None, None, None
    logn = s.logn_train_len if s.logn_train_len and ctx > s.logn_train_len else 0
    factors = tuple(np.round(s.factors(hyper), 9))
    key = ("ggml-rerope", window, far, k, group, logn, s.base(hyper), factors, s.attn_factor)
    if scheme.dynamic and key != computation(Row("", "ggml-rerope", "none"), ctx, hyper):
        return ("ggml-rerope", row.key)  # recomputed as the sequence grows: like no other row
    return key


def order_rows(rows):
    """Rows in the report's order (so the plain row is measured first and the others refer to it)."""
    index = {r.key: i for i, r in enumerate(all_rows())}
    return sorted(rows, key=lambda r: index.get(r.key, len(index)))


# ------------------------------------------------------------------ cache


class Cache:
    def __init__(self, path: Path):
        self.path = path
        self.items = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    d = json.loads(line)
                    self.items[d["id"]] = d

    @staticmethod
    def ident(row: Row, measure: str, ctx: int, setup: dict) -> str:
        blob = json.dumps(dict(engine=row.engine, scheme=row.scheme, options=row.options, measure=measure, ctx=ctx,
                               **setup), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def get(self, ident):
        return self.items.get(ident)

    def put(self, record: dict) -> None:
        self.items[record["id"]] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------ running


def run(args, rows, cache: Cache, log) -> None:
    text = read_text(args.text)
    need = max(max(args.contexts, default=0), args.end_token if "last" in args.measures else 0)
    tokens = None
    setups = {
        "loss": dict(model=str(args.model), text=str(args.text), chunks=1),
        "last": dict(model=str(args.model), text=str(args.text), score_last=args.score_last, end_token=args.end_token),
        "passkey": dict(model=str(args.model), trials=args.passkey_trials, depths=args.passkey_depths,
                        seed=args.seed, filler=args.passkey_filler),
    }
    # Measure-major, then context, then row: a stopped run leaves whole tables of the cheaper measures.
    # A row that computes what another (measured or planned) row computes is not run again.
    hyper = schemes.hyper_from(args.model)
    plan = []
    for m in [m for m in ("loss", "last", "passkey") if m in args.measures]:
        cs = args.passkey_contexts if m == "passkey" else args.contexts
        for ctx in sorted(cs):
            if m == "last" and not args.score_last < ctx <= args.end_token:
                continue
            covered = {computation(r, ctx, hyper) for r in all_rows()
                       if cache.get(Cache.ident(r, m, ctx, setups[m])) is not None}
            for row in order_rows(rows):
                key = computation(row, ctx, hyper)
                if cache.get(Cache.ident(row, m, ctx, setups[m])) is None and key not in covered:
                    plan.append((ctx, row, [m]))
                covered.add(key)
    log(f"{len(plan)} (row, context) runs to do; cache {cache.path}")
    for i, (ctx, row, todo) in enumerate(plan):
        if row.note and row.scheme == "longrope":
            for m in todo:
                cache.put(dict(id=Cache.ident(row, m, ctx, setups[m]), row=row.key, label=row.label, engine=row.engine,
                               measure=m, ctx=ctx, error=row.note))
            continue
        log(f"[{i + 1}/{len(plan)}] {row.label} @ {ctx}: {', '.join(todo)}")
        try:
            ev = open_evaluator(args.model, n_ctx=ctx, scheme=row.scheme, engine=row.engine, n_threads=args.threads,
                                n_batch=args.batch, n_gpu_layers=args.n_gpu_layers, **row.options)
        except Exception as e:  # a scheme that cannot run here: recorded, not fatal
            for m in todo:
                cache.put(dict(id=Cache.ident(row, m, ctx, setups[m]), row=row.key, label=row.label, engine=row.engine,
                               measure=m, ctx=ctx, error=f"{type(e).__name__}: {e}"))
            log(f"   cannot run: {e}")
            continue
        try:
            for m in todo:
                t0 = time.time()
                rec = dict(id=Cache.ident(row, m, ctx, setups[m]), row=row.key, label=row.label, engine=row.engine,
                           scheme=ev.describe(), measure=m, ctx=ctx, setup=setups[m])
                try:
                    if m in ("loss", "last"):
                        if tokens is None:
                            tokens = tokenize_prefix(ev, text, need)
                        kw = (dict(chunks=1) if m == "loss"
                              else dict(score_last=args.score_last, end_token=args.end_token))
                        r = perplexity(ev, tokens, ctx, bucket=args.bucket, show_progress=args.progress,
                                       label=f"{row.label} {m} {ctx}", **kw)
                        rec.update(loss=r.loss, ppl=r.ppl, buckets=r.buckets, tokens_per_s=r.tokens_per_s,
                                   seconds=r.seconds)
                    else:
                        r = passkey(ev, ctx, trials=args.passkey_trials, depths=args.passkey_depths, seed=args.seed,
                                    filler=args.passkey_filler, show_progress=args.progress)
                        rec.update(accuracy=r.accuracy, per_depth=r.per_depth, samples=r.samples, seconds=r.seconds)
                except Exception as e:
                    rec["error"] = f"{type(e).__name__}: {e}"
                    log(traceback.format_exc())
                rec["wall_s"] = time.time() - t0
                cache.put(rec)
                log(f"   {m}: " + (rec.get("error") or (f"loss {rec['loss']:.4f}" if "loss" in rec
                                                        else f"accuracy {rec['accuracy']:.2f}")) +
                    f" ({rec['wall_s']:.0f} s)")
        finally:
            ev.close()


# ------------------------------------------------------------------ rendering


def _fmt_ctx(c: int) -> str:
    return f"{c // 1024}k" if c % 1024 == 0 else str(c)


def render(args, rows, cache: Cache) -> str:
    recs = list(cache.items.values())
    by = {(r["row"], r["measure"], r["ctx"]): r for r in recs}
    # cells a twin row's measurement fills (the same computation at that context)
    hyper = schemes.hyper_from(args.model)
    twin = {}
    keys = {}  # (row, context) -> computation key, each computed once
    for m in ("loss", "last", "passkey"):
        for c in sorted({r["ctx"] for r in recs if r["measure"] == m}):
            for row in rows:
                keys.setdefault((row.key, c), computation(row, c, hyper))
            measured = {keys[(row.key, c)]: by[(row.key, m, c)] for row in rows
                        if (row.key, m, c) in by and not by[(row.key, m, c)].get("error")}
            for row in rows:
                if (row.key, m, c) not in by and keys[(row.key, c)] in measured:
                    twin[(row.key, m, c)] = measured[keys[(row.key, c)]]
    ctxs = {m: sorted({r["ctx"] for r in recs if r["measure"] == m}) for m in ("loss", "last", "passkey")}
    shown = rows
    out = []
    title = "# Long-context quality: position schemes on SmolLM2-135M (trained context 8192)"
    out.append(title + ("\n\n**PARTIAL REPORT** — " + args.partial if args.partial else ""))
    out.append("")
    stamp = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    out.append(f"Generated by `python python/quality_report.py` ({stamp}); "
               f"model `{Path(args.model).name}`, text `{Path(args.text).name}`. Every number below is in the cache "
               f"`{os.path.relpath(cache.path, ROOT)}`; rerunning the script resumes it and re-renders this page.")
    out.append("")
    out.append("Rows marked *llama.cpp* ran in llama.cpp itself (llama-cpp-python 0.3.36, flash attention) on the "
               "same tokens; all other rows are this project's runtime with the scheme from `ggml_rerope/schemes.py`.")

    def cell(row, m, c, fmt, twins=True):
        r = by.get((row.key, m, c))
        if r is None and twins and (row.key, m, c) in twin:
            return fmt(twin[(row.key, m, c)]) + " ="  # the same computation as a measured row
        if r is None:
            return ""
        if r.get("error"):
            return "n/a"
        return fmt(r)

    def table(m, fmt, head):
        if not ctxs[m]:
            return
        out.append("")
        out.append(head)
        out.append("")
        out.append("| scheme | " + " | ".join(_fmt_ctx(c) for c in ctxs[m]) + " |")
        out.append("|---|" + "---:|" * len(ctxs[m]))
        for row in shown:
            cells = [cell(row, m, c, fmt) for c in ctxs[m]]
            if any(cells) or m == "loss":  # every scheme in the loss table: an empty cell is a gap
                name = f"*{row.label}*" if row.engine == "llama.cpp" else row.label
                out.append(f"| {name} | " + " | ".join(cells) + " |")

    out.append("")
    out.append("A value marked `=` was not measured for that row: at that context the row computes exactly what "
               "a measured row computes (every scaling scheme is plain RoPE at N <= 8192, where its factor is 1; a "
               "ReRoPE window >= N is no window; log-n scales nothing below the trained length; Leaky ReRoPE with "
               "k = 1 is RoPE), so that row's measurement is shown. An empty cell was not run.")
    table("loss", lambda r: f"{r['loss']:.3f}",
          "## Mean loss over the first N tokens (nats/token; lower is better)")
    table("last", lambda r: f"{r['loss']:.3f}",
          f"## ReRoPE-paper protocol: loss of tokens {args.end_token - args.score_last}..{args.end_token - 1} "
          f"given N tokens of context")
    table("passkey", lambda r: f"{100 * r['accuracy']:.0f}%",
          "## Passkey retrieval accuracy (all depths)")
    if ctxs["passkey"]:
        out.append("")
        out.append("Per depth (0 = needle at the start, 1 = right before the question):")
        out.append("")
        for row in shown:
            for c in ctxs["passkey"]:
                r = by.get((row.key, "passkey", c))
                if r and not r.get("error"):
                    pd = ", ".join(f"{d['depth']:g}: {d['correct']}/{d['trials']}" for d in r["per_depth"])
                    out.append(f"- {row.label} @ {_fmt_ctx(c)}: {pd}")
    errors = sorted({(r["label"], r["error"]) for r in recs if r.get("error")})
    if errors:
        out.append("")
        out.append("## Rows that could not run")
        out.append("")
        for label, err in errors:
            out.append(f"- {label}: {err}")
    schemes_seen = {}
    for r in recs:
        if r.get("scheme"):
            schemes_seen.setdefault(r["label"], set()).add((r["ctx"], r["scheme"]))
    out.append("")
    out.append("## Operator parameters of each row")
    out.append("")
    for row in shown:
        if row.label in schemes_seen:
            desc = "; ".join(f"{_fmt_ctx(c)}: `{s}`" for c, s in sorted(schemes_seen[row.label]))
            out.append(f"- {row.label}: {desc}")
    timing = [r for r in recs if r["measure"] == "loss" and "tokens_per_s" in r]
    if timing:
        out.append("")
        out.append("## Speed of the loss runs (prefill tokens/s, 2 shared CPU cores; indicative only)")
        out.append("")
        out.append("| row | " + " | ".join(_fmt_ctx(c) for c in ctxs["loss"]) + " |")
        out.append("|---|" + "---:|" * len(ctxs["loss"]))
        for row in shown:
            # rows measured elsewhere (e.g. the device machine: `device_tokens_per_s`) have no 2-core speed
            cells = [cell(row, "loss", c, lambda r: f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-",
                          twins=False) for c in ctxs["loss"]]
            if any(cells):
                out.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plots(args, rows, cache: Cache, out_dir: Path):
    """PNG plots; returns their paths relative to the markdown, or a reason when none were made."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots need matplotlib (`pip install matplotlib`, an optional dependency: `.[report]`)"
    recs = [r for r in cache.items.values() if not r.get("error")]
    made = []
    out_dir.mkdir(parents=True, exist_ok=True)
    row_by_key = {r.key: r for r in rows}

    palette = plt.get_cmap("tab20").colors
    order = [r.key for r in rows]

    def style(key):  # one fixed colour per row across plots; llama.cpp dashed
        row = row_by_key.get(key)
        color = palette[order.index(key) % len(palette)] if key in order else None
        return dict(linestyle="--" if row and row.engine == "llama.cpp" else "-", marker="o", color=color)

    for m, ylabel, name in (("loss", "mean loss over the first N tokens", "loss_vs_context.png"),
                            ("last", f"loss of the last {args.score_last} tokens before {args.end_token}",
                             "paper_protocol.png")):
        series = {}
        for r in recs:
            if r["measure"] == m:
                series.setdefault(r["row"], {})[r["ctx"]] = r["loss"]  # the newest record wins
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(9, 6))
        for key, by_ctx in sorted(series.items()):
            pts = sorted(by_ctx.items())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key.split(":", 1)[1], **style(key))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context N (tokens)")
        ax.set_ylabel(ylabel)
        ax.axvline(8192, color="grey", lw=0.8)
        lo = min(v for by_ctx in series.values() for v in by_ctx.values())
        ax.set_ylim(lo - 0.1, min(lo + 1.2, max(v for by_ctx in series.values() for v in by_ctx.values()) + 0.1))
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        made.append(name)
    loss_recs = [r for r in recs if r["measure"] == "loss"]
    if loss_recs:
        big = max(r["ctx"] for r in loss_recs)
        fig, ax = plt.subplots(figsize=(9, 6))
        for r in sorted((r for r in loss_recs if r["ctx"] == big), key=lambda r: r["row"]):
            xs = [(b["start"] + b["end"]) / 2 for b in r["buckets"]]
            ax.plot(xs, [b["loss"] for b in r["buckets"]], label=r["row"].split(":", 1)[1], **style(r["row"]))
        ax.set_xlabel("position in the context (bucket centre)")
        ax.set_ylabel(f"loss per {args.bucket}-token bucket, N = {big}")
        ax.axvline(8192, color="grey", lw=0.8)
        ax.set_ylim(2.5, 6.0)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        name = "loss_by_position.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        made.append(name)
    pk = [r for r in recs if r["measure"] == "passkey"]
    if pk:
        keys = sorted({r["row"] for r in pk})
        cs = sorted({r["ctx"] for r in pk})
        fig, ax = plt.subplots(figsize=(9, 5))
        width = 0.8 / len(cs)
        for j, c in enumerate(cs):
            latest = {(r["row"], r["ctx"]): 100 * r["accuracy"] for r in pk}  # the newest record wins, as in the tables
            vals = [latest.get((k, c), 0) for k in keys]
            ax.bar([i + j * width for i in range(len(keys))], vals, width, label=_fmt_ctx(c))
        ax.set_xticks([i + width * (len(cs) - 1) / 2 for i in range(len(keys))])
        ax.set_xticklabels([k.split(":", 1)[1] for k in keys], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("passkey accuracy %")
        ax.legend()
        fig.tight_layout()
        name = "passkey.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        made.append(name)
    return made, ""


def main(argv=None) -> int:
    from ggml_rerope.default_model import default_model_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "war_and_peace.txt"))
    p.add_argument("--contexts", help="contexts of the loss measures (default 4096,8192,16384,32768)")
    p.add_argument("--passkey-contexts", help="default 8192,16384,32768")
    p.add_argument("--schemes", default="", help="rows: labels, scheme names or llama.cpp:NAME (default: all)")
    p.add_argument("--measures", default="loss,last,passkey")
    p.add_argument("--quick", action="store_true",
                   help="pipeline check: contexts 4096,8192, passkey at 8192 with 1 trial at depths 0,0.5,1, "
                        "a few schemes (explicit --contexts etc. given after it still apply)")
    p.add_argument("--score-last", type=int, default=4096)
    p.add_argument("--end-token", type=int, default=36864)
    p.add_argument("--bucket", type=int, default=1024)
    p.add_argument("--passkey-trials", type=int, help="keys per depth (default 3)")
    p.add_argument("--passkey-depths", help="default 0,0.25,0.5,0.75,1")
    p.add_argument("--passkey-filler", default=None, help="text file for passkey filler (default: standard sentences)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                   help="-1: both engines on the GPU (CUDA builds; the loss/passkey numbers do not depend on it)")
    p.add_argument("--cache", default=str(ROOT / "docs" / "quality" / "cache.jsonl"))
    p.add_argument("--out", default=str(ROOT / "docs" / "quality.md"))
    p.add_argument("--partial", default="", help="label the page as partial, with this explanation")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    args.model = args.model or default_model_path()
    quick = dict(contexts="4096,8192", passkey_contexts="8192", passkey_trials=1, passkey_depths="0,0.5,1")
    full = dict(contexts="4096,8192,16384,32768", passkey_contexts="8192,16384,32768", passkey_trials=3,
                passkey_depths="0,0.25,0.5,0.75,1")
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.quick and not args.schemes:
        args.schemes = ",".join(QUICK_ROWS)
    args.contexts = [int(x) for x in str(args.contexts).split(",") if x.strip()]
    args.passkey_contexts = [int(x) for x in str(args.passkey_contexts).split(",") if x.strip()]
    args.passkey_depths = [float(x) for x in str(args.passkey_depths).split(",") if x.strip()]
    args.measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    bad = set(args.measures) - {"loss", "last", "passkey"}
    if bad:
        p.error(f"--measures: unknown {sorted(bad)} (loss, last, passkey)")
    rows = select_rows(all_rows(), args.schemes)
    cache = Cache(Path(args.cache))

    def log(msg):
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    if not args.render_only:
        run(args, rows, cache, log)
    out = Path(args.out)
    all_known = all_rows()
    md = render(args, all_known, cache)
    made, why = plots(args, all_known, cache, out.parent / "quality")
    if made:
        md += "\n## Plots\n\n" + "\n".join(f"![{m}](quality/{m})" for m in made) + "\n"
    elif why:
        md += f"\n(No plots: {why}.)\n"
    if Path(args.out).exists() and "<!-- analysis -->" in Path(args.out).read_text():
        keep = Path(args.out).read_text().split("<!-- analysis -->", 1)[1]
        md += "\n<!-- analysis -->" + keep  # hand-written findings survive a re-render
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    log(f"wrote {out} and {len(made)} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
