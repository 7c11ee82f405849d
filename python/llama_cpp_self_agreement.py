"""How closely can two implementations agree on SmolLM2's logits?

Compares, over the first 1000 tokens of the shared text with an f32 KV cache: ours (plain RoPE,
window beyond the input) vs llama.cpp without flash attention, llama.cpp with vs without flash
attention, and ours vs llama.cpp with flash attention. Prints argmax agreement and mean |dlogit|.
Run from the repository root: python python/llama_cpp_self_agreement.py
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import llama_cpp  # noqa: E402
from runtime_helpers import KV_F32, Runtime, compare, llama_cpp_logits  # noqa: E402

from ggml_rerope.default_model import default_model_path  # noqa: E402

path = str(default_model_path())
text = (ROOT.parent / "shared" / "data" / "war_and_peace.txt").read_text()[:20000]
tokens = llama_cpp.Llama(path, vocab_only=True, verbose=False).tokenize(text.encode())[:1000]

with Runtime(path, n_ctx=len(tokens) + 8, n_batch=512, kv_type=KV_F32) as rt:
    rt.set_scheme(window=1 << 30, logn_train_len=0)
    ours = rt.eval(tokens, all_logits=True)
no_fa = llama_cpp_logits(path, tokens, flash_attn=False, kv_type=KV_F32)
fa = llama_cpp_logits(path, tokens, flash_attn=True, kv_type=KV_F32)
for name, a, b in [("ours vs llama.cpp (no FA)", ours, no_fa), ("llama.cpp FA vs no FA", fa, no_fa),
                   ("ours vs llama.cpp (FA)", ours, fa)]:
    c = compare(a, b)
    print(f"{name:28s} argmax agreement {c['argmax']:.3f}  mean |dlogit| {c['mean_abs']:.4f}")
