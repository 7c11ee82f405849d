"""How closely can two implementations agree on SmolLM2's logits?

Compares, over the first 1000 tokens of the shared text with an f32 KV cache: ours (plain RoPE,
window beyond the input) vs llama.cpp without flash attention, llama.cpp with vs without flash
attention, and ours vs llama.cpp with flash attention. Prints argmax agreement and mean |dlogit|.
Run from the repository root: python python/llama_cpp_self_agreement.py
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ggml_rerope._internals import INT32_MAX, KV_F32, Runtime  # noqa: E402
from ggml_rerope.bench.model import default_text  # noqa: E402
from ggml_rerope.default_model import default_model_path  # noqa: E402
from ggml_rerope.llama_cpp_engine import LlamaCppEngine  # noqa: E402


def llama_cpp_logits(path, tokens, flash_attn: bool) -> np.ndarray:
    with LlamaCppEngine(path, len(tokens) + 16, n_threads=2, flash_attn=flash_attn, kv_type=KV_F32) as lc:
        return lc.eval(tokens, logits_all=True)


path = default_model_path()
with LlamaCppEngine(path, 16, n_threads=2) as lc:
    tokens = lc.tokenize(default_text().read_text()[:20000])[:1000]

with Runtime(path, n_ctx=len(tokens) + 8, n_batch=512, kv_type=KV_F32) as rt:
    rt.set_scheme(window=INT32_MAX, logn_train_len=0)
    ours = rt.eval(tokens, all_logits=True)
no_fa = llama_cpp_logits(path, tokens, flash_attn=False)
fa = llama_cpp_logits(path, tokens, flash_attn=True)
for name, a, b in [("ours vs llama.cpp (no FA)", ours, no_fa), ("llama.cpp FA vs no FA", fa, no_fa),
                   ("ours vs llama.cpp (FA)", ours, fa)]:
    agree = (a.argmax(1) == b.argmax(1)).mean()
    print(f"{name:28s} argmax agreement {agree:.3f}  mean |dlogit| {np.abs(a - b).mean():.4f}")
