"""What the routes share: the settings, the scheme fields, the metrics, and, once the model has
loaded (in a background thread, so /health answers 503 meanwhile), the scheduler with its slots
and a tokenizer for /tokenize. `serve` runs one job and turns its events into an HTTP answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from typing import Callable, Optional

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse

from .._internals import RuntimeModel
from ..batching import BatchedRuntime
from ..default_model import default_model_path
from ..llama import CompletionTimings, Llama
from ..model import KV_TYPES, checked_model_path
from . import errors
from .config import ServerConfig
from .metrics import Metrics
from .scheduler import QueueFullError, Scheduler, ShuttingDownError
from .scheme_request import SchemeFields, SchemeKey
from .slots import Job, Slot, sequence_slots

log = logging.getLogger("ggml_rerope.server")

SlotFactory = Callable[[ServerConfig, SchemeKey], list[Slot]]


def default_slots(config: ServerConfig, scheme: SchemeKey) -> list[Slot]:
    """config.parallel slots, each one sequence of a shared BatchedRuntime: one copy of the weights,
    and one graph per step for the tokens of every slot (continuous batching)."""
    name, options = scheme
    path = checked_model_path(config.model)
    model = RuntimeModel(path, n_gpu_layers=config.n_gpu_layers, split_mode=config.split_mode,
                         main_gpu=config.main_gpu, tensor_split=config.tensor_split)
    try:
        batched = BatchedRuntime(model, n_seq=config.parallel, n_ctx_seq=config.n_ctx, n_batch=config.n_batch,
                                 n_threads=config.threads(), type_k=KV_TYPES[config.type_k],
                                 type_v=KV_TYPES[config.type_v])
    except BaseException:
        model.close()
        raise

    def make(i: int) -> Llama:
        return Llama(path, n_ctx=config.n_ctx, n_batch=config.n_batch, n_threads=config.threads(),
                     n_gpu_layers=config.n_gpu_layers, seed=config.seed, chat_format=config.chat_format,
                     logits_all=True, verbose=config.verbose and i == 0, rope_scaling=name,
                     rope_options=dict(options) or None, type_k=KV_TYPES[config.type_k],
                     type_v=KV_TYPES[config.type_v],
                     _sequence=batched.sequences[i])

    return sequence_slots(batched, make, scheme)


class _ClientGone(Exception):
    pass


class Runtime:
    def __init__(self, config: ServerConfig, make_slots: Optional[SlotFactory] = None):
        self.config = config
        self.model_path = config.model or default_model_path()
        self.model_id = config.model_alias or os.path.basename(self.model_path)
        self.schemes = SchemeFields(config.scheme_args)
        self.metrics = Metrics()
        self.scheduler: Optional[Scheduler] = None
        self.tokenizer = None  # a vocabulary of its own, for /tokenize (the slots' are busy in their threads)
        self.tokenizer_lock = threading.Lock()
        self.load_error: Optional[BaseException] = None
        self.on_load_failed: Optional[Callable[[BaseException], None]] = None
        self.created = int(time.time())
        self.n_ctx_train: Optional[int] = None
        self._make_slots = make_slots or default_slots
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stopping = False

    # -- loading and stopping ---------------------------------------------------------------

    def start_loading(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        threading.Thread(target=self._load, name="ggml-rerope-load", daemon=True).start()

    def _load(self) -> None:
        try:
            from ..tokenizer import Tokenizer

            t0 = time.perf_counter()
            slots = self._make_slots(self.config, self.schemes.server_scheme)
            tokenizer = Tokenizer(self.model_path)
            llama = getattr(slots[0], "llama", None)
            n_ctx_train = llama.n_ctx_train if llama is not None else None
            log.info("loaded %s: %d slot(s) of n_ctx %d in %.1f s", self.model_id, len(slots), slots[0].n_ctx,
                     time.perf_counter() - t0)
        except BaseException as e:  # reported by /health; the CLI exits
            log.error("cannot load the model: %s", e)
            self._loop.call_soon_threadsafe(self._load_failed, e)
            return
        self._loop.call_soon_threadsafe(self._loaded, slots, tokenizer, n_ctx_train)

    def _loaded(self, slots, tokenizer, n_ctx_train) -> None:
        if self._stopping:  # stopped while loading
            threading.Thread(target=lambda: [s.close() for s in slots], daemon=True).start()
            return
        self.tokenizer, self.n_ctx_train = tokenizer, n_ctx_train
        self.scheduler = Scheduler(slots, self.config.queue_size, self._finished)

    def _load_failed(self, e: BaseException) -> None:
        self.load_error = e
        if self.on_load_failed is not None:
            self.on_load_failed(e)

    def begin_shutdown(self) -> None:
        """On the loop: refuse new jobs, end queued ones, stop running ones at their next token."""
        self._stopping = True
        if self.scheduler is not None:
            self.scheduler.cancel_all()

    def request_shutdown(self) -> None:
        """From any thread (a signal handler, say): begin_shutdown on the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.begin_shutdown)

    async def shutdown(self) -> None:
        self.begin_shutdown()
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.close)
        if self.tokenizer is not None:
            self.tokenizer.close()
            self.tokenizer = None

    # -- state ------------------------------------------------------------------------------

    def ready(self) -> Scheduler:
        if self._stopping:
            raise errors.shutting_down()
        if self.scheduler is None:
            if self.load_error is not None:
                raise errors.APIError(500, f"the model failed to load: {self.load_error}", type="internal_server_error")
            raise errors.loading()
        return self.scheduler

    def gauges(self):
        s = self.scheduler
        return [
            ("slots", "Slots (sequences computed at once).", len(s.slots) if s else 0),
            ("requests_processing", "Requests running on a slot.", s.n_running if s else 0),
            ("requests_deferred", "Requests waiting for a free slot.", s.n_waiting if s else 0),
            ("kv_cache_tokens", "KV cache cells in use, all slots.", s.kv_used() if s else 0),
            ("kv_cache_capacity_tokens", "KV cache cells, all slots.", s.kv_capacity() if s else 0),
        ]

    def _finished(self, job: Job) -> None:
        self.metrics.count(job.outcome or "error")
        if job.timings is not None:
            self.metrics.add_timings(job.timings)

    # -- one request ------------------------------------------------------------------------

    def new_job(self, kind: str, kwargs: dict, extra: Optional[dict]) -> Job:
        """A job for a request; `extra` holds its non-OpenAI fields: the scheme ones and
        llama.cpp server's `cache_prompt` (false: no prefix reuse, so the answer does not depend on
        what the slot served before, not even by float rounding)."""
        extra = extra or {}
        cache_prompt = extra.get("cache_prompt", True)
        if not isinstance(cache_prompt, bool):
            raise errors.APIError(400, "cache_prompt: must be true or false", param="cache_prompt",
                                  code="invalid_value")
        return Job(kind=kind, kwargs=kwargs, scheme=self.schemes.for_request(extra), loop=asyncio.get_running_loop(),
                   cache_prompt=cache_prompt)

    async def serve(self, job: Job, request: Request, include_usage: bool = False) -> Response:
        """Runs `job` on a slot; the JSON result, an SSE stream, or an OpenAI-shaped error."""
        scheduler = self.ready()
        chat = job.kind == "chat"
        try:
            scheduler.submit(job)
        except QueueFullError:
            self.metrics.count("rejected")
            raise errors.queue_full(scheduler.retry_after_s()) from None
        except ShuttingDownError:
            raise errors.shutting_down() from None
        try:
            kind, payload = await self._next_event(job, request)
        except _ClientGone:
            if scheduler.withdraw(job):  # never reached a slot: no worker reports it
                self.metrics.count("cancelled")
            return Response(status_code=499)
        except BaseException:
            scheduler.withdraw(job)
            raise
        if kind == "error":
            raise errors.from_exception(payload, job.kwargs.get("max_tokens"), chat)
        if kind == "cancelled":
            raise errors.shutting_down()
        if kind == "result":
            return JSONResponse(payload)
        # When uvicorn stops, sse-starlette sets `stopping` and waits up to the grace period for the
        # stream to end by itself: the job is cancelled, so it ends with an error event and [DONE]
        # instead of a connection cut mid-chunk.
        stopping = anyio.Event()
        return EventSourceResponse(self._events(job, payload, include_usage, stopping), sep="\n",
                                   shutdown_event=stopping, shutdown_grace_period=5.0)

    @staticmethod
    async def _next_event(job: Job, request: Request):
        """The job's next event; _ClientGone when the client disconnects first."""
        get = asyncio.ensure_future(job.events.get())
        try:
            while True:
                done, _ = await asyncio.wait({get}, timeout=0.2)
                if done:
                    return get.result()
                if await request.is_disconnected():
                    raise _ClientGone()
        finally:
            if not get.done():
                get.cancel()

    async def _events(self, job: Job, first_chunk: dict, include_usage: bool, stopping: anyio.Event):
        """SSE events of a stream: its chunks, an optional usage chunk, then [DONE]."""

        async def cancel_when_stopping():
            await stopping.wait()
            job.cancel()

        watcher = asyncio.ensure_future(cancel_when_stopping())
        try:
            yield {"data": json.dumps(first_chunk)}
            while True:
                kind, payload = await job.events.get()
                if kind == "chunk":
                    yield {"data": json.dumps(payload)}
                    continue
                if kind == "end" and include_usage:
                    yield {"data": json.dumps(_usage_chunk(first_chunk, job.timings))}
                elif kind == "error":  # after the 200 header: the error travels as an event
                    yield {"data": json.dumps(errors.from_exception(payload, job.kwargs.get("max_tokens"),
                                                                    job.kind == "chat").body())}
                elif kind == "cancelled":  # only the server stopping gets here with a client listening
                    yield {"data": json.dumps(errors.shutting_down().body())}
                break
            yield {"data": "[DONE]"}
        finally:
            watcher.cancel()
            job.cancel()  # a client that left stops the generation at its next token


def _usage_chunk(first_chunk: dict, timings: Optional[CompletionTimings]) -> dict:
    t = timings or CompletionTimings()
    return {
        "id": first_chunk["id"], "object": first_chunk["object"], "created": first_chunk["created"],
        "model": first_chunk["model"], "choices": [],
        "usage": {"prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
                  "total_tokens": t.prompt_tokens + t.completion_tokens},
    }
