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
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ggml_rerope import schemes  # noqa: E402
from ggml_rerope.evaluators import llama_cpp_params, open_evaluator  # noqa: E402
from ggml_rerope.intervals import (  # noqa: E402
    DEFAULT_BLOCK,
    DEFAULT_RESAMPLES,
    bootstrap_mean,
    newcombe_difference,
    paired_difference,
    wilson,
)
from ggml_rerope.passkey import FORMATS, answer_tokens, passkey  # noqa: E402
from ggml_rerope.perplexity import perplexity, read_text, tokenize_prefix, window_ends  # noqa: E402
from ggml_rerope.retrieval import TASKS, default_gen_tokens, retrieval, task_options  # noqa: E402

MEASURES = ("paper", "passkey", "retrieval", "loss")
CACHE_VERSION = 2
FILLERS = ("grass", "text")  # passkey.py's standard sentences, and sentences of --text


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
        Row(f"self-extend w={L // 2}", "ggml-rerope", "self-extend", dict(window=L // 2)),
        Row(f"rerope w={L // 2} log-n", "ggml-rerope", "rerope", dict(window=L // 2, logn=True)),
        Row(f"rerope w={L // 2}", "ggml-rerope", "rerope", dict(window=L // 2, logn=False)),
        Row(f"rerope w={L // 4} log-n", "ggml-rerope", "rerope", dict(window=L // 4, logn=True)),
        Row(f"rerope w={L // 4}", "ggml-rerope", "rerope", dict(window=L // 4, logn=False)),
        Row(f"leaky w={L // 4} k=auto log-n", "ggml-rerope", "leaky-rerope", dict(window=L // 4, logn=True)),
        Row(f"leaky w={L // 4} k=auto", "ggml-rerope", "leaky-rerope", dict(window=L // 4, logn=False)),
        Row(f"leaky w={L // 2} k=auto", "ggml-rerope", "leaky-rerope", dict(window=L // 2, logn=False)),
        Row(f"leaky w={L // 4} fit {L // 2} log-n", "ggml-rerope", "leaky-rerope",
            dict(window=L // 4, fit_len=L // 2, logn=True)),
        Row(f"self-extend fit {L // 2}", "ggml-rerope", "self-extend", dict(fit_len=L // 2)),
        Row(f"leaky w={L // 4} k=16 log-n", "ggml-rerope", "leaky-rerope",
            dict(window=L // 4, leaky_k=16.0, logn=True)),
        Row(f"rerope w={L // 2} log-n T=yarn", "ggml-rerope", "rerope",
            dict(window=L // 2, logn=True, temperature="yarn")),
        Row("dual-chunk log-n", "ggml-rerope", "dual-chunk", dict(logn=True)),
        Row("dual-chunk", "ggml-rerope", "dual-chunk", dict(logn=False)),
        Row("lm-infinite", "ggml-rerope", "lm-infinite"),
        Row("ntk-mixed log-n", "ggml-rerope", "ntk-mixed"),
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
    nothing below the trained length, Leaky ReRoPE with k = 1 is RoPE, Dual Chunk with every
    distance <= w - s is RoPE, and a sliding window of N or more drops nothing."""
    if row.engine == "llama.cpp":
        p = llama_cpp_params(row.scheme, hyper, ctx)
        plain = p.get("rope_freq_scale", 1.0) == 1.0 and p.get("rope_freq_base", hyper.rope_base) == hyper.rope_base
        return ("llama.cpp", "none" if plain else row.scheme)
    try:
        scheme = schemes.make_scheme(row.scheme, hyper, ctx, **row.options)
    except ValueError:
        return ("ggml-rerope", row.key)  # cannot run here (longrope without factors): its own key
    s = scheme.resolve(ctx)
    window, far, k, group, chunk = s.window, s.far_mode, s.leaky_k, s.group_size, s.chunk_len
    all_near = window - chunk >= ctx - 1 if far == schemes.FAR_CHUNK else window >= ctx
    if all_near or (far == schemes.FAR_LEAKY and k == 1.0):
        window, far, k, group, chunk = None, None, None, None, None
    dropping = (s.sliding_window, s.sink_tokens) if 0 < s.sliding_window < ctx else None
    logn = s.logn_train_len if s.logn_train_len and ctx > s.logn_train_len else 0
    factors = tuple(np.round(s.factors(hyper), 9))
    key = ("ggml-rerope", window, far, k, group, chunk, dropping, logn, s.base(hyper), factors, s.attn_factor)
    if scheme.dynamic and key != computation(Row("", "ggml-rerope", "none"), ctx, hyper):
        return ("ggml-rerope", row.key)  # recomputed as the sequence grows: like no other row
    return key


def order_rows(rows):
    """Rows in the report's order (so the plain row is measured first and the others refer to it)."""
    index = {r.key: i for i, r in enumerate(all_rows())}
    return sorted(rows, key=lambda r: index.get(r.key, len(index)))


# ------------------------------------------------------------------ cache
# ------------------------------------------------------------------ work: what each measure runs


@dataclass(frozen=True)
class Job:
    """One piece of work: a row at a context, one measure, one shard (a window, a block of trials)."""

    row: Row
    ctx: int
    measure: str
    shard: tuple  # sorted (name, value) pairs, hashable

    @property
    def spec(self) -> dict:
        return dict(self.shard)


def _shard(**kw) -> tuple:
    return tuple(sorted(kw.items()))


def paper_ends(args) -> list[int]:
    return window_ends(args.paper_windows, args.paper_spacing)


def contexts_of(args, m: str) -> list[int]:
    cs = sorted(set(getattr(args, f"{m}_contexts")))
    if m == "paper":  # the protocol needs N > M scored tokens and windows no longer than the spacing
        cs = [c for c in cs if args.score_last < c <= args.paper_spacing]
    return cs


def shards(args, m: str) -> list[tuple]:
    """Every shard of measure m (the same at every context)."""
    if m == "paper":
        return [_shard(score_last=args.score_last, end=e) for e in paper_ends(args)]
    if m == "loss":
        return [_shard(chunks=1)]
    out = []
    step = args.shard_trials
    if m == "passkey":
        for fmt in args.passkey_formats:
            for filler in args.passkey_fillers:
                for depth in sorted(args.passkey_depths, reverse=True):  # deepest first: the prefix cache
                    for first in range(0, args.passkey_trials, step):
                        out.append(_shard(format=fmt, filler=filler, depth=depth, first=first,
                                          n=min(step, args.passkey_trials - first), seed=args.seed,
                                          gen=answer_tokens(fmt)))
        return out
    for task in args.retrieval_tasks:
        opts = retrieval_options(args, task)
        for filler in args.retrieval_fillers:
            for first in range(0, args.retrieval_trials, step):
                out.append(_shard(task=task, filler=filler, first=first, n=min(step, args.retrieval_trials - first),
                                  seed=args.seed, **{k: tuple(v) if isinstance(v, list) else v
                                                     for k, v in opts.items()}))
    return out


def retrieval_options(args, task: str) -> dict:
    return task_options(task, depths=args.retrieval_depths, hops=args.vt_hops, chains=args.vt_chains)


def setup_of(args) -> dict:
    # file names, not paths: the cache is filled on other machines (the GPU host) under other paths
    return dict(v=CACHE_VERSION, model=Path(args.model).name, text=Path(args.text).name)


def job_tokens(job: Job, first_of_group: bool) -> int:
    """Evaluated tokens of a job, estimated: the prefix cache means a passkey trial evaluates from its
    needle on (the first prompt of an evaluator evaluates everything)."""
    s, c = job.spec, job.ctx
    if job.measure in ("paper", "loss"):
        return c
    if job.measure == "passkey":
        return s["n"] * (int((1 - s["depth"]) * c) + s["gen"]) + (int(s["depth"] * c) if first_of_group else 0)
    gen = default_gen_tokens(s["task"], s.get("hops", 0))
    asks = len(s["depths"]) if s["task"] == "multikey" else 1
    return s["n"] * (c + asks * (48 + gen))  # a haystack, then each question and answer


# ------------------------------------------------------------------ cache


class Cache:
    """JSON lines, one record per finished job (newest wins); per-token NLL arrays beside it."""

    def __init__(self, path: Path):
        self.path = path
        self.nll_dir = path.with_name(path.stem + "_nll")
        self.items = {}
        self.skipped = 0
        self._cut = False  # the file ends inside a line: the next record starts a line of its own
        if path.exists():
            text = path.read_text()
            self._cut = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    d = json.loads(line)
                except ValueError:  # a line cut short by a killed run: that job is simply redone
                    self.skipped += bool(line.strip())
                    continue
                if d.get("v") == CACHE_VERSION:
                    self.items[d["id"]] = d
                else:
                    self.skipped += 1

    @staticmethod
    def ident(row: Row, measure: str, ctx: int, shard: tuple, setup: dict) -> str:
        blob = json.dumps(dict(engine=row.engine, scheme=row.scheme, options=row.options, measure=measure, ctx=ctx,
                               shard=dict(shard), **setup), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def get(self, ident):
        return self.items.get(ident)

    def put(self, record: dict, nll: Optional[np.ndarray] = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if nll is not None:  # the array first: a record never points at a missing file
            self.nll_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.nll_dir / f"{record['id']}.tmp.npy"
            np.save(tmp, np.asarray(nll, dtype=np.float16))  # ~1e-3 nats: far below any interval, half the bytes
            os.replace(tmp, self.nll_dir / f"{record['id']}.npy")
            record["nll_file"] = f"{record['id']}.npy"
        self.items[record["id"]] = record
        with open(self.path, "a") as f:
            f.write(("\n" if self._cut else "") + json.dumps(record) + "\n")
        self._cut = False

    def complete(self, record: dict) -> bool:
        """False for a record whose per-token losses did not come along (a cache copied without its folder)."""
        return "nll_file" not in record or (self.nll_dir / record["nll_file"]).is_file()

    def nll(self, record: dict) -> Optional[np.ndarray]:
        p = self.nll_dir / record.get("nll_file", "-")
        return np.load(p).astype(np.float64) if p.is_file() else None


# ------------------------------------------------------------------ planning


def plan_jobs(args, rows, cache: Cache, hyper) -> list[Job]:
    """Jobs not in the cache, measure-major, then context, then row (so a stopped run leaves whole
    tables of the earlier measures). A job that another row's measured or planned job computes is
    not run again (see computation())."""
    setup = setup_of(args)
    jobs = []
    for m in [m for m in MEASURES if m in args.measures]:
        sh = shards(args, m)
        for ctx in contexts_of(args, m):
            keys = {r.key: computation(r, ctx, hyper) for r in all_rows() + list(rows)}
            covered = set()
            for r in all_rows() + list(rows):
                for s in sh:
                    rec = cache.get(Cache.ident(r, m, ctx, s, setup))
                    if rec is not None and cache.complete(rec) and (not rec.get("error") or not args.retry_errors):
                        covered.add((keys[r.key], s))
            for row in order_rows(rows):
                failed = cache.get(Cache.ident(row, m, ctx, _shard(error="open"), setup))
                if failed is not None and not args.retry_errors:
                    continue
                for s in sh:
                    if (keys[row.key], s) not in covered:
                        jobs.append(Job(row, ctx, m, s))
                        covered.add((keys[row.key], s))
    return jobs


def _fmt_ctx(c: int) -> str:
    return f"{c // 1024}k" if c % 1024 == 0 else str(c)


def print_plan(jobs: list[Job], out=sys.stdout) -> int:
    """The cells left to run and their evaluated tokens (estimated), per group and in total."""
    groups: dict = {}
    prev = None
    for j in jobs:
        g = (j.measure, j.ctx, j.row.label)
        first = g != prev
        prev = g
        n, t = groups.get(g, (0, 0))
        groups[g] = (n + 1, t + job_tokens(j, first))
    unit = dict(paper="windows", loss="chunks", passkey="shards", retrieval="shards")
    total = 0
    by_measure_ctx: dict = {}
    for (m, c, label), (n, t) in groups.items():
        print(f"{m:9s} {_fmt_ctx(c):>5s}  {label:34s} {n:4d} {unit[m]:8s} {t:>13,d} tokens", file=out)
        by_measure_ctx[(m, c)] = by_measure_ctx.get((m, c), 0) + t
        total += t
    print("", file=out)
    for (m, c), t in by_measure_ctx.items():
        print(f"{m:9s} {_fmt_ctx(c):>5s}  {t:>15,d} tokens", file=out)
    print(f"total: {len(jobs)} jobs, {total:,d} evaluated tokens (estimate; prefill cost per token grows with "
          f"the context)", file=out)
    return total


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
                        cache.put(dict(base, measure=m, id=Cache.ident(job.row, m, job.ctx, _shard(error="open"),
                                                                       setup), error=err, shard=dict(error="open")))
                    log(f"   {job.row.label} @ {job.ctx}: cannot run: {err}")
            if ev is None:
                continue
            log(f"[{i + 1}/{len(jobs)}] {job.row.label} @ {_fmt_ctx(job.ctx)} {job.measure} {dict(job.shard)}")
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


# ------------------------------------------------------------------ results: cells from the cache


class Results:
    """The cache seen cell by cell for the configured shards: a row's own records, else those of a
    row computing the same thing at that context (a twin, marked '=')."""

    def __init__(self, args, rows, cache: Cache, hyper):
        self.args, self.rows, self.cache, self.setup = args, rows, cache, setup_of(args)
        self.keys = {}
        self.shards = {m: shards(args, m) for m in MEASURES}
        self._nll = {}
        by_comp = {}
        for r in rows:
            for m in MEASURES:
                for c in contexts_of(args, m):
                    k = self.keys.setdefault((r.key, c), computation(r, c, hyper))
                    for s in self.shards[m]:
                        rec = cache.get(Cache.ident(r, m, c, s, self.setup))
                        if rec is not None and not rec.get("error"):
                            by_comp.setdefault((k, m, c, s), rec)
        self.by_comp = by_comp

    def record(self, row: Row, m: str, c: int, s: tuple):
        """(record, from a twin?) or (None, False)."""
        own = self.cache.get(Cache.ident(row, m, c, s, self.setup))
        if own is not None and not own.get("error"):
            return own, False
        twin = self.by_comp.get((self.keys.get((row.key, c)), m, c, s))
        return twin, twin is not None

    def error(self, row: Row, m: str, c: int) -> Optional[str]:
        rec = self.cache.get(Cache.ident(row, m, c, _shard(error="open"), self.setup))
        if rec is not None:
            return rec["error"]
        for s in self.shards[m]:
            own = self.cache.get(Cache.ident(row, m, c, s, self.setup))
            if own is not None and own.get("error"):
                return own["error"]
        return None

    def paper(self, row: Row, c: int):
        """(list of per-window NLL arrays, or None when incomplete; windows found; twin?)."""
        got, twin = [], False
        for s in self.shards["paper"]:
            rec, t = self.record(row, "paper", c, s)
            if rec is None:
                continue
            if rec["id"] not in self._nll:
                self._nll[rec["id"]] = self.cache.nll(rec)
            if self._nll[rec["id"]] is None:
                continue
            got.append(self._nll[rec["id"]])
            twin |= t
        complete = len(got) == len(self.shards["paper"]) and got
        return (got if complete else None), len(got), twin

    def counts(self, row: Row, m: str, c: int, **match):
        """(passes, trials or questions, shards found, shards wanted, twin?) over the shards whose
        spec matches; multikey depth= picks that depth's questions."""
        depth = match.pop("depth", None) if m == "retrieval" else None
        k = n = found = want = 0
        twin = False
        for s in self.shards[m]:
            spec = dict(s)
            if any(spec.get(a) != b for a, b in match.items()):
                continue
            want += 1
            rec, t = self.record(row, m, c, s)
            if rec is None:
                continue
            found += 1
            twin |= t
            if depth is not None:
                d = [x for x in rec["per_depth"] if x["depth"] == depth]
                k, n = k + sum(x["correct"] for x in d), n + sum(x["trials"] for x in d)
            else:
                k, n = k + rec["correct"], n + rec.get("questions", rec["trials"])
        return k, n, found, want, twin

    def loss(self, row: Row, c: int):
        rec, twin = self.record(row, "loss", c, _shard(chunks=1))
        return rec, twin


# ------------------------------------------------------------------ rendering


def _pct(k: int, n: int) -> str:
    w = wilson(k, n)
    return f"{100 * w.value:.0f}% [{100 * w.lo:.0f}, {100 * w.hi:.0f}]"


def _table(out: list, head: str, cols: list, rows_cells: list, note: str = "") -> None:
    if not any(any(cells) for _, cells in rows_cells):
        return
    out += ["", head, ""]
    if note:
        out += [note, ""]
    out.append("| scheme | " + " | ".join(cols) + " |")
    out.append("|---|" + "---:|" * len(cols))
    for name, cells in rows_cells:
        if any(cells):
            out.append(f"| {name} | " + " | ".join(cells) + " |")


def _name(row: Row) -> str:
    return f"*{row.label}*" if row.engine == "llama.cpp" else row.label


def _signif(ci) -> str:
    return ci.fmt(signed=True) + (" *" if ci.lo > 0 or ci.hi < 0 else "")


def _references(rows, cs, base_ctx: int, score, lower_is_better: bool) -> tuple[dict, dict]:
    """What the difference tables compare with, by name: "rope" (plain RoPE at the base context), "best"
    (the best llama.cpp row at each N) and "self-extend" (at each N), each a function of N giving
    (row, context) or None; and the best llama.cpp row by N. score(row, ctx) is the row's value there,
    None where it has none."""
    refs = {}
    rope = next((r for r in rows if r.label == "none (RoPE)"), None)
    if rope is not None and score(rope, base_ctx) is not None:
        refs["rope"] = lambda c: (rope, base_ctx)
    pick = min if lower_is_better else max
    best = {}
    for c in cs:
        scored = [(v, r) for r in rows if r.engine == "llama.cpp" and (v := score(r, c)) is not None]
        if scored:
            best[c] = pick(scored, key=lambda x: x[0])[1]
    if best:
        refs["best"] = lambda c: (best[c], c) if c in best else None
    se = next((r for r in rows if r.label == "self-extend"), None)
    if se is not None:
        refs["self-extend"] = lambda c: (se, c) if score(se, c) is not None else None
    return refs, best


def _diff_table(out: list, head: str, rows, cs, ref_of, diff, note: str) -> None:
    """One row per scheme, one column per N: diff(row, ctx, ref_row, ref_ctx) -> cell, blank where the
    reference is missing or is the cell itself."""
    table = []
    for r in rows:
        cells = []
        for c in cs:
            ref = ref_of(c)
            same = ref is not None and (ref[0].key, ref[1]) == (r.key, c)
            cells.append("" if ref is None or same else diff(r, c, *ref))
        table.append((_name(r), cells))
    _table(out, head, [_fmt_ctx(c) for c in cs], table, note)


def render(args, rows, cache: Cache) -> str:
    hyper = schemes.hyper_from(args.model)
    res = Results(args, rows, cache, hyper)
    boot = dict(block=args.block, resamples=args.resamples, seed=args.seed)
    out = []
    title = f"# Long-context quality: position schemes on {Path(args.model).stem} (trained context {hyper.n_ctx_train})"
    out.append(title + ("\n\n**PARTIAL REPORT** — " + args.partial if args.partial else ""))
    stamp = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    out += ["", f"Generated by `python python/quality_report.py` ({stamp}); model `{Path(args.model).name}`, text "
                f"`{Path(args.text).name}`. Every number below is in the cache `{_rel(cache.path)}` (per-token "
                f"losses in `{_rel(cache.nll_dir)}/`); rerunning the script resumes it and re-renders this page.",
            "",
            "Rows marked *llama.cpp* ran in llama.cpp itself (llama-cpp-python 0.3.36, flash attention) on the same "
            "tokens; all other rows are this project's runtime with the scheme from `ggml_rerope/schemes.py`. A value "
            "marked `=` was measured on another row that computes exactly the same thing at that context (every "
            "scaling scheme is plain RoPE where its factor is 1, a ReRoPE window >= N is no window, log-n scales "
            "nothing below the trained length, Leaky ReRoPE with k = 1 is RoPE). An empty cell was not run.",
            "",
            f"Intervals are 95 %. Losses: mean [bootstrap interval], resampling blocks of {args.block} scored tokens "
            f"over all windows ({args.resamples} resamples, seed {args.seed}; `ggml_rerope/intervals.py` says why "
            f"blocks). Differences are paired: both rows resampled at the same tokens; ` *` marks an interval that "
            f"excludes 0. Pass rates: Wilson score intervals."]

    base_ctx = args.base_context or hyper.n_ctx_train
    cs = contexts_of(args, "paper")
    if "paper" in args.measures and cs:
        ends = paper_ends(args)
        cells = {}
        for r in rows:
            for c in cs:
                cells[(r.key, c)] = res.paper(r, c)
        means = {k: bootstrap_mean(v[0], **boot) for k, v in cells.items() if v[0] is not None}

        def show(r, c):
            nll, n, twin = cells[(r.key, c)]
            if nll is None:
                return f"({n}/{len(ends)} windows)" if n else ""
            return means[(r.key, c)].fmt() + (" =" if twin else "")

        _table(out, f"## ReRoPE-paper protocol: loss of the last {args.score_last} tokens of {len(ends)} windows "
                    f"given N tokens of context (nats/token; lower is better)",
               [_fmt_ctx(c) for c in cs], [(_name(r), [show(r, c) for c in cs]) for r in rows],
               f"Windows end at tokens {', '.join(str(e) for e in ends)} of the text; at every N the same "
               f"{len(ends) * args.score_last} tokens are scored.")

        def diff(r, c, r0, c0):
            a, b = cells[(r.key, c)][0], cells[(r0.key, c0)][0]
            return "" if a is None or b is None else _signif(paired_difference(a, b, **boot))

        def diff_table(head, ref_of, note):
            _diff_table(out, head, rows, cs, ref_of, diff, note)

        refs, best = _references(rows, cs, base_ctx, lambda r, c: m.value if (m := means.get((r.key, c))) else None,
                                 lower_is_better=True)
        if "rope" in refs:
            trained = " (the trained context)" if base_ctx == hyper.n_ctx_train else ""
            diff_table(f"### Difference from plain RoPE at {_fmt_ctx(base_ctx)}{trained}, same tokens", refs["rope"],
                       "Negative: the row at N predicts the scored tokens better than the model at its trained "
                       "context.")
        if "best" in refs:
            diff_table("### Difference from the best llama.cpp scheme at the same N, same tokens", refs["best"],
                       "Best (lowest loss) at each N: " + ", ".join(f"{_fmt_ctx(c)}: {best[c].label}"
                                                                   for c in sorted(best)) + ".")
        if "self-extend" in refs:
            diff_table("### Difference from Self-Extend at the same N, same tokens", refs["self-extend"], "")

    if "passkey" in args.measures and contexts_of(args, "passkey"):
        _render_passkey(args, rows, res, out, base_ctx)
    if "retrieval" in args.measures and contexts_of(args, "retrieval"):
        _render_retrieval(args, rows, res, out, base_ctx)
    if "loss" in args.measures and contexts_of(args, "loss"):
        cl = contexts_of(args, "loss")

        def lcell(r, c):
            rec, twin = res.loss(r, c)
            return "" if rec is None else f"{rec['loss']:.3f}" + (" =" if twin else "")

        _table(out, "## Mean loss over the first N tokens (one chunk, no interval)", [_fmt_ctx(c) for c in cl],
               [(_name(r), [lcell(r, c) for c in cl]) for r in rows])

    errors = sorted({(r.label, m, e) for r in rows for m in args.measures for c in contexts_of(args, m)
                     if (e := res.error(r, m, c))})
    if errors:
        out += ["", "## Rows that could not run", ""]
        out += [f"- {label} ({m}): {e}" for label, m, e in errors]
    seen = {}
    for rec in cache.items.values():
        if rec.get("scheme"):
            seen.setdefault(rec["label"], set()).add((rec["ctx"], rec["scheme"]))
    if seen:
        out += ["", "## Operator parameters of each row", ""]
        for r in rows:
            if r.label in seen:
                out.append(f"- {r.label}: " + "; ".join(f"{_fmt_ctx(c)}: `{s}`" for c, s in sorted(seen[r.label])))
    return "\n".join(out) + "\n"


def _rel(p: Path) -> str:
    try:
        return os.path.relpath(p, ROOT)
    except ValueError:
        return str(p)


def _render_passkey(args, rows, res: Results, out: list, base_ctx: int) -> None:
    cs = contexts_of(args, "passkey")
    cols = [_fmt_ctx(c) for c in cs]

    def cell(r, c, **match):
        k, n, found, want, twin = res.counts(r, "passkey", c, **match)
        if not n:
            return ""
        more = "" if found == want else f" ({found}/{want} shards)"
        return f"{_pct(k, n)} {k}/{n}" + (" =" if twin else "") + more

    fm, fl = args.passkey_formats, args.passkey_fillers
    _table(out, "## Passkey retrieval: every format, filler and depth", cols,
           [(_name(r), [cell(r, c) for c in cs]) for r in rows],
           f"Pass rate [Wilson 95 %] and passes/trials over formats {', '.join(fm)}, fillers {', '.join(fl)}, depths "
           f"{', '.join(f'{d:g}' for d in args.passkey_depths)}, {args.passkey_trials} keys each (the keys are shared "
           f"across depths, so the pooled interval is somewhat optimistic).")
    _rate_differences(out, rows, cs, lambda r, c: res.counts(r, "passkey", c)[:2], base_ctx, "Pass-rate")
    for f in fm:
        for filler in fl:
            _table(out, f"### Passkey, format `{f}`, filler `{filler}` (all depths)", cols,
                   [(_name(r), [cell(r, c, format=f, filler=filler) for c in cs]) for r in rows])
    depths = sorted(args.passkey_depths)
    for c in cs:
        table = []
        for r in rows:
            cells = []
            for d in depths:
                k, n, *_ = res.counts(r, "passkey", c, depth=d)
                cells.append(f"{k}/{n}" if n else "")
            table.append((_name(r), cells))
        _table(out, f"### Passkey at {_fmt_ctx(c)} by depth (passes/trials over formats and fillers)",
               [f"{d:g}" for d in depths], table, "Depth 0: the needle right after the instruction; 1: right before "
                                                  "the question.")


def _rate_differences(out: list, rows, cs, counts, base_ctx: int, what: str) -> None:
    """Pass-rate differences with Newcombe's interval: from plain RoPE at the base context, from the
    best llama.cpp row and from Self-Extend at the same N. The same prompts at the same N make a
    paired comparison, for which Newcombe's independent-samples interval is conservative."""
    def diff(r, c, r0, c0):
        (k, n), (k0, n0) = counts(r, c), counts(r0, c0)
        return _signif(newcombe_difference(k, n, k0, n0)) if n and n0 else ""

    def table(head, ref_of, note):
        _diff_table(out, head, rows, cs, ref_of, diff, note)

    def rate(r, c):
        k, n = counts(r, c)
        return k / n if n else None

    refs, best = _references(rows, cs, base_ctx, rate, lower_is_better=False)
    if "rope" in refs:
        table(f"### {what} difference from plain RoPE at {_fmt_ctx(base_ctx)}", refs["rope"],
              "Newcombe's interval for two independent proportions (other lengths: other prompts).")
    if "best" in refs:
        table(f"### {what} difference from the best llama.cpp scheme at the same N", refs["best"],
              "Best (highest rate) at each N: " + ", ".join(f"{_fmt_ctx(c)}: {best[c].label}" for c in sorted(best))
              + "; Newcombe's interval (conservative for the same prompts).")
    if "self-extend" in refs:
        table(f"### {what} difference from Self-Extend at the same N", refs["self-extend"],
              "Newcombe's interval (conservative for the same prompts).")


def _render_retrieval(args, rows, res: Results, out: list, base_ctx: int) -> None:
    cs = contexts_of(args, "retrieval")
    cols = [_fmt_ctx(c) for c in cs]
    for task in args.retrieval_tasks:
        def cell(r, c, task=task, **match):
            k, n, found, want, twin = res.counts(r, "retrieval", c, task=task, **match)
            if not n:
                return ""
            return f"{_pct(k, n)} {k}/{n}" + (" =" if twin else "") + ("" if found == want else
                                                                          f" ({found}/{want} shards)")

        if task == "multikey":
            depths = retrieval_options(args, task)["depths"]
            note = (f"RULER multi-key: {len(depths)} needles (one per depth {', '.join(f'{d:g}' for d in depths)}), "
                    f"each asked for; {args.retrieval_trials} haystacks per filler "
                    f"({', '.join(args.retrieval_fillers)}). Pass: the exact 7-digit number.")
        else:
            o = retrieval_options(args, task)
            note = (f"Variable tracking: {o['chains']} chains of {o['hops']} hops, {args.retrieval_trials} haystacks "
                    f"per filler. Pass: every variable of the asked chain named.")
        _table(out, f"## Retrieval: {task}", cols, [(_name(r), [cell(r, c) for c in cs]) for r in rows], note)
        _rate_differences(out, rows, cs, lambda r, c, task=task: res.counts(r, "retrieval", c, task=task)[:2],
                          base_ctx, f"{task.capitalize()} pass-rate")
        if task == "multikey":
            for c in cs:
                table = []
                for r in rows:
                    counts = [res.counts(r, "retrieval", c, task=task, depth=d)[:2] for d in sorted(depths)]
                    table.append((_name(r), [f"{k}/{n}" if n else "" for k, n in counts]))
                _table(out, f"### Multi-key at {_fmt_ctx(c)} by depth of the needle asked for (passes/questions)",
                       [f"{d:g}" for d in sorted(depths)], table)


# ------------------------------------------------------------------ plots


def plots(args, rows, cache: Cache, out_dir: Path):
    """PNG plots; returns their file names, or a reason when none were made."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots need matplotlib (`pip install matplotlib`, an optional dependency: `.[report]`)"
    hyper = schemes.hyper_from(args.model)
    res = Results(args, rows, cache, hyper)
    boot = dict(block=args.block, resamples=args.resamples, seed=args.seed)
    palette = plt.get_cmap("tab20").colors
    style = {r.key: dict(color=palette[i % len(palette)], linestyle="--" if r.engine == "llama.cpp" else "-",
                         marker="o", capsize=3) for i, r in enumerate(all_rows() + [r for r in rows
                                                                                      if r not in all_rows()])}
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        made.append(name)

    cs = contexts_of(args, "paper") if "paper" in args.measures else []
    series = {}
    for r in rows:
        for c in cs:
            nll, _, _ = res.paper(r, c)
            if nll is not None:
                series.setdefault(r.key, []).append((c, bootstrap_mean(nll, **boot)))
    def dodge(i):  # rows side by side around each context, so their bars do not hide each other
        return 2 ** (0.012 * (i - len(rows) / 2))

    if series:
        fig, ax = plt.subplots(figsize=(9, 6))
        for i, r in enumerate(rows):
            pts = series.get(r.key)
            if pts:
                ax.errorbar([c * dodge(i) for c, _ in pts], [ci.value for _, ci in pts],
                            yerr=[[ci.value - ci.lo for _, ci in pts], [ci.hi - ci.value for _, ci in pts]],
                            label=r.label, **style[r.key])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context N (tokens)")
        ax.set_ylabel(f"loss of the last {args.score_last} tokens of {args.paper_windows} windows (95 % CI)")
        ax.axvline(hyper.n_ctx_train, color="grey", lw=0.8)
        lo = min(ci.lo for pts in series.values() for _, ci in pts)
        ax.set_ylim(lo - 0.05, min(lo + 1.0, max(ci.hi for pts in series.values() for _, ci in pts) + 0.05))
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        save(fig, "paper_vs_context.png")
    base_ctx = args.base_context or hyper.n_ctx_train
    rope = next((r for r in rows if r.engine == "ggml-rerope" and r.scheme == "none"), None)
    ref = res.paper(rope, base_ctx)[0] if rope is not None and base_ctx in cs else None
    if ref is not None:
        fig, ax = plt.subplots(figsize=(9, 6))
        for i, r in enumerate(rows):
            pts = [(c, paired_difference(nll, ref, **boot)) for c in cs
                   if (nll := res.paper(r, c)[0]) is not None and (r.key, c) != (rope.key, base_ctx)]
            if pts:
                ax.errorbar([c * dodge(i) for c, _ in pts], [ci.value for _, ci in pts],
                            yerr=[[ci.value - ci.lo for _, ci in pts], [ci.hi - ci.value for _, ci in pts]],
                            label=r.label, **style[r.key])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context N (tokens)")
        ax.set_ylabel(f"loss difference from RoPE at {_fmt_ctx(base_ctx)}, same tokens (paired 95 % CI)")
        ax.set_ylim(-0.3, 0.5)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        save(fig, "paper_difference.png")

    pcs = contexts_of(args, "passkey") if "passkey" in args.measures else []
    depths = sorted(args.passkey_depths)
    grid = {}
    for r in rows:
        for c in pcs:
            for d in depths:
                k, n, *_ = res.counts(r, "passkey", c, depth=d)
                if n:
                    grid[(r.key, c, d)] = (k, n)
    shown = [r for r in rows if any((r.key, c, d) in grid for c in pcs for d in depths)]
    if shown:
        fig, axes = plt.subplots(1, len(pcs), figsize=(2.2 + 1.6 * len(pcs) * max(1, len(depths) / 5),
                                                     1.2 + 0.32 * len(shown)), squeeze=False, sharey=True)
        for ax, c in zip(axes[0], pcs):
            img = np.full((len(shown), len(depths)), np.nan)
            for i, r in enumerate(shown):
                for j, d in enumerate(depths):
                    if (r.key, c, d) in grid:
                        k, n = grid[(r.key, c, d)]
                        img[i, j] = k / n
                        ax.text(j, i, f"{k}/{n}", ha="center", va="center", fontsize=6)
            ax.imshow(img, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            ax.set_title(f"N = {_fmt_ctx(c)}", fontsize=9)
            ax.set_xticks(range(len(depths)))
            ax.set_xticklabels([f"{d:g}" for d in depths], fontsize=7)
            ax.set_xlabel("needle depth")
            ax.set_yticks(range(len(shown)))
            ax.set_yticklabels([r.label for r in shown], fontsize=7)
        save(fig, "passkey_by_depth.png")

    rcs = contexts_of(args, "retrieval") if "retrieval" in args.measures else []
    for task in args.retrieval_tasks if rcs else []:
        fig, ax = plt.subplots(figsize=(9, 5))
        any_pts = False
        for r in rows:
            pts = []
            for c in rcs:
                k, n, *_ = res.counts(r, "retrieval", c, task=task)
                if n:
                    w = wilson(k, n)
                    pts.append((c, w))
            if pts:
                any_pts = True
                ax.errorbar([c for c, _ in pts], [100 * w.value for _, w in pts],
                            yerr=[[100 * (w.value - w.lo) for _, w in pts], [100 * (w.hi - w.value) for _, w in pts]],
                            label=r.label, **style[r.key])
        if not any_pts:
            plt.close(fig)
            continue
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context N (tokens)")
        ax.set_ylabel(f"{task} pass rate % (Wilson 95 %)")
        ax.set_ylim(-2, 102)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        save(fig, f"retrieval_{task}.png")
    return made, ""


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
