"""Sequences together vs alone, teacher-forced: how far apart are the logits, step by step?

tests/test_multi_sequence.py compares greedy tokens, which say only *that* two runs differ. This feeds
every sequence the tokens it generated alone, in one batch with the others (prompts interleaved at
random, then one decode step of all), and prints per sequence and step the largest logit difference,
whether the argmax agrees, and the alone run's top-2 margin: rounding shows as differences of ~1e-3
that flip only tokens whose margin is smaller; a wrong value shows as a large difference.

    python python/diag_sequences_gpu.py [--ngl -1] [--types f16,q8_0]   (GGML_REROPE_ATTN_ROT_DISABLE=1: unrotated)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import gguf_factory  # noqa: E402
from ggml_rerope._internals import KV_TYPES, RuntimeContext, RuntimeModel  # noqa: E402
from test_multi_sequence import prefill_together  # noqa: E402

STEPS = 5


def alone(m, prompt, steps, n_ctx, t):
    """(greedy tokens, logits of every step) of one sequence in its own context."""
    with RuntimeContext(m, n_ctx=n_ctx, n_batch=512, n_threads=2, type_k=t, type_v=t) as ctx:
        rows = [ctx.decode(prompt, np.zeros(prompt.size))[-1]]
        toks = []
        for _ in range(steps - 1):
            toks.append(int(np.argmax(rows[-1])))
            rows.append(ctx.decode(np.array(toks[-1:]), np.zeros(1))[-1])
        return toks, np.array(rows)


def together(m, prompts, forced, n_ctx, t, rng):
    """Every sequence's logits per step, all in one context, fed the forced tokens."""
    n = len(prompts)
    with RuntimeContext(m, n_ctx=n * n_ctx, n_batch=32, n_threads=2, n_seq_max=n, type_k=t, type_v=t) as ctx:
        rows = [[r] for r in prefill_together(ctx, prompts, rng)]
        for k in range(len(forced[0])):
            out = ctx.decode(np.array([forced[s][k] for s in range(n)]), np.arange(n))
            for s in range(n):
                rows[s].append(out[s])
        return [np.array(r) for r in rows]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ngl", type=int, default=-1)
    p.add_argument("--types", default="f16,q8_0")
    a = p.parse_args()
    print(f"rotation {'off' if os.environ.get('GGML_REROPE_ATTN_ROT_DISABLE') else 'on'}, ngl {a.ngl}")
    with tempfile.TemporaryDirectory() as tmp:
        path = gguf_factory.write_model(os.path.join(tmp, "m.gguf"), "llama", "Q8_0", seed=7, n_ctx_train=64)
        with RuntimeModel(path, n_gpu_layers=a.ngl) as m:
            for name in a.types.split(","):
                t = KV_TYPES[name]
                rng = np.random.default_rng(2)
                prompts = [rng.integers(0, m.n_vocab, size=n) for n in (37, 5, 80, 13)]
                runs = [alone(m, pr, STEPS, 128, t) for pr in prompts]
                tog = together(m, prompts, [r[0] for r in runs], 128, t, rng)
                for s, ((_, ref), got) in enumerate(zip(runs, tog)):
                    d = np.abs(got - ref).max(axis=1)
                    top2 = np.sort(ref, axis=1)[:, -2:]
                    agree = got.argmax(1) == ref.argmax(1)
                    print(f"{name} seq {s}: max|dlogit| per step {np.array2string(d, precision=5)}, argmax agree "
                          f"{agree.astype(int).tolist()}, alone's top-2 margin "
                          f"{np.array2string(top2[:, 1] - top2[:, 0], precision=4)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
