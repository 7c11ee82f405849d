"""Runs `python -m ggml_rerope.server` as a child process on 127.0.0.1 and a free port, for the
server tests: started, waited for (/health 200), and always stopped (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Optional

import httpx

REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="ggml_rerope_server_", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "ggml_rerope.server", *args, "--host", "127.0.0.1", "--port", str(self.port)]
        # cwd = the checkout, so `-m` imports this package (and its GGML_REROPE_LIBRARY), not an installed copy
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log(self) -> str:
        return pathlib.Path(self._log.name).read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 90.0) -> list[int]:
        """Polls /health until 200; returns the statuses seen on the way."""
        seen: list[int] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(self.url + "/health", timeout=2.0)
                seen.append(r.status_code)
                if r.status_code == 200:
                    return seen
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.log()}")

    def stop(self, timeout_s: float = 20.0) -> Optional[int]:
        """SIGTERM, wait; SIGKILL if it hangs. Returns the exit code of the SIGTERM stop (None if killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)


@contextlib.contextmanager
def running_server(args: list[str]) -> Iterator[ServerProcess]:
    server = ServerProcess(args)
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()
