"""Sequences together vs alone, teacher-forced: how far apart are the logits, step by step?

Greedy tokens say only *that* two runs differ. This feeds every sequence the tokens it generated
alone, in one batch with the others (prompts interleaved at random, then one decode step of all), and
prints per sequence and step the largest logit difference, whether the argmax agrees, and the alone
run's top-2 margin; then the same difference between two batchings of the alone run (512 and 7 tokens
per graph), the engine's own rounding noise. Rounding shows as differences of that size that flip only
tokens whose margin is smaller; a wrong value shows as a difference of the logits' own size.

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
from ggml_rerope._internals import KV_TYPES, RuntimeModel  # noqa: E402
from test_multi_sequence import STEPS, forced_alone, forced_together, greedy_alone  # noqa: E402


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
                # each sequence's own greedy tokens, generated alone
                forced = [greedy_alone(m, pr, STEPS - 1, n_ctx=128, type_k=t, type_v=t) for pr in prompts]
                alone = [forced_alone(m, pr, f, 128, 512, t) for pr, f in zip(prompts, forced)]
                rebatched = [forced_alone(m, pr, f, 128, 7, t) for pr, f in zip(prompts, forced)]
                together = forced_together(m, prompts, forced, 128, t, rng)
                for s, (ref, got, again) in enumerate(zip(alone, together, rebatched)):
                    d = np.abs(got - ref).max(axis=1)
                    top2 = np.sort(ref, axis=1)[:, -2:]
                    agree = got.argmax(1) == ref.argmax(1)
                    print(f"{name} seq {s}: max|dlogit| per step {np.array2string(d, precision=5)} (alone rebatched: "
                          f"{np.array2string(np.abs(again - ref).max(axis=1), precision=5)}), argmax agree "
                          f"{agree.astype(int).tolist()}, alone's top-2 margin "
                          f"{np.array2string(top2[:, 1] - top2[:, 0], precision=4)}, "
                          f"max|logit| {np.abs(ref).max():.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
