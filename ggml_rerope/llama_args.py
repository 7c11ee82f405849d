"""How llama-cpp-python's `Llama(...)` arguments map onto `ggml_rerope.Model`.

Every keyword that llama-cpp-python 0.3.36's constructor names falls in exactly one group
(tests/test_llama_dropin.py checks this against the installed llama_cpp.Llama):
  applied           mapped onto Model (or the drop-in's own state)
  NO_EFFECT         performance or placement knobs our runtime does not have: a non-default
                    value is accepted with a warning, since the results stay the same
  UNSUPPORTED       features that change what the model computes (LoRA, embeddings, a draft
                    model, a foreign tokenizer, ...): a non-default value is a ValueError,
                    because ignoring it would silently answer with another model
A keyword llama-cpp-python does not name is a TypeError (a typo should not pass silently).
"""

from __future__ import annotations

import warnings
from typing import Optional

from .kv_quant import TYPE_IDS

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "no seed given"

# llama_rope_scaling_type -> our scheme name (-1 = unspecified: our default, ReRoPE)
ROPE_SCALING_TYPES = {0: "none", 1: "linear", 2: "yarn", 3: "longrope"}

APPLIED = frozenset({
    "model_path", "n_gpu_layers", "seed", "n_ctx", "n_batch", "n_threads", "n_threads_batch",
    "rope_scaling_type", "rope_freq_scale", "yarn_ext_factor", "yarn_attn_factor", "yarn_beta_fast",
    "yarn_beta_slow", "yarn_orig_ctx", "logits_all", "last_n_tokens_size", "chat_format", "chat_handler",
    "type_k", "type_v", "verbose", "split_mode", "main_gpu", "tensor_split",
})

# name -> llama-cpp-python's default
NO_EFFECT = {
    "use_mmap": True, "use_mlock": False,
    "n_ubatch": 512, "pooling_type": -1, "attention_type": -1, "offload_kqv": True, "flash_attn": False,
    "op_offload": None, "swa_full": None, "no_perf": False, "numa": False, "spm_infill": False,
}

UNSUPPORTED = {
    "vocab_only": False, "kv_overrides": None, "rope_freq_base": 0.0, "embedding": False,
    "lora_base": None, "lora_scale": 1.0, "lora_path": None, "draft_model": None, "tokenizer": None,
}

_GGML_TYPE_TO_KV = {v: k for k, v in TYPE_IDS.items()}  # ggml_rerope_kv_type values are ggml's GGML_TYPE_*
_YARN_DEFAULTS = {"yarn_ext_factor": -1.0, "yarn_attn_factor": 1.0, "yarn_beta_fast": 32.0,
                  "yarn_beta_slow": 1.0, "yarn_orig_ctx": 0}


def check_extra_kwargs(kwargs: dict) -> None:
    """Warns about / rejects the llama-cpp-python keywords our runtime does not apply."""
    for name, value in kwargs.items():
        if name in NO_EFFECT:
            if value != NO_EFFECT[name]:
                warnings.warn(f"Llama: {name}={value!r} has no effect in ggml_rerope (ignored)", stacklevel=3)
        elif name in UNSUPPORTED:
            if value != UNSUPPORTED[name]:
                raise ValueError(f"Llama: {name}={value!r} is not supported by ggml_rerope")
        else:
            raise TypeError(f"Llama.__init__() got an unexpected keyword argument {name!r}")


def cache_types_from(type_k: Optional[int], type_v: Optional[int], kv_type: Optional[str]) -> tuple[str, str]:
    """(type_k, type_v) cache type names from llama-cpp-python's ggml type ids (None: f16) or our
    kv_type name for both."""
    if type_k is None and type_v is None:
        return (kv_type or "f16",) * 2
    if kv_type is not None:
        raise ValueError("give kv_type or type_k/type_v, not both")
    names = []
    for arg, value in (("type_k", type_k), ("type_v", type_v)):
        name = _GGML_TYPE_TO_KV.get(1 if value is None else value)
        if name is None:
            raise ValueError(f"{arg}={value}: not a KV cache type ggml_rerope has "
                             f"({', '.join(f'{n} = {i}' for n, i in TYPE_IDS.items())})")
        names.append(name)
    return names[0], names[1]


def scheme_from(rope_scaling, rope_scaling_type: Optional[int], rope_freq_scale: float, yarn: dict,
                rope_options: Optional[dict]) -> tuple[object, Optional[dict]]:
    """(rope_scaling, rope_options) for Model from llama-cpp-python's rope arguments and ours.

    rope_scaling (ours: a scheme name or a Scheme) and rope_scaling_type (llama.cpp's enum)
    exclude each other; rope_freq_scale f without a type means linear scaling by 1 / f, as in
    llama.cpp; the yarn_* values apply to yarn (and attn_factor / orig_ctx to longrope)."""
    typed = rope_scaling_type is not None and rope_scaling_type != -1
    if typed and rope_scaling is not None:
        raise ValueError("give rope_scaling (a ggml_rerope scheme) or rope_scaling_type, not both")
    options = {}
    if typed:
        if rope_scaling_type not in ROPE_SCALING_TYPES:
            raise ValueError(f"rope_scaling_type must be one of {sorted(ROPE_SCALING_TYPES)} or -1, "
                             f"got {rope_scaling_type!r}")
        name = ROPE_SCALING_TYPES[rope_scaling_type]
    elif rope_freq_scale and rope_scaling is None:
        name = "linear"
    else:
        name = "rerope" if rope_scaling is None else rope_scaling
    if rope_freq_scale:
        if name not in ("linear", "yarn"):
            raise ValueError(f"rope_freq_scale applies to linear and yarn scaling, not {name!r}")
        if not rope_freq_scale > 0:
            raise ValueError(f"rope_freq_scale must be > 0, got {rope_freq_scale}")
        options["scale"] = 1.0 / float(rope_freq_scale)
    given = {k: v for k, v in yarn.items() if v != _YARN_DEFAULTS[k]}
    takers = {"yarn": {"yarn_ext_factor", "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_orig_ctx"},
              "longrope": {"yarn_attn_factor", "yarn_orig_ctx"}}.get(name if isinstance(name, str) else "", set())
    for key, value in given.items():
        if key not in takers:
            warnings.warn(f"Llama: {key}={value!r} does not apply to rope scaling {name!r} (ignored)", stacklevel=3)
            continue
        if key == "yarn_ext_factor" and value < 0:  # negative = from the model, as in llama.cpp
            continue
        if key == "yarn_orig_ctx" and value <= 0:
            continue
        options[key[len("yarn_"):]] = value
    if rope_options:
        options.update(rope_options)
    return name, (options or None)
