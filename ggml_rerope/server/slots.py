"""Slots: where requests run. A slot holds one sequence's KV cache and runs one job at a time,
on its own worker thread (the scheduler gives it the job), so the event loop stays free.

This first version gives every slot its own `Llama` (weights, KV cache and tokenizer each; the
slots share nothing). The scheduler only needs the `Slot` protocol below, so a shared-weights
multi-sequence runtime can replace `LlamaSlot` without touching the scheduler or the HTTP layer.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

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


def llama_slots(n: int, make_llama: Callable[[int], Llama], scheme: SchemeKey) -> list[LlamaSlot]:
    """n slots, each with its own Llama from make_llama(index)."""
    slots: list[LlamaSlot] = []
    try:
        for i in range(n):
            slots.append(LlamaSlot(i, make_llama(i), scheme))
    except BaseException:
        for s in slots:
            s.close()
        raise
    return slots
