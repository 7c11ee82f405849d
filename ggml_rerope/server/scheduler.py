"""Hands jobs to free slots, queues the rest (bounded), and runs each slot on its own thread.

All scheduling state lives on the event loop thread: submit / withdraw are called there, and a
worker reports a finished job back through loop.call_soon_threadsafe, after the job's last event.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from typing import Callable, Optional

from .slots import Job, Slot

log = logging.getLogger("ggml_rerope.server")


class QueueFullError(Exception):
    """Every slot is busy and the queue holds queue_size jobs already."""


class ShuttingDownError(Exception):
    """The server stops: no new jobs."""


class _Worker:
    """The thread of one slot: runs the jobs given to it, one at a time."""

    def __init__(self, slot: Slot, on_done: Callable[[_Worker, Job, float], None]):
        self.slot = slot
        self._jobs: queue.Queue[Optional[Job]] = queue.Queue()
        self._on_done = on_done
        self.thread = threading.Thread(target=self._loop, name=f"ggml-rerope-slot-{slot.index}", daemon=True)
        self.thread.start()

    def give(self, job: Job) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            t0 = time.perf_counter()
            try:
                self.slot.run(job)
            finally:
                job.loop.call_soon_threadsafe(self._on_done, self, job, time.perf_counter() - t0)


class Scheduler:
    def __init__(self, slots: list[Slot], queue_size: int, on_finished: Callable[[Job], None]):
        self.slots = list(slots)
        self.queue_size = int(queue_size)
        self._on_finished = on_finished
        self._workers = [_Worker(s, self._done) for s in self.slots]
        self._free: collections.deque[_Worker] = collections.deque(self._workers)
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: dict[_Worker, Job] = {}
        self._closing = False
        self._avg_job_s = 1.0  # moving average, for Retry-After

    # -- state read by /health and /metrics -------------------------------------------------

    @property
    def n_running(self) -> int:
        return len(self._running)

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    @property
    def n_idle(self) -> int:
        return len(self._free)

    def kv_used(self) -> int:
        return sum(int(s.kv_used) for s in self.slots)

    def kv_capacity(self) -> int:
        return sum(int(s.n_ctx) for s in self.slots)

    def retry_after_s(self) -> int:
        """A guess at when a slot frees up: the average job length, whole seconds, >= 1."""
        return max(1, round(self._avg_job_s * (1 + len(self._waiting)) / max(1, len(self.slots))))

    # -- jobs -------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Starts `job` on a free slot or queues it; QueueFullError / ShuttingDownError otherwise."""
        if self._closing:
            raise ShuttingDownError()
        if self._free:
            self._start(self._free.popleft(), job)
        elif len(self._waiting) < self.queue_size:
            self._waiting.append(job)
        else:
            raise QueueFullError()

    def withdraw(self, job: Job) -> bool:
        """The job's client is gone: a queued job leaves the queue (True), a running one stops at
        its next token."""
        job.cancel()
        try:
            self._waiting.remove(job)
        except ValueError:
            return False
        return True

    def _start(self, worker: _Worker, job: Job) -> None:
        self._running[worker] = job
        worker.give(job)

    def _done(self, worker: _Worker, job: Job, seconds: float) -> None:
        self._running.pop(worker, None)
        self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * seconds
        try:
            self._on_finished(job)
        except Exception:  # metrics must never take a slot down
            log.exception("on_finished failed")
        while self._waiting and not self._closing:
            nxt = self._waiting.popleft()
            if not nxt.cancelled.is_set():
                self._start(worker, nxt)
                return
        self._free.append(worker)

    def cancel_all(self) -> None:
        """No new jobs; queued jobs end now, running ones at their next token."""
        self._closing = True
        while self._waiting:
            job = self._waiting.popleft()
            job.cancel()
            job.emit("cancelled")
        for job in self._running.values():
            job.cancel()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stops the workers and frees the slots (call from a thread other than the loop's
        when jobs may still run: it waits for them)."""
        for w in self._workers:
            w.stop()
        deadline = time.monotonic() + timeout_s
        for w in self._workers:
            w.thread.join(max(0.0, deadline - time.monotonic()))
        for w in self._workers:
            if not w.thread.is_alive():
                w.slot.close()
            else:
                log.warning("slot %d did not stop in %.0f s; its memory is left to the process exit",
                            w.slot.index, timeout_s)


def loop_call(loop: asyncio.AbstractEventLoop, fn: Callable, *args) -> None:
    """Runs fn(*args) on `loop` from any thread (now, when called on the loop itself)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        fn(*args)
    else:
        loop.call_soon_threadsafe(fn, *args)
