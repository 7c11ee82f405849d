"""Where a model's layers go and what each device holds, before anything is loaded.

`split_layers` is llama.cpp's rule for n_gpu_layers / split_mode / tensor_split / main_gpu (the
output head counts as a last layer and is the first to go to a GPU); `memory_plan` reads a GGUF's
tensor table and says, per device, the bytes of weights, KV cache and (estimated) compute buffer for
a given n_ctx, n_batch and cache types, against what is free: on the CUDA devices ggml sees, or on
hypothetical GPUs (`gpu_free`), which is how the README's "fits in 8 / 24 GiB" table is made."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from ._binding import ffi, lib
from ._internals import MAX_DEVICES, TYPE_IDS, check, model_params, split_mode_id

__all__ = ["DevicePlan", "memory_plan", "split_layers", "MAX_DEVICES"]


def split_layers(n_layer: int, n_gpu_layers: int, *, n_gpu: int = 1, split_mode="layer", main_gpu: int = 0,
                 tensor_split: Optional[Sequence[float]] = None) -> list[int]:
    """The device of layers 0..n_layer-1 and then of the output head (n_layer + 1 entries): -1 for the
    CPU, else the GPU index. tensor_split None or all 0: equal shares (the runtime uses free memory)."""
    if not 0 <= n_gpu <= MAX_DEVICES:
        raise ValueError(f"n_gpu must be in 0..{MAX_DEVICES}, got {n_gpu}")
    shares = [0.0] * n_gpu if tensor_split is None else [float(x) for x in tensor_split]
    if len(shares) != n_gpu:
        raise ValueError(f"tensor_split has {len(shares)} entries for {n_gpu} GPU(s)")
    dev = ffi.new("int32_t[]", max(int(n_layer), 0) + 1)
    split = ffi.new("float[]", shares) if shares else ffi.NULL
    check(lib.ggml_rerope_split_layers(int(n_layer), int(n_gpu_layers), split_mode_id(split_mode), int(main_gpu),
                                       n_gpu, split, dev))
    return list(dev)


@dataclass(frozen=True)
class DevicePlan:
    """One device's share: its run of layers, the head, and its bytes (compute is an estimate)."""

    name: str
    is_gpu: bool
    layers: range
    has_output: bool
    weight_bytes: int
    kv_bytes: int
    compute_bytes: int
    free_bytes: int  # 0: unknown
    fits: bool

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.compute_bytes


def memory_plan(model_path, *, n_ctx: int = 4096, n_batch: int = 512, n_seq_max: int = 1, type_k: str = "f16",
                type_v: Optional[str] = None, n_gpu_layers: int = 0, split_mode="layer", main_gpu: int = 0,
                tensor_split: Optional[Sequence[float]] = None,
                gpu_free: Optional[Sequence[int]] = None) -> list[DevicePlan]:
    """Per device (the CPU first, then each GPU holding a layer or the head), what model_path with these
    parameters would need. gpu_free: free bytes of hypothetical GPUs (None: ggml's CUDA devices)."""
    type_v = type_k if type_v is None else type_v
    for field, name in (("type_k", type_k), ("type_v", type_v)):
        if name not in TYPE_IDS:
            raise ValueError(f"{field} must be one of {sorted(TYPE_IDS)}, got {name!r}")
    mp = model_params(n_gpu_layers=n_gpu_layers, split_mode=split_mode, main_gpu=main_gpu, tensor_split=tensor_split)
    cp = ffi.new("ggml_rerope_context_params *", lib.ggml_rerope_context_default_params())
    cp.n_ctx, cp.n_batch, cp.n_seq_max = int(n_ctx), int(n_batch), int(n_seq_max)
    cp.type_k, cp.type_v = TYPE_IDS[type_k], TYPE_IDS[type_v]
    free = ffi.new("int64_t[]", [int(x) for x in gpu_free]) if gpu_free else ffi.NULL
    n_gpu = len(gpu_free) if gpu_free else 0
    out = ffi.new("ggml_rerope_device_plan[]", MAX_DEVICES + 1)
    n_out = ffi.new("int32_t *")
    check(lib.ggml_rerope_model_plan(os.fsencode(os.fspath(model_path)), mp, cp, free, n_gpu, out, MAX_DEVICES + 1,
                                     n_out))
    return [DevicePlan(name=ffi.string(d.name).decode(), is_gpu=bool(d.is_gpu),
                       layers=range(d.first_layer, d.first_layer + d.n_layers), has_output=bool(d.has_output),
                       weight_bytes=int(d.weight_bytes), kv_bytes=int(d.kv_bytes), compute_bytes=int(d.compute_bytes),
                       free_bytes=int(d.free_bytes), fits=bool(d.fits)) for d in out[0:n_out[0]]]
