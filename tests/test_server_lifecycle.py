"""The server's life: /health 503 while the model loads, the bounded queue (503 + Retry-After past
it), a clean stop on SIGTERM with a stream open, and the exit codes of a bad start.

The loading and queue tests run the app in this process with stand-in slots (the `Slot` protocol of
ggml_rerope/server/slots.py) that wait for the test, so they are exact about timing; the others
start the real `python -m ggml_rerope.server`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from ggml_rerope.server import ServerConfig, create_app  # noqa: E402
from server_process import REPO, ServerProcess, free_port  # noqa: E402

pytestmark = pytest.mark.needs_default_model


class GatedSlot:
    """A stand-in slot: answers "ok" once `gate` opens (a real slot would run the model)."""

    def __init__(self, index: int, gate: threading.Event):
        self.index, self.n_ctx, self.kv_used, self.gate = index, 64, 0, gate

    def run(self, job):
        if not self.gate.wait(20) or job.cancelled.is_set():
            job.outcome = "cancelled"
            job.emit("cancelled")
            return
        job.outcome = "ok"
        job.emit("result", {"id": "cmpl-x", "object": "text_completion", "choices": [
            {"text": "ok", "index": 0, "logprobs": None, "finish_reason": "stop"}]})

    def close(self):
        pass


@contextlib.contextmanager
def in_process(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


def test_health_is_503_while_loading(default_model_file):
    loaded, answer = threading.Event(), threading.Event()
    answer.set()

    def make_slots(config, scheme):
        assert loaded.wait(20)
        return [GatedSlot(0, answer)]

    app = create_app(ServerConfig(model=str(default_model_file)), make_slots=make_slots)
    with in_process(app) as url:
        r = httpx.get(url + "/health")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        r = httpx.post(url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        loaded.set()
        deadline = time.monotonic() + 20
        while httpx.get(url + "/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert httpx.get(url + "/health").json()["status"] == "ok"
        r = httpx.post(url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "ok"


def test_requests_past_the_queue_get_503_with_retry_after(default_model_file):
    gate = threading.Event()
    app = create_app(ServerConfig(model=str(default_model_file), parallel=1, queue_size=1),
                     make_slots=lambda config, scheme: [GatedSlot(0, gate)])
    with in_process(app) as url:
        while httpx.get(url + "/health").status_code != 200:
            time.sleep(0.02)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(httpx.post, url + "/v1/completions", json={"prompt": "a"}, timeout=30)
            queued = pool.submit(httpx.post, url + "/v1/completions", json={"prompt": "b"}, timeout=30)

            def gauges():
                text = httpx.get(url + "/metrics").text
                return {k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in text.splitlines() if ln[:1] != "#")}

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                g = gauges()
                if g["ggml_rerope_requests_processing"] == 1 and g["ggml_rerope_requests_deferred"] == 1:
                    break
                time.sleep(0.02)
            r = httpx.post(url + "/v1/completions", json={"prompt": "c"})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "server_busy" and int(r.headers["retry-after"]) >= 1
            gate.set()
            assert running.result().status_code == 200 and queued.result().status_code == 200
        assert gauges()['ggml_rerope_requests_total{outcome="rejected"}'] == 1


def test_sigterm_with_an_open_stream_stops_cleanly(default_model_file):
    server = ServerProcess([str(default_model_file), "-c", "256", "-np", "1", "-t", "1"])
    try:
        server.wait_ready()
        body = {"prompt": "Once upon a time", "max_tokens": 200, "temperature": 0.8, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            t0 = time.monotonic()
            server.proc.terminate()
            data = [ln[6:] for ln in lines if ln.startswith("data: ")]  # the stream ends by itself
        assert data[-1] == "[DONE]"
        assert json.loads(data[-2]).get("error", {}).get("code") == "shutting_down"
        assert server.proc.wait(20) == 0
        assert time.monotonic() - t0 < 15
    finally:
        server.close()


def test_bad_starts_exit_with_an_error():
    run = lambda *args: subprocess.run([sys.executable, "-m", "ggml_rerope.server", *args], cwd=REPO,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    r = run("--rope-scaling", "bogus")
    assert r.returncode == 2 and "bogus" in r.stderr
    r = run("--rope-scaling", "linear", "--rerope-window", "64")
    assert r.returncode == 2 and "--rerope-window" in r.stderr
    r = run("/nonexistent/model.gguf", "--port", str(free_port()))
    assert r.returncode == 1 and "model file not found" in r.stderr


def test_quantized_cache_flags_serve(default_model_file):
    """-ctk / -ctv reach the batched runtime: a q8_0 / q4_0 cache answers, and /metrics counts its cells."""
    server = ServerProcess([str(default_model_file), "-c", "256", "-np", "2", "-t", "1", "-ctk", "q8_0", "-ctv",
                            "q4_0"])
    try:
        server.wait_ready()
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "The sky is", "max_tokens": 4,
                                                              "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
        assert "kv_cache_capacity_tokens 512" in httpx.get(server.url + "/metrics").text
    finally:
        server.close()
