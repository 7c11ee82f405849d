"""The work of the quality report: the jobs each measure runs (a row at a context, one shard: a
window or a block of trials), the cache of finished jobs (JSON lines, keyed by everything that
changes a result) and the plan of what is left."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from quality_rows import Row, all_rows, computation, order_rows

from ggml_rerope.passkey import answer_tokens
from ggml_rerope.perplexity import window_ends
from ggml_rerope.retrieval import default_gen_tokens, task_options

MEASURES = ("paper", "passkey", "retrieval", "loss")
CACHE_VERSION = 2
FILLERS = ("grass", "text")  # passkey.py's standard sentences, and sentences of --text


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


def shard_key(**kw) -> tuple:
    """A shard as jobs and the cache hold it: sorted (name, value) pairs, hashable."""
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
        return [shard_key(score_last=args.score_last, end=e) for e in paper_ends(args)]
    if m == "loss":
        return [shard_key(chunks=1)]
    out = []
    step = args.shard_trials
    if m == "passkey":
        for fmt in args.passkey_formats:
            for filler in args.passkey_fillers:
                for depth in sorted(args.passkey_depths, reverse=True):  # deepest first: the prefix cache
                    for first in range(0, args.passkey_trials, step):
                        out.append(shard_key(format=fmt, filler=filler, depth=depth, first=first,
                                          n=min(step, args.passkey_trials - first), seed=args.seed,
                                          gen=answer_tokens(fmt)))
        return out
    for task in args.retrieval_tasks:
        opts = retrieval_options(args, task)
        for filler in args.retrieval_fillers:
            for first in range(0, args.retrieval_trials, step):
                out.append(shard_key(task=task, filler=filler, first=first, n=min(step, args.retrieval_trials - first),
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
                failed = cache.get(Cache.ident(row, m, ctx, shard_key(error="open"), setup))
                if failed is not None and not args.retry_errors:
                    continue
                for s in sh:
                    if (keys[row.key], s) not in covered:
                        jobs.append(Job(row, ctx, m, s))
                        covered.add((keys[row.key], s))
    return jobs


def fmt_ctx(c: int) -> str:
    """8192 -> '8k'."""
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
        print(f"{m:9s} {fmt_ctx(c):>5s}  {label:34s} {n:4d} {unit[m]:8s} {t:>13,d} tokens", file=out)
        by_measure_ctx[(m, c)] = by_measure_ctx.get((m, c), 0) + t
        total += t
    print("", file=out)
    for (m, c), t in by_measure_ctx.items():
        print(f"{m:9s} {fmt_ctx(c):>5s}  {t:>15,d} tokens", file=out)
    print(f"total: {len(jobs)} jobs, {total:,d} evaluated tokens (estimate; prefill cost per token grows with "
          f"the context)", file=out)
    return total
