"""The quality report's PNG plots (matplotlib, optional): loss against context, differences, passkey
by depth, retrieval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from quality_jobs import Cache, contexts_of, fmt_ctx
from quality_render import Results
from quality_rows import all_rows

from ggml_rerope import schemes
from ggml_rerope.intervals import bootstrap_mean, paired_difference, wilson

# ------------------------------------------------------------------ plots


def finish(ax, ylabel: str, ylim: tuple) -> None:
    """The axes every plot against the context shares: N on a log2 scale, a legend, a grid."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context N (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(*ylim)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)


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
    markers = ("o", "s", "^", "D")  # more rows than colours: the marker tells rows of one colour apart
    style = {r.key: dict(color=palette[i % len(palette)], linestyle="--" if r.engine == "llama.cpp" else "-",
                         marker=markers[i // len(palette) % len(markers)], capsize=3)
             for i, r in enumerate(all_rows() + [r for r in rows if r not in all_rows()])}
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
        ax.axvline(hyper.n_ctx_train, color="grey", lw=0.8)
        lo = min(ci.lo for pts in series.values() for _, ci in pts)
        finish(ax, f"loss of the last {args.score_last} tokens of {args.paper_windows} windows (95 % CI)",
               (lo - 0.05, min(lo + 1.0, max(ci.hi for pts in series.values() for _, ci in pts) + 0.05)))
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
        finish(ax, f"loss difference from RoPE at {fmt_ctx(base_ctx)}, same tokens (paired 95 % CI)", (-0.3, 0.5))
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
            ax.set_title(f"N = {fmt_ctx(c)}", fontsize=9)
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
        finish(ax, f"{task} pass rate % (Wilson 95 %)", (-2, 102))
        save(fig, f"retrieval_{task}.png")
    return made, ""
