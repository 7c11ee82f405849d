"""Real ggml graphs on ggml's CPU compute, through the ggml subset of _binding:
our ReRoPE node, and ggml's own RoPE + flash attention (the benchmark's peer)."""

from __future__ import annotations

import numpy as np

from .. import _binding
from ..errors import raise_for_status

_TYPES = {np.dtype(np.float32): _binding.GGML_TYPE_F32, np.dtype(np.float16): _binding.GGML_TYPE_F16,
          np.dtype(np.int32): _binding.GGML_TYPE_I32}


class GgmlContext:
    """A ggml context owning its tensors' memory; free() (or `with`) releases it."""

    def __init__(self, mem_bytes: int):
        self.ffi = _binding.ffi
        self.base, self.cpu = _binding.ggml()
        params = self.ffi.new("struct ggml_init_params *")
        params.mem_size = int(mem_bytes)
        params.mem_buffer = self.ffi.NULL
        params.no_alloc = False
        self.ctx = self.base.ggml_init(params[0])
        if self.ctx == self.ffi.NULL:
            raise MemoryError(f"ggml_init failed for {mem_bytes} bytes")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    def free(self):
        if self.ctx is not None:
            self.base.ggml_free(self.ctx)
            self.ctx = None

    def tensor(self, arr: np.ndarray):
        """A new tensor holding a copy of arr (numpy shape reversed into ggml's ne)."""
        arr = np.ascontiguousarray(arr)
        ne = arr.shape[::-1]
        t = getattr(self.base, f"ggml_new_tensor_{len(ne)}d")(self.ctx, _TYPES[arr.dtype], *ne)
        self.ffi.memmove(self.base.ggml_get_data(t), arr.tobytes() if arr.size < 16 else memoryview(arr).cast("B"),
                         arr.nbytes)
        return t

    def array(self, t, shape, dtype=np.float32) -> np.ndarray:
        """Copy of a contiguous tensor's data as a numpy array of `shape`."""
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = self.ffi.buffer(self.base.ggml_get_data(t), n)
        return np.frombuffer(buf, dtype=dtype).reshape(shape).copy()

    def graph(self, out):
        gf = self.base.ggml_new_graph(self.ctx)
        self.base.ggml_build_forward_expand(gf, out)
        return gf

    def compute(self, gf, threads: int):
        status = self.cpu.ggml_graph_compute_with_ctx(self.ctx, gf, int(threads))
        if status != 0:
            raise RuntimeError(f"ggml_graph_compute_with_ctx failed with status {status}")
        # ggml's status does not cover our node's failures (workspace, positions): ask the node
        raise_for_status(_binding.lib.ggml_rerope_graph_status(gf), _binding.last_error())


def rerope_node(q, k, v, params, *, q_pos=None, k_pos=None, threads=2):
    """Computes ggml_rerope_attn inside a ggml graph; returns (n_q, H, d) float32.
    params: cffi `ggml_rerope_params *` (kept alive by the caller)."""
    n_q, n_head, d = q.shape
    mem = q.nbytes * 2 + k.nbytes + v.nbytes + (64 << 20)
    with GgmlContext(mem) as g:
        tq, tk, tv = g.tensor(q), g.tensor(k), g.tensor(v)
        tqp = g.tensor(np.asarray(q_pos, dtype=np.int32)) if q_pos is not None else g.ffi.NULL
        tkp = g.tensor(np.asarray(k_pos, dtype=np.int32)) if k_pos is not None else g.ffi.NULL
        out = _binding.lib.ggml_rerope_attn(g.ctx, tq, tk, tv, tqp, tkp, params)
        if out == g.ffi.NULL:
            raise ValueError(_binding.last_error())
        gf = g.graph(out)
        g.compute(gf, threads)
        return g.array(out, (n_q, n_head, d))


class FlashAttnRope:
    """ggml_rope_ext on q and k, then ggml_flash_attn_ext (f16 K/V, causal mask), as llama.cpp
    builds attention; the rope runs inside the timed graph. run() computes it once."""

    def __init__(self, q, k, v, *, base=10000.0, threads=2):
        n_q, n_head, d = q.shape
        n_kv, n_head_kv, _ = k.shape
        self.threads = threads
        mask = np.zeros((n_q, n_kv), dtype=np.float16)
        q_pos = np.arange(n_kv - n_q, n_kv, dtype=np.int32)
        mask[np.arange(n_kv)[None, :] > q_pos[:, None]] = -np.inf
        mem = (q.nbytes * 3 + k.nbytes * 2 + v.nbytes + mask.nbytes + n_q * n_head * d * 4 + (256 << 20))
        self.g = g = GgmlContext(mem)
        b = g.base
        tq, tk, tv = g.tensor(q), g.tensor(k), g.tensor(v)
        tqp, tkp = g.tensor(q_pos), g.tensor(np.arange(n_kv, dtype=np.int32))
        tmask = g.tensor(mask)
        null = g.ffi.NULL
        qr = b.ggml_rope_ext(g.ctx, tq, tqp, null, d, 0, 0, base, 1.0, 0.0, 1.0, 32.0, 1.0)  # {d, H, n_q}
        kr = b.ggml_rope_ext(g.ctx, tk, tkp, null, d, 0, 0, base, 1.0, 0.0, 1.0, 32.0, 1.0)  # {d, H_kv, n_kv}
        qp = b.ggml_permute(g.ctx, qr, 0, 2, 1, 3)  # {d, n_q, H}
        kp = b.ggml_permute(g.ctx, kr, 0, 2, 1, 3)  # {d, n_kv, H_kv}
        vp = b.ggml_permute(g.ctx, tv, 0, 2, 1, 3)
        self.out = b.ggml_flash_attn_ext(g.ctx, qp, kp, vp, tmask, 1.0 / np.sqrt(d), 0.0, 0.0)  # {d, H, n_q}
        self.gf = g.graph(self.out)
        self.shape = (n_q, n_head, d)

    def run(self):
        self.g.compute(self.gf, self.threads)

    def result(self):
        return self.g.array(self.out, self.shape)

    def free(self):
        self.g.free()
