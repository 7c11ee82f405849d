#!/usr/bin/env python3
"""Long-context quality report: every position scheme, with intervals, against llama.cpp.

    python python/quality_report.py --plan                # what is left to run, in evaluated tokens
    python python/quality_report.py -ngl -1 --time-budget 500     # run (resumes), on the GPU
    python python/quality_report.py --quick               # a small CPU-sized pipeline check
    python python/quality_report.py --contexts 16384 --schemes rerope,llama.cpp:yarn --measures paper
    python python/quality_report.py --render-only         # tables and plots from the cache

On a GPU host, in calls of at most 10 minutes: `--plan` sizes the work, then
`-ngl -1 --batch 2048 --time-budget 480 --no-render [--measures ... --schemes ...]` again and again
until it logs "0 jobs to do" (each call resumes from the cache; bring the cache and its _nll folder
back), then `--render-only` anywhere.

Measures, on the default model and ../shared/data/war_and_peace.txt unless told otherwise:
- paper:     the ReRoPE paper's protocol on --paper-windows disjoint windows: the loss of the last
             --score-last tokens ending at E_k given N tokens, E_k = k * S (S = --paper-spacing, by
             default the longest default context, also in a slice of them), so every N scores the very
             same tokens and the longest context's windows do not overlap. Per-token NLL is kept per window (.npy beside
             the cache); tables show the mean with a bootstrap 95 % interval and paired differences.
- passkey:   ggml_rerope.passkey for every format x filler x depth, --passkey-trials keys each,
             passes / trials with Wilson 95 % intervals.
- retrieval: ggml_rerope.retrieval (RULER multi-key needles; `vt`, variable tracking, on request).
- loss:      (on request) the mean loss over the first N tokens, one chunk, no interval.
llama.cpp's own none / linear / yarn / NTK-base run through llama-cpp-python as peer rows.

Every finished piece of work (one window, one shard of --shard-trials trials) is appended to the
cache (JSON lines, keyed by row, measure, context, the piece and everything that changes the
result), so a run can be stopped at any point (--time-budget stops starting new pieces) and
resumed, and rows can be added later. Rows that compute the same thing at a context share one
measurement. The cache file is versioned (cache_v2.jsonl; the earlier cache.jsonl, one sample per
cell, is left as it was and is not read). The markdown and PNG plots are rendered from the cache.

This file runs the jobs and holds the command line; beside it: quality_rows.py (the rows),
quality_jobs.py (jobs, the cache, the plan), quality_render.py (the page), quality_plots.py (PNGs).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from quality_jobs import (  # noqa: E402
    CACHE_VERSION,
    FILLERS,
    MEASURES,
    Cache,
    Job,
    fmt_ctx,
    paper_ends,
    plan_jobs,
    print_plan,
    setup_of,
    shard_key,
)
from quality_plots import plots  # noqa: E402
from quality_render import render  # noqa: E402
from quality_rows import QUICK_ROWS, all_rows, select_rows  # noqa: E402

from ggml_rerope import schemes  # noqa: E402
from ggml_rerope.evaluators import open_evaluator  # noqa: E402
from ggml_rerope.intervals import DEFAULT_BLOCK, DEFAULT_RESAMPLES  # noqa: E402
from ggml_rerope.passkey import FORMATS, passkey  # noqa: E402
from ggml_rerope.perplexity import perplexity, read_text, tokenize_prefix  # noqa: E402
from ggml_rerope.retrieval import TASKS, retrieval  # noqa: E402

# ------------------------------------------------------------------ running


def run_job(args, ev, job: Job, tokens_of, log) -> tuple[dict, Optional[np.ndarray]]:
    """Runs one job on an open evaluator; returns the result fields and the NLL array (paper)."""
    s, ctx = job.spec, job.ctx
    quiet = not args.progress
    if job.measure in ("paper", "loss"):
        kw = dict(chunks=1) if job.measure == "loss" else dict(score_last=s["score_last"], end_token=[s["end"]])
        r = perplexity(ev, tokens_of(ev), ctx, bucket=args.bucket, keep_nll=job.measure == "paper",
                       show_progress=not quiet, label=f"{job.row.label} {job.measure} {ctx}", **kw)
        out = dict(loss=r.loss, n_scored=r.n_scored, tokens_per_s=r.tokens_per_s, seconds=r.seconds)
        if job.measure == "loss":
            out["buckets"] = r.buckets
        return out, (r.nll[0] if job.measure == "paper" else None)
    filler = None if s["filler"] == "grass" else f"text:{args.text}"
    if job.measure == "passkey":
        r = passkey(ev, ctx, trials=s["n"], depths=[s["depth"]], seed=s["seed"], gen_tokens=s["gen"], filler=filler,
                    fmt=s["format"], first_trial=s["first"], reset=False, show_progress=not quiet)
        return dict(correct=r.per_depth[0]["correct"], trials=r.trials, seconds=r.seconds,
                    samples=[{k: x[k] for k in ("key", "word", "answer", "correct")} for x in r.samples]), None
    opts = {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()
            if k in ("depths", "hops", "chains")}
    r = retrieval(ev, ctx, s["task"], trials=s["n"], seed=s["seed"], filler=filler, first_trial=s["first"],
                  reset=False, show_progress=not quiet, **opts)
    return dict(correct=r.correct, questions=r.questions, trials=r.trials, per_depth=r.per_depth, recall=r.recall,
                seconds=r.seconds, samples=r.samples), None


class TextTooShort(ValueError):
    """The text cannot hold the paper windows: a configuration error, not a result to cache."""


def run(args, rows, cache: Cache, log) -> int:
    """Runs the plan; returns how many jobs are left (stopped by --time-budget)."""
    hyper = schemes.hyper_from(args.model)
    jobs = plan_jobs(args, rows, cache, hyper)
    setup = setup_of(args)
    log(f"{len(jobs)} jobs to do; cache {cache.path}")
    text = read_text(args.text) if any(j.measure in ("paper", "loss") for j in jobs) else ""
    need = max([0] + [j.spec["end"] if j.measure == "paper" else j.ctx for j in jobs if j.measure in ("paper", "loss")])
    tokens = []

    def tokens_of(ev):
        if not tokens:
            tokens.extend(tokenize_prefix(ev, text, need))
            if len(tokens) < need:
                raise TextTooShort(f"{args.text} has {len(tokens)} tokens, the paper windows need {need}: "
                                   f"fewer --paper-windows or a smaller --paper-spacing")
        return tokens

    t0 = time.time()
    ev, ev_key, failed = None, None, set()
    try:
        for i, job in enumerate(jobs):
            if args.time_budget is not None and time.time() - t0 > args.time_budget:
                log(f"time budget of {args.time_budget:.0f} s spent: {len(jobs) - i} jobs left; rerun to resume")
                return len(jobs) - i
            key = (job.row.key, job.ctx)
            base = dict(row=job.row.key, label=job.row.label, engine=job.row.engine, measure=job.measure, ctx=job.ctx,
                        v=CACHE_VERSION, setup=setup)
            if key in failed:
                continue
            if key != ev_key:
                if ev is not None:
                    ev.close()
                ev, ev_key = None, key
                if job.row.note and job.row.scheme == "longrope":
                    err = job.row.note
                else:
                    try:
                        ev = open_evaluator(args.model, n_ctx=job.ctx, scheme=job.row.scheme, engine=job.row.engine,
                                            n_threads=args.threads, n_batch=args.batch,
                                            n_gpu_layers=args.n_gpu_layers, **job.row.options)
                        err = None
                    except Exception as e:  # a scheme that cannot run here: recorded, not fatal
                        err = f"{type(e).__name__}: {e}"
                if err:
                    failed.add(key)
                    for m in {j.measure for j in jobs if (j.row.key, j.ctx) == key}:
                        cache.put(dict(base, measure=m, id=Cache.ident(job.row, m, job.ctx, shard_key(error="open"),
                                                                       setup), error=err, shard=dict(error="open")))
                    log(f"   {job.row.label} @ {job.ctx}: cannot run: {err}")
            if ev is None:
                continue
            log(f"[{i + 1}/{len(jobs)}] {job.row.label} @ {fmt_ctx(job.ctx)} {job.measure} {dict(job.shard)}")
            rec = dict(base, id=Cache.ident(job.row, job.measure, job.ctx, job.shard, setup), shard=job.spec,
                       scheme=ev.describe())
            t1 = time.time()
            nll = None
            try:
                out, nll = run_job(args, ev, job, tokens_of, log)
                rec.update(out)
            except (KeyboardInterrupt, TextTooShort):
                raise
            except Exception as e:
                rec["error"] = f"{type(e).__name__}: {e}"
                log(traceback.format_exc())
            rec["wall_s"] = time.time() - t1
            rec["device"] = "gpu" if args.n_gpu_layers else "cpu"
            cache.put(rec, nll)
            summary = rec.get("error") or (f"loss {rec['loss']:.4f}" if "loss" in rec else
                                           f"{rec['correct']}/{rec.get('questions', rec['trials'])}")
            log(f"   {summary} ({rec['wall_s']:.1f} s)")
    finally:
        if ev is not None:
            ev.close()
    return 0


# ------------------------------------------------------------------ command line


def _ints(text) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def _floats(text) -> list[float]:
    return [float(x) for x in str(text).split(",") if x.strip()]


def _names(text) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


QUICK = dict(contexts="4096,8192", passkey_contexts="4096", retrieval_contexts="4096", score_last=1024,
             paper_windows=2, passkey_trials=2, passkey_depths="0,0.5,1", passkey_formats="landmark,ruler",
             passkey_fillers="grass", retrieval_trials=2, retrieval_depths="0,0.5,1", shard_trials=2)
FULL = dict(contexts="8192,16384,32768,65536", score_last=4096, paper_windows=8, passkey_trials=4,
            passkey_depths="0,0.25,0.5,0.75,1", passkey_formats=",".join(FORMATS), passkey_fillers=",".join(FILLERS),
            retrieval_trials=20, shard_trials=5)


def parse_args(argv=None):
    from ggml_rerope.default_model import default_model_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "war_and_peace.txt"))
    p.add_argument("--measures", default="paper,passkey,retrieval", help=f"comma list of {', '.join(MEASURES)}")
    p.add_argument("--schemes", default="", help="rows: labels, scheme names or llama.cpp:NAME (default: all)")
    p.add_argument("--contexts", help="contexts of every measure (default 8192,16384,32768,65536; with 131072, "
                                      "keep --paper-contexts at most 65536 for 8 windows, or --paper-windows 5: "
                                      "the text's 765k tokens hold 5 disjoint windows of 128k)")
    for m in MEASURES:
        p.add_argument(f"--{m}-contexts", help=f"contexts of {m} (default --contexts)")
    p.add_argument("--quick", action="store_true",
                   help="pipeline check: paper at 4k and 8k (2 windows of 1024 scored), passkey and multi-key at 4k "
                        "with 2 trials at depths 0, 0.5, 1, formats landmark and ruler, a few schemes "
                        "(explicit flags still apply)")
    p.add_argument("--score-last", type=int, help="paper: scored tokens M of each window (default 4096)")
    p.add_argument("--paper-windows", type=int, help="paper: disjoint windows K (default 8)")
    p.add_argument("--paper-spacing", type=int, help="paper: window ends S, 2S, .., KS (default: the longest "
                                                     "default context when --paper-contexts are among them, else the "
                                                     "longest paper context)")
    p.add_argument("--passkey-trials", type=int,
                   help="keys per format, filler and depth (default 4: 24 keys per depth, 120 per context)")
    p.add_argument("--passkey-depths", help="default 0,0.25,0.5,0.75,1")
    p.add_argument("--passkey-formats", help=f"comma list of {', '.join(FORMATS)} (default: all)")
    p.add_argument("--passkey-fillers", help="comma list of grass (the standard sentences) and text (sentences of "
                                             "--text) (default: both)")
    p.add_argument("--retrieval-tasks", default="multikey", help=f"comma list of {', '.join(TASKS)}")
    p.add_argument("--retrieval-trials", type=int, help="haystacks per task and filler (default 20)")
    p.add_argument("--retrieval-depths", help="multikey: needle depths (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--retrieval-fillers", default="text", help="comma list of grass, text (default text)")
    p.add_argument("--vt-hops", type=int, default=None, help="vt: hops per chain (default 4)")
    p.add_argument("--vt-chains", type=int, default=None, help="vt: chains (default 2)")
    p.add_argument("--shard-trials", type=int, help="trials per cached record (default 5; keep it across resumes)")
    p.add_argument("--seed", type=int, default=0, help="keys, haystacks and bootstrap")
    p.add_argument("--bucket", type=int, default=1024)
    p.add_argument("--block", type=int, default=DEFAULT_BLOCK, help="bootstrap block of scored tokens")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                   help="-1: both engines on the GPU (CUDA builds; the numbers do not depend on it)")
    p.add_argument("--base-context", type=int, help="the context differences are taken from (default: the "
                                                    "model's trained context)")
    p.add_argument("--time-budget", type=float, help="seconds: start no new job after this (the run resumes)")
    p.add_argument("--retry-errors", action="store_true", help="run again the jobs whose records are errors")
    p.add_argument("--plan", "--dry-run", dest="plan", action="store_true",
                   help="print the jobs left and their evaluated tokens; run nothing")
    p.add_argument("--cache", default=str(ROOT / "docs" / "quality" / f"cache_v{CACHE_VERSION}.jsonl"))
    p.add_argument("--out", default=str(ROOT / "docs" / "quality.md"))
    p.add_argument("--partial", default="", help="label the page as partial, with this explanation")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--no-render", action="store_true", help="run only (a GPU call renders nothing)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    args.model = args.model or default_model_path()
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.quick and not args.schemes:
        args.schemes = ",".join(QUICK_ROWS)
    args.measures = _names(args.measures)
    bad = set(args.measures) - set(MEASURES)
    if bad:
        p.error(f"--measures: unknown {sorted(bad)} ({', '.join(MEASURES)})")
    for m in MEASURES:
        setattr(args, f"{m}_contexts", _ints(getattr(args, f"{m}_contexts") or args.contexts))
    args.passkey_depths = _floats(args.passkey_depths)
    args.retrieval_depths = _floats(args.retrieval_depths) if args.retrieval_depths else None
    args.passkey_formats = _names(args.passkey_formats)
    args.passkey_fillers, args.retrieval_fillers = _names(args.passkey_fillers), _names(args.retrieval_fillers)
    args.retrieval_tasks = _names(args.retrieval_tasks)
    for flag, got, known in (("--passkey-formats", args.passkey_formats, FORMATS),
                             ("--passkey-fillers", args.passkey_fillers, FILLERS),
                             ("--retrieval-fillers", args.retrieval_fillers, FILLERS),
                             ("--retrieval-tasks", args.retrieval_tasks, TASKS)):
        if not got or set(got) - set(known):
            p.error(f"{flag}: {', '.join(got) or 'nothing'} (known: {', '.join(known)})")
    if any(not 0 <= d <= 1 for d in args.passkey_depths + (args.retrieval_depths or [])):
        p.error("depths must lie in [0, 1]")
    if args.shard_trials < 1 or args.passkey_trials < 1 or args.retrieval_trials < 1:
        p.error("--shard-trials, --passkey-trials and --retrieval-trials must be >= 1")
    if args.paper_spacing is None:  # a slice of the default contexts (--contexts 32768) scores the report's windows
        preset = _ints((QUICK if args.quick else FULL)["contexts"])
        slice_of_report = set(args.paper_contexts) <= set(preset)
        args.paper_spacing = max(preset if slice_of_report else args.paper_contexts, default=args.score_last + 1)
    try:
        paper_ends(args)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = select_rows(all_rows(), args.schemes)
    cache = Cache(Path(args.cache))

    def log(msg):
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    if cache.skipped:
        log(f"{cache.skipped} line(s) of {cache.path} are not version-{CACHE_VERSION} records: not read")
    if args.plan:
        print_plan(plan_jobs(args, rows, cache, schemes.hyper_from(args.model)))
        if "paper" in args.measures:
            ends = paper_ends(args)
            print(f"paper windows end at {', '.join(map(str, ends))}: the text must hold {ends[-1]:,d} tokens "
                  f"(war_and_peace.txt holds about 765k)")
        return 0
    try:
        left = 0 if args.render_only else run(args, rows, cache, log)
    except TextTooShort as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.no_render:
        return 0
    out = Path(args.out)
    if not cache.items:  # an empty cache must not replace a page rendered from another one
        log(f"{cache.path} has no records: {out} left as it is")
        return 0
    known = all_rows() + [r for r in rows if r not in all_rows()]
    md = render(args, known, cache)
    made, why = plots(args, known, cache, out.parent / out.stem)
    if made:
        md += "\n## Plots\n\n" + "\n".join(f"![{m}]({out.stem}/{m})" for m in made) + "\n"
    elif why:
        md += f"\n(No plots: {why}.)\n"
    if left:
        md = md.replace("\n", f"\n\n**{left} jobs not run yet** (stopped by --time-budget).\n", 1)
    if out.exists() and "<!-- analysis -->" in out.read_text():
        md += "\n<!-- analysis -->" + out.read_text().split("<!-- analysis -->", 1)[1]  # hand-written findings stay
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    log(f"wrote {out} and {len(made)} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
