"""Typed exceptions. C status codes map onto them in one place (raise_for_status)."""

from __future__ import annotations


class ReropeError(Exception):
    """Base class of every error raised by ggml_rerope."""


class LibraryNotFoundError(ReropeError, ImportError):
    """libggml_rerope could not be found or loaded."""


class UnsupportedError(ReropeError):
    """A model architecture, tensor type or feature this build cannot run."""


class ModelLoadError(ReropeError, OSError):
    """A model file is missing, unreadable, not a GGUF, corrupt or truncated."""


class ContextFullError(ReropeError):
    """More tokens than the context holds."""


class CudaError(ReropeError):
    """A CUDA call failed, or no CUDA device or CUDA build is available."""


class OutOfMemoryError(ReropeError, MemoryError):
    """An allocation failed."""


def raise_for_status(status: int, message: str) -> None:
    """Raises the exception that matches a ggml_rerope_status (0 = OK returns)."""
    if status == 0:
        return
    cls = {
        1: ValueError,
        2: UnsupportedError,
        3: OutOfMemoryError,
        4: CudaError,
        5: ModelLoadError,
        6: ContextFullError,
    }.get(status, ReropeError)
    raise cls(message or f"ggml_rerope error {status}")
