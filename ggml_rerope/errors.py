"""Typed exceptions. C status codes map onto them in one place (raise_for_status)."""

from __future__ import annotations

from typing import Optional


class ReropeError(Exception):
    """Base class of every error raised by ggml_rerope.

    An error that came from the C library carries its ggml_rerope_status in `status` (None
    otherwise); `message` is the text (the library's ggml_rerope_last_error for C errors)."""

    status: Optional[int] = None

    @property
    def message(self) -> str:
        return str(self)


class LibraryNotFoundError(ReropeError, ImportError):
    """libggml_rerope could not be found or loaded."""


class InvalidArgumentError(ReropeError, ValueError):
    """The C library rejected an argument (GGML_REROPE_ERR_INVALID_ARG); also a ValueError."""


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


_ERROR_BY_STATUS_NAME = {
    "GGML_REROPE_ERR_INVALID_ARG": InvalidArgumentError,
    "GGML_REROPE_ERR_UNSUPPORTED": UnsupportedError,
    "GGML_REROPE_ERR_NO_MEMORY": OutOfMemoryError,
    "GGML_REROPE_ERR_CUDA": CudaError,
    "GGML_REROPE_ERR_IO": ModelLoadError,
    "GGML_REROPE_ERR_CONTEXT_FULL": ContextFullError,
}


def _error_class(status: int) -> type:
    # _binding imports this module, so the status values are read from it at the first error.
    from ._binding import lib

    by_value = {getattr(lib, name): cls for name, cls in _ERROR_BY_STATUS_NAME.items()}
    return by_value.get(status, ReropeError)


def raise_for_status(status: int, message: str) -> None:
    """Raises the exception that matches a ggml_rerope_status (0 = OK returns)."""
    if status == 0:
        return
    err = _error_class(int(status))(message or f"ggml_rerope error {status}")
    err.status = int(status)
    raise err
