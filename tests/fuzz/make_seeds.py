"""Writes the fuzzer's seeds: small valid GGUFs (tests/gguf_factory.py) covering each architecture,
several weight types (repacked or not), tied and untied heads, the rotary scaling keys and the
rotary factor tensors, so mutants reach every branch of the loader.

    python tests/fuzz/make_seeds.py DIR      # prints the comma-separated list of seed paths
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
from gguf import GGUFValueType as T

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import gguf_factory  # noqa: E402

# Every row a multiple of 32 (Q8_0 / Q4_0 blocks); small enough that a case takes a few ms.
SMALL = dict(n_embd=64, n_head=2, n_head_kv=1, head_dim=32, n_ff=96, n_layer=2, n_vocab=272)
# K-quants need rows of 256.
WIDE = dict(n_embd=256, n_head=2, n_head_kv=1, head_dim=128, n_ff=256, n_layer=1, n_vocab=260)


def write_seeds(d) -> list[pathlib.Path]:
    d = pathlib.Path(d)
    d.mkdir(parents=True, exist_ok=True)
    half = SMALL["head_dim"] // 2
    seeds = [
        gguf_factory.write_model(
            d / "llama_q8_0_yarn.gguf", "llama", "Q8_0", rope_freqs=True, **SMALL,
            metadata={
                "general.alignment": (32, T.UINT32),
                "llama.vocab_size": (SMALL["n_vocab"], T.UINT32),
                "llama.rope.scaling.type": ("yarn", T.STRING),
                "llama.rope.scaling.factor": (4.0, T.FLOAT32),
                "llama.rope.scaling.original_context_length": (1024, T.UINT32),
                "llama.rope.scaling.attn_factor": (1.0, T.FLOAT32),
                "llama.rope.scaling.yarn_ext_factor": (1.0, T.FLOAT32),
                "llama.rope.scaling.yarn_attn_factor": (1.0, T.FLOAT32),
                "llama.rope.scaling.yarn_beta_fast": (32.0, T.FLOAT32),
                "llama.rope.scaling.yarn_beta_slow": (1.0, T.FLOAT32),
                "llama.rope.scaling.yarn_log_multiplier": (0.1, T.FLOAT32),
            }),
        gguf_factory.write_model(
            d / "qwen2_f16_tied.gguf", "qwen2", "F16", tie_output=True, **SMALL,
            metadata={"qwen2.rope.scale_linear": (2.0, T.FLOAT32),
                      "qwen2.attention.head_count_kv": ([1] * SMALL["n_layer"], T.ARRAY, T.UINT32)}),
        gguf_factory.write_model(
            d / "qwen3_q4_0_longrope.gguf", "qwen3", "Q4_0", **SMALL,
            metadata={"qwen3.rope.scaling.type": ("longrope", T.STRING)},
            extra_tensors={
                "rope_factors_long.weight": np.linspace(1.0, 4.0, half).astype(np.float32),
                "rope_factors_short.weight": np.linspace(1.0, 1.5, half).astype(np.float16),
            }),
        gguf_factory.write_model(d / "llama_q4_k_wide.gguf", "llama", "Q4_K", **WIDE),
    ]
    return seeds


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(",".join(str(p) for p in write_seeds(sys.argv[1])))
