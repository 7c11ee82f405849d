"""ggml_rerope: fused ReRoPE attention for ggml, and a GGUF runtime that reads past the trained context.

    import ggml_rerope
    out = ggml_rerope.rerope_attention(q, k, v, window=1024)   # the operator on NumPy arrays
    ggml_rerope.reference.rerope_attention(...)                  # float64 reference of the same math
"""

from . import reference
from .attention import rerope_attention
from .errors import (
    ContextFullError,
    CudaError,
    LibraryNotFoundError,
    ModelLoadError,
    OutOfMemoryError,
    ReropeError,
    UnsupportedError,
)


def __getattr__(name):
    # Model is imported on first use: it needs llama-cpp-python (tokenizer), which the
    # operator alone (a GPU test machine, say) does not.
    if name == "Model":
        from .model import Model

        return Model
    if name == "Llama":  # llama-cpp-python's Llama on this runtime (ggml_rerope/llama.py)
        from .llama import Llama

        return Llama
    raise AttributeError(f"module 'ggml_rerope' has no attribute {name!r}")


__all__ = [
    "reference",
    "rerope_attention",
    "Model",
    "Llama",
    "ReropeError",
    "UnsupportedError",
    "ModelLoadError",
    "ContextFullError",
    "CudaError",
    "LibraryNotFoundError",
    "OutOfMemoryError",
]
__version__ = "0.1.0"
