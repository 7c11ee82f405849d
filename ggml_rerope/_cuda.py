"""Whether the CUDA operator can run here. rerope_attention(..., device="cuda") calls
ggml_rerope_attn_cuda_from_host directly (attention.py): the C entry validates the call first,
so bad arguments raise the CPU's ValueError even without a GPU, and CudaError comes only for a
valid call that CUDA cannot run here."""

from __future__ import annotations

from . import _binding


def cuda_available() -> bool:
    """True if the library has CUDA kernels and a device is visible."""
    return bool(_binding.lib.ggml_rerope_cuda_available())
