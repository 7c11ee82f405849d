"""The quality report's markdown: cells read from the cache (a row's own records, else a twin's),
tables with intervals, differences from the reference rows."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from quality_jobs import (
    MEASURES,
    Cache,
    contexts_of,
    fmt_ctx,
    paper_ends,
    retrieval_options,
    setup_of,
    shard_key,
    shards,
)
from quality_rows import Row, computation

from ggml_rerope import schemes
from ggml_rerope.intervals import bootstrap_mean, newcombe_difference, paired_difference, wilson

ROOT = Path(__file__).resolve().parent.parent  # paths in the page are relative to the checkout


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
        rec = self.cache.get(Cache.ident(row, m, c, shard_key(error="open"), self.setup))
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
        rec, twin = self.record(row, "loss", c, shard_key(chunks=1))
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
    _table(out, head, [fmt_ctx(c) for c in cs], table, note)


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
               [fmt_ctx(c) for c in cs], [(_name(r), [show(r, c) for c in cs]) for r in rows],
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
            diff_table(f"### Difference from plain RoPE at {fmt_ctx(base_ctx)}{trained}, same tokens", refs["rope"],
                       "Negative: the row at N predicts the scored tokens better than the model at its trained "
                       "context.")
        if "best" in refs:
            diff_table("### Difference from the best llama.cpp scheme at the same N, same tokens", refs["best"],
                       "Best (lowest loss) at each N: " + ", ".join(f"{fmt_ctx(c)}: {best[c].label}"
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

        _table(out, "## Mean loss over the first N tokens (one chunk, no interval)", [fmt_ctx(c) for c in cl],
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
                out.append(f"- {r.label}: " + "; ".join(f"{fmt_ctx(c)}: `{s}`" for c, s in sorted(seen[r.label])))
    return "\n".join(out) + "\n"


def _rel(p: Path) -> str:
    try:
        return os.path.relpath(p, ROOT)
    except ValueError:
        return str(p)


def _render_passkey(args, rows, res: Results, out: list, base_ctx: int) -> None:
    cs = contexts_of(args, "passkey")
    cols = [fmt_ctx(c) for c in cs]

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
        _table(out, f"### Passkey at {fmt_ctx(c)} by depth (passes/trials over formats and fillers)",
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
        table(f"### {what} difference from plain RoPE at {fmt_ctx(base_ctx)}", refs["rope"],
              "Newcombe's interval for two independent proportions (other lengths: other prompts).")
    if "best" in refs:
        table(f"### {what} difference from the best llama.cpp scheme at the same N", refs["best"],
              "Best (highest rate) at each N: " + ", ".join(f"{fmt_ctx(c)}: {best[c].label}" for c in sorted(best))
              + "; Newcombe's interval (conservative for the same prompts).")
    if "self-extend" in refs:
        table(f"### {what} difference from Self-Extend at the same N", refs["self-extend"],
              "Newcombe's interval (conservative for the same prompts).")


def _render_retrieval(args, rows, res: Results, out: list, base_ctx: int) -> None:
    cs = contexts_of(args, "retrieval")
    cols = [fmt_ctx(c) for c in cs]
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
                _table(out, f"### Multi-key at {fmt_ctx(c)} by depth of the needle asked for (passes/questions)",
                       [f"{d:g}" for d in sorted(depths)], table)
