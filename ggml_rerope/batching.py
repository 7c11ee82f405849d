"""Continuous batching: one multi-sequence context shared by several threads.

Each thread (a server slot) drives its own sequence through a `SequenceContext`, which has the
surface of `RuntimeContext` that `Model` uses, so `Model` and `Llama` run on it unchanged. A
sequence's eval does not run by itself: it becomes a request, and one step thread gathers the
requests of every busy sequence into a single `ggml_rerope_decode` call (one graph per n_batch
tokens, so the weights are read once for all of them). A long prompt is cut into chunks of at most
n_batch tokens per step, so the decode steps of the other sequences go along with it instead of
waiting behind it (chunked prefill).

Between two evals a sequence samples its next token; the step thread waits for the busy sequences
to come back (at most `gather_s`) so their tokens share a step. `SequenceContext.busy()` marks a
sequence as one to wait for.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ._internals import KV_F16, RuntimeContext, RuntimeModel, check_logits_out
from .errors import ContextFullError, UnsupportedError
from .schemes import Scheme


@dataclass
class _Request:
    seq: int
    tokens: np.ndarray          # int32
    out: Optional[np.ndarray]   # the caller's logits buffer: n_vocab values, or one row per token
    all_logits: bool
    sent: int = 0               # tokens already evaluated (earlier chunks)
    error: Optional[BaseException] = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def left(self) -> int:
        return self.tokens.size - self.sent


class BatchedRuntime:
    """n_seq sequences of n_ctx_seq tokens each on one model, evaluated together."""

    def __init__(self, model: RuntimeModel, *, n_seq: int, n_ctx_seq: int, n_batch: int = 512,
                 n_threads: Optional[int] = None, type_k: int = KV_F16, type_v: int = KV_F16,
                 gather_s: float = 0.005):
        self.model = model
        self.ctx = RuntimeContext(model, n_ctx=n_seq * n_ctx_seq, n_batch=n_batch, n_threads=n_threads,
                                  type_k=type_k, type_v=type_v, n_seq_max=n_seq)
        self.n_batch = min(int(n_batch), self.ctx.n_ctx)
        self.gather_s = float(gather_s)
        self._lock = threading.Lock()         # the C context: one call at a time
        self._cond = threading.Condition()    # the requests and the busy set
        self._pending: dict[int, _Request] = {}
        self._busy: set[int] = set()
        self._closing = False
        self.steps = 0                        # decode calls so far (tests, metrics)
        self.sequences = [SequenceContext(self, i) for i in range(n_seq)]
        self._thread = threading.Thread(target=self._run, name="ggml-rerope-batch", daemon=True)
        self._thread.start()

    # -- the step thread ----------------------------------------------------------------------

    def _gathered(self) -> bool:
        return all(s in self._pending for s in self._busy)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                deadline = time.monotonic() + self.gather_s
                while not self._gathered() and not self._closing and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                step = self._take()
            self._step(step)

    def _take(self) -> list[tuple[_Request, int]]:
        """(request, tokens this step) pairs within n_batch tokens: single tokens (decode steps)
        first, then prompt chunks in the order the sequences asked."""
        budget, step = self.n_batch, []
        for r in sorted(self._pending.values(), key=lambda r: r.left > 1):
            if budget == 0:
                break
            n = min(r.left, budget)
            step.append((r, n))
            budget -= n
        return step

    def _step(self, step: list[tuple[_Request, int]]) -> None:
        try:
            self._compute(step)
        except BaseException as e:  # every request of the step fails (the C call rolls back all of them);
            with self._cond:        # the thread goes on, so no caller waits forever
                for r, _ in step:
                    if not r.done.is_set():
                        r.error = e
                        self._finish(r)

    def _compute(self, step: list[tuple[_Request, int]]) -> None:
        tokens = np.concatenate([r.tokens[r.sent:r.sent + n] for r, n in step])
        seqs = np.concatenate([np.full(n, r.seq, dtype=np.int32) for r, n in step])
        flags = [self._flags(r, n) for r, n in step]
        with self._lock:
            logits = self.ctx.decode(tokens, seqs, np.concatenate(flags))
        self.steps += 1
        row = 0
        with self._cond:
            for (r, n), f in zip(step, flags):
                k = int(np.count_nonzero(f))
                if k:
                    dst = r.out.reshape(-1, logits.shape[1])
                    first = r.sent if r.all_logits else 0
                    dst[first:first + k] = logits[row:row + k]
                row += k
                r.sent += n
                if r.left == 0:
                    self._finish(r)

    @staticmethod
    def _flags(r: _Request, n: int) -> np.ndarray:
        flags = np.zeros(n, dtype=np.int8)
        if r.out is not None:
            if r.all_logits:
                flags[:] = 1
            elif r.sent + n == r.tokens.size:
                flags[-1] = 1
        return flags

    def _finish(self, r: _Request) -> None:
        self._pending.pop(r.seq, None)
        r.done.set()

    # -- what the sequences call --------------------------------------------------------------

    def submit(self, r: _Request) -> None:
        with self._cond:
            if self._closing:
                raise UnsupportedError("the batched runtime is closed")
            # Alone (nothing pending, no other sequence busy): run it on this thread, whole, which
            # saves the two thread hand-offs per token a step costs. Whoever comes meanwhile queues
            # for the step thread, which waits for the context lock.
            solo = not self._pending and self._busy <= {r.seq}
            if not solo:
                self._pending[r.seq] = r
                self._cond.notify_all()
        if solo:
            self._step([(r, r.tokens.size)])
        r.done.wait()
        if r.error is not None:
            raise r.error

    def set_busy(self, seq: int, busy: bool) -> None:
        with self._cond:
            (self._busy.add if busy else self._busy.discard)(seq)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            for r in list(self._pending.values()):
                r.error = UnsupportedError("the batched runtime was closed during the evaluation")
                self._finish(r)
            self._cond.notify_all()
        self._thread.join()
        with self._lock:
            self.ctx.close()

    def __enter__(self) -> BatchedRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SequenceContext:
    """One sequence of a BatchedRuntime, with the RuntimeContext surface Model uses."""

    def __init__(self, runtime: BatchedRuntime, seq: int):
        self._rt, self.seq = runtime, seq
        self.model = runtime.model

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """While a job runs here: the step thread waits for this sequence's next eval."""
        self._rt.set_busy(self.seq, True)
        try:
            yield
        finally:
            self._rt.set_busy(self.seq, False)

    @property
    def closed(self) -> bool:
        return self._rt.ctx.closed

    def close(self) -> None:
        """The runtime owns the context; a sequence is only let go of."""

    @property
    def n_ctx(self) -> int:
        return self._rt.ctx.n_ctx_seq

    @property
    def n_past(self) -> int:
        with self._rt._lock:
            return self._rt.ctx.seq_n_past(self.seq)

    @property
    def kv_bytes_per_token(self) -> int:
        return self._rt.ctx.kv_bytes_per_token

    def set_scheme(self, scheme: Scheme, length: int = 1) -> None:
        with self._rt._lock:
            self._rt.ctx.seq_set_scheme(self.seq, scheme, length)

    def set_scheme_fields(self, **fields) -> None:
        with self._rt._lock:
            self._rt.ctx.seq_set_scheme_fields(self.seq, **fields)

    def eval(self, tokens: np.ndarray, out: Optional[np.ndarray] = None, all_logits: bool = False) -> None:
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        if tokens.size == 0:
            return
        if out is not None:
            check_logits_out(out, tokens.size, all_logits, self.model.n_vocab)
        # checked here, not only by the C call: an overflow found there fails the whole step, with the
        # other sequences' tokens in it
        n_past, n_ctx = self.n_past, self.n_ctx
        if n_past + tokens.size > n_ctx:
            raise ContextFullError(f"context full: {n_past} tokens in the cache + {tokens.size} new > n_ctx = {n_ctx}")
        self._rt.submit(_Request(self.seq, tokens, out, bool(all_logits)))

    def truncate(self, n_keep: int) -> None:
        with self._rt._lock:
            self._rt.ctx.seq_truncate(self.seq, n_keep)

    def kv_remove(self, p0: int, p1: int) -> None:
        with self._rt._lock:
            self._rt.ctx.seq_kv_remove(self.seq, p0, p1)

    def _no_state(self, *args):
        raise UnsupportedError("saved state is per context: a sequence of a batched runtime has none")

    state_size = state_get = state_set = _no_state
