"""Slots: where requests run. A slot holds one sequence's KV cache and runs one job at a time,
on its own worker thread (the scheduler gives it the job), so the event loop stays free.

The server's slots are `SequenceSlot`s: each a `Llama` on one sequence of a shared
`batching.BatchedRuntime` (one copy of the weights; the evals of all slots are batched into one
step). The scheduler only needs the `Slot` protocol below.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from ..batching import BatchedRuntime
from ..llama import CompletionTimings, Llama
from .scheme_request import SchemeKey


class JobCancelled(Exception):
    """The client went away or the server is stopping: the generation ends at its next token."""


@dataclass
class Job:
    """One request for a slot. Events go to the event loop as (kind, payload):
    ("chunk", dict) ... ("end", None) for a stream, ("result", dict) otherwise, or ("error", exc),
    or ("cancelled", None)."""

    kind: str                      # "completion" | "chat"
    kwargs: dict                   # keywords of Llama.create_completion / create_chat_completion
    scheme: SchemeKey
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    timings: Optional[CompletionTimings] = None
    outcome: Optional[str] = None  # "ok" | "error" | "cancelled", set by the slot
    cache_prompt: bool = True      # False: evaluate the whole prompt, reusing nothing the slot cached

    @property
    def stream(self) -> bool:
        return bool(self.kwargs.get("stream"))

    def emit(self, kind: str, payload: Any = None) -> None:
        """From any thread: hands an event to the request's coroutine."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))

    def cancel(self) -> None:
        self.cancelled.set()


class Slot(Protocol):
    index: int
    n_ctx: int
    kv_used: int  # tokens in this slot's cache; written by its worker, read by /metrics

    def run(self, job: Job) -> None:
        """Runs `job` to its end on the calling (worker) thread, emitting its events."""

    def close(self) -> None: ...


def _cancel_check(cancelled: threading.Event) -> Callable:
    """A logits processor (called once per token, in completions and chats alike) that ends the
    generation when the job is cancelled."""

    def check(input_ids, scores):
        if cancelled.is_set():
            raise JobCancelled()
        return scores

    return check


class LlamaSlot:
    """A slot with a `Llama` of its own."""

    def __init__(self, index: int, llama: Llama, scheme: SchemeKey):
        self.index, self.llama, self.scheme = index, llama, scheme
        self.n_ctx = llama.n_ctx()
        self.kv_used = 0

    def _use_scheme(self, scheme: SchemeKey) -> None:
        if scheme == self.scheme:
            return
        name, options = scheme
        self.llama.set_rope_scaling(name, rope_options=dict(options))
        self.scheme = scheme
        # The cached prefix was computed under the other scheme (deeper layers' keys depend on it):
        # start empty, so an answer never depends on which request this slot served before.
        self.llama.reset()

    def run(self, job: Job) -> None:
        try:
            if job.cancelled.is_set():
                raise JobCancelled()
            self._use_scheme(job.scheme)
            if not job.cache_prompt:
                self.llama.reset()
            kwargs = dict(job.kwargs)
            kwargs["logits_processor"] = [_cancel_check(job.cancelled)]
            self.llama.last_timings = CompletionTimings()  # so a call that fails early reports nothing
            call = self.llama.create_chat_completion if job.kind == "chat" else self.llama.create_completion
            if job.stream:
                chunks = call(**kwargs)
                try:
                    for chunk in chunks:
                        if job.cancelled.is_set():
                            raise JobCancelled()
                        job.emit("chunk", chunk)
                finally:
                    getattr(chunks, "close", lambda: None)()
                job.timings, job.outcome = self.llama.last_timings, "ok"
                job.emit("end")
            else:
                result = call(**kwargs)
                job.timings, job.outcome = self.llama.last_timings, "ok"
                job.emit("result", result)
        except JobCancelled:
            job.timings, job.outcome = self.llama.last_timings, "cancelled"
            job.emit("cancelled")
        except Exception as e:  # reported to the client; the slot stays usable
            job.timings, job.outcome = self.llama.last_timings, "error"
            job.emit("error", e)
        finally:
            self.kv_used = self.llama.n_tokens

    def close(self) -> None:
        self.llama.close()


class SequenceSlot(LlamaSlot):
    """A slot whose Llama runs on one sequence of a shared BatchedRuntime."""

    def __init__(self, index: int, llama: Llama, scheme: SchemeKey, owner: _SharedRuntime):
        super().__init__(index, llama, scheme)
        self._owner = owner

    def run(self, job: Job) -> None:
        with self._owner.batched.sequences[self.index].busy():  # the step waits for this slot's tokens
            super().run(job)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._owner.release()


class _SharedRuntime:
    """Closes the batched runtime and its weights when the last of its slots is closed."""

    def __init__(self, batched: BatchedRuntime, n_users: int):
        self.batched, self._users, self._lock = batched, n_users, threading.Lock()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self.batched.close()
            self.batched.model.close()


def sequence_slots(batched: BatchedRuntime, make_llama: Callable[[int], Llama], scheme: SchemeKey) -> list[Slot]:
    """One slot per sequence of `batched`, slot i with make_llama(i) on sequence i. The slots own
    `batched` and its model from here on (also when this fails)."""
    n = len(batched.sequences)
    owner = _SharedRuntime(batched, n)
    slots: list[Slot] = []
    try:
        for i in range(n):
            slots.append(SequenceSlot(i, make_llama(i), scheme, owner))
    except BaseException:
        for s in slots:
            s.close()
        for _ in range(n - len(slots)):
            owner.release()
        raise
    return slots
