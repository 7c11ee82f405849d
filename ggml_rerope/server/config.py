"""The server's settings and its command line: llama-cpp-python's server flags where they exist
(--model, --host, --port, --n_ctx, --n_gpu_layers, --n_threads, --api_key, --chat_format, ...;
each also with dashes), llama.cpp's short ones (-c, -ngl, -t, -b, -np), and the position-scheme
flags every ggml_rerope CLI shares (scheme_flags.add_scheme_arguments).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from ..cache_flags import add_cache_type_arguments, cache_types
from ..host import usable_cores
from ..llama_args import LLAMA_DEFAULT_SEED
from ..placement_flags import add_placement_flags, placement_kwargs
from ..scheme_flags import add_scheme_arguments


@dataclass
class ServerConfig:
    model: Optional[str] = None          # GGUF path; None = the default model
    model_alias: Optional[str] = None    # the id /v1/models lists (default: the file name)
    host: str = "127.0.0.1"
    port: int = 8000
    n_ctx: int = 2048                    # per slot (each conversation's context)
    n_batch: int = 512                   # tokens of one step, all slots together
    n_threads: Optional[int] = None      # of the one batched context; None = every core
    n_gpu_layers: int = 0
    seed: int = LLAMA_DEFAULT_SEED
    chat_format: Optional[str] = None
    api_key: Optional[str] = None
    parallel: int = 1                    # slots
    queue_size: int = 16                 # requests waiting for a slot, beyond which: 503
    split_mode: str = "layer"            # llama.cpp's -sm / -ts / -mg (placement_flags.py)
    tensor_split: Optional[list] = None
    main_gpu: int = 0
    type_k: str = "f16"
    type_v: str = "f16"
    scheme_args: Optional[argparse.Namespace] = None  # parsed scheme flags (None = defaults)
    verbose: bool = False

    def threads(self) -> int:
        if self.n_threads:
            return self.n_threads
        return usable_cores()


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ggml_rerope.server",
        description="OpenAI-compatible HTTP server (chat and text completions) on ggml_rerope's runtime.")
    p.add_argument("model_path", nargs="?", help="GGUF model file (default: the default model)")
    p.add_argument("--model", "-m", dest="model", help="GGUF model file (same as the positional argument)")
    p.add_argument("--model_alias", "--model-alias", "-a", dest="model_alias",
                   help="model id that /v1/models lists (default: the file name)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    p.add_argument("--n_ctx", "--n-ctx", "--ctx-size", "-c", dest="n_ctx", type=_positive, default=2048,
                   help="context size of each slot (default 2048)")
    p.add_argument("--n_batch", "--n-batch", "--batch-size", "-b", dest="n_batch", type=_positive, default=512,
                   help="prompt micro-batch (default 512)")
    p.add_argument("--n_threads", "--n-threads", "--threads", "-t", dest="n_threads", type=_positive,
                   help="CPU threads (default: every core); all slots compute in one batched step")
    p.add_argument("--n_gpu_layers", "--n-gpu-layers", "-ngl", dest="n_gpu_layers", type=int, default=0,
                   help="0 = CPU; -1 = whole model on the CUDA GPU")
    p.add_argument("--seed", type=int, default=LLAMA_DEFAULT_SEED, help="sampling seed")
    p.add_argument("--chat_format", "--chat-format", dest="chat_format",
                   help="llama-cpp-python chat format name (default: the GGUF's chat template)")
    p.add_argument("--api_key", "--api-key", dest="api_key",
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health")
    p.add_argument("--parallel", "-np", dest="parallel", type=_positive, default=1,
                   help="slots, i.e. requests computed at once (default 1): sequences of one context, "
                        "evaluated together each step (one copy of the weights)")
    p.add_argument("--queue-size", "--queue_size", dest="queue_size", type=_non_negative, default=16,
                   help="requests that may wait for a free slot; past that: HTTP 503 (default 16)")
    add_cache_type_arguments(p)
    add_placement_flags(p)
    p.add_argument("--verbose", "-v", action="store_true", help="model load details and debug logs")
    add_scheme_arguments(p)
    return p


def config_from_args(argv: Optional[list[str]] = None) -> ServerConfig:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.model_path and a.model and a.model_path != a.model:
        parser.error("give the model once: as the argument or with --model")
    try:  # check the scheme flags now, not after the model loaded
        from ..scheme_flags import scheme_options_from_args

        scheme_options_from_args(a)
    except ValueError as e:
        parser.error(str(e))
    return ServerConfig(
        model=a.model or a.model_path, model_alias=a.model_alias, host=a.host, port=a.port, n_ctx=a.n_ctx,
        n_batch=a.n_batch, n_threads=a.n_threads, n_gpu_layers=a.n_gpu_layers, seed=a.seed,
        chat_format=a.chat_format, api_key=a.api_key, parallel=a.parallel, queue_size=a.queue_size,
        type_k=cache_types(a)[0], type_v=cache_types(a)[1], scheme_args=a, verbose=a.verbose,
        **placement_kwargs(a))
