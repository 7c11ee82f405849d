"""LongRoPE's evolutionary search (Ding et al. 2024, arXiv:2402.13753, Sec. 3.2), the algorithm alone:
no model here, fitness is a callable. `longrope_search` runs it with the runtime's loss as fitness.

A candidate (`Genome`) is a vector of per-pair DIVISORS of theta, lambda_m >= 1 (pair m = 0 is the
highest frequency), on a grid lambda = 1 + step * tick, with two constraints that every operator
below keeps:
- monotone: lambda_m <= lambda_{m+1}, the factors never decrease from high to low frequency;
- n_hat: the leading n_hat pairs keep lambda = 1 (no interpolation); n_hat is searched too.

The paper's n_hat counts leading TOKEN POSITIONS kept unscaled; that mixes two frequencies in one
query-key product, which a relative-position operator cannot express. Here, as in YaRN, it counts
leading (highest-frequency) DIMENSIONS, which the operator can.

One generation, as the paper's Algorithm 1: the best `parents` of the population survive (so the
best loss never rises), and the rest of the population is refilled with mutants of random parents
and crossovers of random parent pairs, each new (a candidate seen before is drawn again, a bounded
number of times). The initial population is the PI, NTK and YaRN factors for the target length and
mutants of them. Everything random comes from one numpy Generator, whose state is saved with the
population, so a resumed search draws what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Callable, Optional

import numpy as np

from . import schemes

# Tries to draw a candidate not seen before; past them a repeat is accepted (its loss is cached).
NOVELTY_TRIES = 50


@dataclasses.dataclass(frozen=True)
class Genome:
    n_hat: int
    ticks: tuple  # lambda_m = 1 + step * ticks[m], ints

    def key(self) -> str:
        return f"{self.n_hat}:" + ",".join(map(str, self.ticks))

    @classmethod
    def from_key(cls, key: str) -> Genome:
        n_hat, ticks = key.split(":")
        return cls(int(n_hat), tuple(int(t) for t in ticks.split(",")))


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Where candidates live: n_pairs divisors in [1, max_divisor] on a grid of `step`, n_hat <= n_hat_max."""

    n_pairs: int
    max_divisor: float
    n_hat_max: int
    step: float = 0.01

    def __post_init__(self):
        if self.n_pairs < 1:
            raise ValueError(f"n_pairs must be >= 1, got {self.n_pairs}")
        if not (math.isfinite(self.step) and self.step > 0):
            raise ValueError(f"step must be a finite number > 0, got {self.step}")
        if not (math.isfinite(self.max_divisor) and self.max_divisor >= 1):
            raise ValueError(f"max_divisor must be a finite number >= 1, got {self.max_divisor}")
        if not 0 <= self.n_hat_max <= self.n_pairs:
            raise ValueError(f"n_hat_max must be in 0 .. {self.n_pairs}, got {self.n_hat_max}")

    @property
    def max_tick(self) -> int:
        return int(math.floor((self.max_divisor - 1.0) / self.step + 1e-9))

    def divisors(self, g: Genome) -> np.ndarray:
        return 1.0 + self.step * np.asarray(g.ticks, dtype=np.float64)

    def violations(self, g: Genome) -> list:
        """What is wrong with `g` in this space (empty when it is a valid candidate)."""
        t = np.asarray(g.ticks)
        out = []
        if t.shape != (self.n_pairs,):
            return [f"{t.size} divisors, not {self.n_pairs}"]
        if not 0 <= g.n_hat <= self.n_hat_max:
            out.append(f"n_hat {g.n_hat} outside 0 .. {self.n_hat_max}")
        if t.min() < 0 or t.max() > self.max_tick:
            out.append(f"a divisor outside [1, {self.max_divisor}]")
        if np.any(np.diff(t) < 0):
            out.append("divisors decrease from high to low frequency")
        if np.any(t[: g.n_hat] != 0):
            out.append(f"one of the first n_hat = {g.n_hat} divisors is not 1")
        return out

    def project(self, divisors, n_hat: int = 0) -> Genome:
        """The nearest valid candidate to `divisors`: clipped, on the grid, the first n_hat set to 1,
        then each raised to the running maximum (monotone)."""
        d = np.asarray(divisors, dtype=np.float64).reshape(-1)
        if d.shape != (self.n_pairs,):
            raise ValueError(f"divisors must have {self.n_pairs} values, got {d.size}")
        n_hat = int(min(max(n_hat, 0), self.n_hat_max))
        ticks = np.rint((np.clip(d, 1.0, self.max_divisor) - 1.0) / self.step).astype(np.int64)
        ticks = np.minimum(ticks, self.max_tick)
        ticks[:n_hat] = 0
        ticks = np.maximum.accumulate(ticks)
        return Genome(n_hat, tuple(int(x) for x in ticks))


def seed_divisors(hyper: schemes.ModelHyper, target_ctx: int) -> dict:
    """The divisors of theta that PI (linear), NTK and YaRN use at `target_ctx`: the plain RoPE
    thetas over each scheme's thetas (its base and factors, the model's own rope_freqs included)."""
    m = np.arange(hyper.n_rot // 2, dtype=np.float64)
    plain = hyper.rope_base ** (-2.0 * m / hyper.n_rot)
    return {label: plain / schemes.make_scheme(name, hyper, target_ctx).thetas(hyper)
            for label, name in (("pi", "linear"), ("ntk", "ntk"), ("yarn", "yarn"))}


def mutate(g: Genome, space: SearchSpace, rng: np.random.Generator, rate: float, scale: float) -> Genome:
    """Each gene (n_hat, then every divisor past n_hat) changes with probability `rate`: n_hat by a
    small step, a divisor by a log-normal factor exp(scale * N(0, 1)); a changed divisor pushes its
    neighbours just enough to stay monotone (those below down, those above up)."""
    ticks = np.array(g.ticks, dtype=np.int64)
    n_hat = g.n_hat
    if space.n_hat_max > 0 and rng.random() < rate:
        reach = max(1, space.n_hat_max // 4)
        n_hat = int(np.clip(n_hat + rng.integers(-reach, reach + 1), 0, space.n_hat_max))
    ticks[:n_hat] = 0
    for i in range(n_hat, space.n_pairs):
        if rng.random() >= rate:
            continue
        d = (1.0 + space.step * ticks[i]) * math.exp(scale * rng.standard_normal())
        t = int(np.rint((min(max(d, 1.0), space.max_divisor) - 1.0) / space.step))
        t = min(t, space.max_tick)
        ticks[i] = t
        ticks[i + 1:] = np.maximum(ticks[i + 1:], t)
        ticks[n_hat:i] = np.minimum(ticks[n_hat:i], t)
    return Genome(n_hat, tuple(int(x) for x in ticks))


def crossover(a: Genome, b: Genome, space: SearchSpace, rng: np.random.Generator) -> Genome:
    """n_hat from one parent; each divisor from either parent, among those not below the previous
    divisor. The larger of the two always qualifies (both parents are monotone), so the child is
    monotone without repair or retries."""
    n_hat = a.n_hat if rng.random() < 0.5 else b.n_hat
    out, prev = [], 0
    for i, (x, y) in enumerate(zip(a.ticks, b.ticks)):
        if i < n_hat:
            out.append(0)
            continue
        options = [v for v in (x, y) if v >= prev]
        pick = options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]
        out.append(int(pick))
        prev = pick
    return Genome(n_hat, tuple(out))


def _novel(draw: Callable[[], Genome], seen: set) -> Genome:
    for _ in range(NOVELTY_TRIES):
        g = draw()
        if g.key() not in seen:
            break
    seen.add(g.key())
    return g


@dataclasses.dataclass(frozen=True)
class EvolutionConfig:
    population: int = 64
    parents: int = 32
    generations: int = 40
    mutation_rate: float = 0.3
    mutation_scale: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.population < 2:
            raise ValueError(f"population must be >= 2, got {self.population}")
        if not 1 <= self.parents < self.population:
            raise ValueError(f"parents must be in 1 .. population - 1 = {self.population - 1}, got {self.parents}")
        if self.generations < 0:
            raise ValueError(f"generations must be >= 0, got {self.generations}")
        if not 0 < self.mutation_rate <= 1:
            raise ValueError(f"mutation_rate must be in (0, 1], got {self.mutation_rate}")
        if not (math.isfinite(self.mutation_scale) and self.mutation_scale > 0):
            raise ValueError(f"mutation_scale must be a finite number > 0, got {self.mutation_scale}")

    def fingerprint(self) -> dict:
        """What a resumed search must share with the one that saved the state (generations may grow)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "generations"}


@dataclasses.dataclass
class Member:
    genome: Genome
    loss: float
    origin: str  # pi, ntk, yarn, mutation, crossover


def _rank(m: Member):
    return (m.loss if math.isfinite(m.loss) else math.inf, m.genome.key())


@dataclasses.dataclass
class EvolutionState:
    """The search at the end of a generation (generation 0: the initial population evaluated)."""

    generation: int
    population: list
    seen: set
    rng: np.random.Generator
    best_losses: list  # the best loss after each generation, from 0

    @property
    def best(self) -> Member:
        return min(self.population, key=_rank)

    def to_json(self) -> dict:
        return {
            "generation": self.generation,
            "population": [{"key": m.genome.key(), "loss": m.loss, "origin": m.origin} for m in self.population],
            "seen": sorted(self.seen),
            "rng": self.rng.bit_generator.state,
            "best_losses": list(self.best_losses),
        }

    @classmethod
    def from_json(cls, d: Mapping) -> EvolutionState:
        rng = np.random.default_rng()
        rng.bit_generator.state = d["rng"]
        pop = [Member(Genome.from_key(m["key"]), float(m["loss"]), m["origin"]) for m in d["population"]]
        return cls(int(d["generation"]), pop, set(d["seen"]), rng, [float(x) for x in d["best_losses"]])


Fitness = Callable[[Genome], float]


def initial_population(seeds: Mapping, space: SearchSpace, config: EvolutionConfig, rng: np.random.Generator,
                       seen: set) -> list:
    """(genome, origin) pairs: each seed's projection (duplicates dropped), then mutants of the seeds in turn."""
    out = []
    for label, divisors in seeds.items():
        g = space.project(divisors, 0)
        if g.key() not in seen:
            seen.add(g.key())
            out.append((g, label))
    bases = list(out)
    i = 0
    while len(out) < config.population:
        base, label = bases[i % len(bases)]
        out.append((_novel(functools.partial(mutate, base, space, rng, config.mutation_rate, config.mutation_scale),
                            seen), f"{label}+mutation"))
        i += 1
    return out[:config.population]


def children(parents: list, space: SearchSpace, config: EvolutionConfig, rng: np.random.Generator,
             seen: set) -> list:
    """(genome, origin) pairs refilling the population: half mutants (rounded up), half crossovers."""
    n_new = config.population - len(parents)
    n_cross = n_new // 2 if len(parents) > 1 else 0
    out = []
    for _ in range(n_new - n_cross):
        p = parents[int(rng.integers(len(parents)))].genome
        out.append((_novel(functools.partial(mutate, p, space, rng, config.mutation_rate, config.mutation_scale),
                            seen), "mutation"))
    for _ in range(n_cross):
        i, j = rng.choice(len(parents), size=2, replace=False)
        a, b = parents[int(i)].genome, parents[int(j)].genome
        out.append((_novel(functools.partial(crossover, a, b, space, rng), seen), "crossover"))
    return out


def evolve(space: SearchSpace, seeds: Mapping, config: EvolutionConfig, evaluate: Callable[[Genome, str, int], float],
           state: Optional[EvolutionState] = None,
           on_generation: Optional[Callable[[EvolutionState], None]] = None) -> EvolutionState:
    """Runs the search up to config.generations from `state` (None: a fresh start from config.seed).
    evaluate(genome, origin, generation) gives a candidate's loss; on_generation(state) is called
    after the initial population and after each generation (the place to save the state)."""
    if state is None:
        rng = np.random.default_rng(config.seed)
        seen: set = set()
        pop = [Member(g, float(evaluate(g, origin, 0)), origin)
               for g, origin in initial_population(seeds, space, config, rng, seen)]
        state = EvolutionState(0, pop, seen, rng, [])
        state.best_losses.append(state.best.loss)
        if on_generation is not None:
            on_generation(state)
    while state.generation < config.generations:
        gen = state.generation + 1
        parents = sorted(state.population, key=_rank)[:config.parents]
        new = [Member(g, float(evaluate(g, origin, gen)), origin)
               for g, origin in children(parents, space, config, state.rng, state.seen)]
        state.population = parents + new
        state.generation = gen
        state.best_losses.append(state.best.loss)
        if on_generation is not None:
            on_generation(state)
    return state
