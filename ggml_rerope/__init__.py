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
    ModelLoadError,
    OutOfMemoryError,
    ReropeError,
    UnsupportedError,
)
from .model import Model

__all__ = [
    "reference",
    "rerope_attention",
    "Model",
    "ReropeError",
    "UnsupportedError",
    "ModelLoadError",
    "ContextFullError",
    "CudaError",
    "OutOfMemoryError",
]
__version__ = "0.1.0"
