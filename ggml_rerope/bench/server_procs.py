"""The two servers the server benchmark measures, as child processes on 127.0.0.1 and a free port:
ours (`python -m ggml_rerope.server`, ready when /health answers 200) and llama-cpp-python's
(`python -m llama_cpp.server`, ready when /v1/models answers 200: it loads the model before it
listens). Started, waited for within a time limit, and always stopped (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

# The package's parent folder: the child runs there, so `-m ggml_rerope.server` imports this very
# package (and the GGML_REROPE_LIBRARY in the environment), not some other installed copy.
PACKAGE_ROOT = pathlib.Path(__file__).resolve().parents[2]

# What llama-cpp-python's server imports beyond llama_cpp itself (its own optional extra).
PEER_MODULES = ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "pydantic_settings", "starlette_context")


def peer_missing_modules() -> list[str]:
    """Modules that keep `python -m llama_cpp.server` from starting here (found without importing)."""
    missing = []
    for name in PEER_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerSpec:
    name: str              # "ours" or "llama-cpp-python"
    argv: list[str]        # without the port, which is picked at start
    ready_path: str        # GET this until 200


def ours_spec(model: str, threads: int, n_ctx: int, parallel: int, n_gpu_layers: int) -> ServerSpec:
    argv = [sys.executable, "-m", "ggml_rerope.server", model, "--parallel", str(parallel), "--n_threads",
            str(threads), "-c", str(n_ctx), "-ngl", str(n_gpu_layers), "--host", "127.0.0.1"]
    return ServerSpec("ours", argv, "/health")


def peer_spec(model: str, threads: int, n_ctx: int, n_gpu_layers: int) -> ServerSpec:
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--n_threads", str(threads),
            "--n_ctx", str(n_ctx), "--host", "127.0.0.1", "--n_gpu_layers", str(n_gpu_layers),
            # its defaults that would void or skew the comparison: a new request cuts the running
            # stream short (interrupt_requests), prompts use every core (n_threads_batch), logits of
            # every prompt token are computed (logits_all); flash attention on, as in the model benchmark
            "--interrupt_requests", "False", "--n_threads_batch", str(threads), "--logits_all", "False",
            "--flash_attn", "True"]
    return ServerSpec("llama-cpp-python", argv, "/v1/models")


class ServerChild:
    def __init__(self, spec: ServerSpec):
        import httpx  # the server extra's client; imported here so --help works without it

        self._httpx = httpx
        self.spec = spec
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [*spec.argv, "--port", str(self.port)]
        self._log = tempfile.NamedTemporaryFile(prefix=f"bench_server_{spec.name}_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(self.argv, cwd=PACKAGE_ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log_tail(self, n_chars: int = 3000) -> str:
        self._log.flush()
        return pathlib.Path(self._log.name).read_text(errors="replace")[-n_chars:]

    def wait_ready(self, timeout_s: float) -> float:
        """Polls the ready path until 200; the seconds it took. RuntimeError when the child exits first,
        TimeoutError past `timeout_s`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self._httpx.get(self.url + self.spec.ready_path, timeout=2.0).status_code == 200:
                    return time.monotonic() - t0
            except self._httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.spec.name} server not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 20.0) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)


@contextlib.contextmanager
def running(spec: ServerSpec, ready_timeout_s: float) -> Iterator[tuple[ServerChild, float]]:
    """The started and ready server and its start-up seconds; stopped on the way out, whatever happened."""
    child = ServerChild(spec)
    try:
        yield child, child.wait_ready(ready_timeout_s)
    finally:
        child.close()
