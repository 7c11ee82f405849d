"""The GGUF loader fuzzer (tests/fuzz/): a CI slice of byte-level and semantic mutants with no
crash and no hang, proof that the harness does catch crashes and hangs, exact replay of a case,
and the kept crash inputs (tests/fuzz/corpus/) loading cleanly.

The harness is the fuzz_gguf executable CMake builds beside the library under test
(GGML_REROPE_LIBRARY=build/X/src/libggml_rerope.so -> build/X/tests/fuzz/fuzz_gguf), or
GGML_REROPE_FUZZ_HARNESS."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
import make_seeds  # noqa: E402

JOBS = max(2, min(4, os.cpu_count() or 2))


def _harness() -> pathlib.Path | None:
    if os.environ.get("GGML_REROPE_FUZZ_HARNESS"):
        return pathlib.Path(os.environ["GGML_REROPE_FUZZ_HARNESS"])
    lib = os.environ.get("GGML_REROPE_LIBRARY")
    if not lib:
        return None
    exe = pathlib.Path(lib).resolve().parent.parent / "tests" / "fuzz" / "fuzz_gguf"
    return exe if exe.exists() else None


HARNESS = _harness()
pytestmark = pytest.mark.skipif(HARNESS is None, reason="fuzz_gguf is not built beside GGML_REROPE_LIBRARY")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> str:
    return ",".join(str(p) for p in make_seeds.write_seeds(tmp_path_factory.mktemp("seeds")))


def run(*args, timeout=300) -> tuple[int, str, dict]:
    p = subprocess.run([str(HARNESS), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    summary = {}
    m = re.search(r"^fuzz: (.*)$", p.stdout, re.M)
    if m:
        for kv in m.group(1).split():
            k, v = kv.split("=", 1)
            summary[k] = v if k == "kind" else float(v)
    return p.returncode, p.stdout + p.stderr, summary


@pytest.mark.parametrize("kind, cases", [("byte", 3000), ("semantic", 2000)])
def test_ci_slice_has_no_crash_and_no_hang(seeds, tmp_path, kind, cases):
    rc, out, s = run("--kind", kind, "--seeds", seeds, "--cases", cases, "--jobs", JOBS, "--seed", 7,
                     "--crash-dir", tmp_path, "--timeout-ms", 10000)
    assert s, out
    assert s["crashes"] == 0 and s["hangs"] == 0, out
    assert rc == 0, out
    assert s["cases"] == cases and s["ok"] + s["errors"] == cases, out
    # the mutants reach both outcomes: some still run, some are refused with a message
    assert s["ok"] > cases * 0.05 and s["errors"] > cases * 0.3, out
    # a model the loader accepted must not fail later: every lie is caught while loading
    assert s["errors_context"] == 0 and s["errors_eval"] == 0, out


def test_harness_catches_crashes(seeds, tmp_path):
    rc, out, s = run("--kind", "selftest-crash", "--cases", 4, "--jobs", 2, "--crash-dir", tmp_path)
    assert rc == 1 and s["crashes"] == 4 and s["ok"] == 0, out
    assert "signal 11" in out and "signal 6" in out, out  # SIGSEGV and abort()
    assert len(list(tmp_path.glob("*.txt"))) == 4


def test_harness_catches_hangs(seeds, tmp_path):
    rc, out, s = run("--kind", "selftest-hang", "--cases", 2, "--jobs", 2, "--timeout-ms", 200,
                     "--crash-dir", tmp_path, timeout=60)
    assert rc == 1 and s["hangs"] == 2 and s["crashes"] == 0, out
    assert "HANG" in out


@pytest.mark.parametrize("kind", ["byte", "semantic"])
def test_a_case_replays_exactly(seeds, tmp_path, kind):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    for path in (a, b):
        rc, out, _ = run("--replay", 12345, "--kind", kind, "--seeds", seeds, "--seed", 3, "--out", path)
        assert rc == 0, out
    assert a.read_bytes() == b.read_bytes()
    rc, out, s = run("--run", a)
    assert rc == 0 and s["cases"] == 1 and s["crashes"] == 0, out


def test_seed_files_run_cleanly(seeds):
    rc, out, s = run("--run", *seeds.split(","))
    assert rc == 0 and s["ok"] == len(seeds.split(",")), out


def test_kept_crash_inputs_load_cleanly(tmp_path):
    corpus = sorted((ROOT / "tests" / "fuzz" / "corpus").glob("*.gguf"))
    assert corpus, "tests/fuzz/corpus holds the inputs that once crashed"
    rc, out, s = run("--crash-dir", tmp_path, "--run", *corpus)
    assert rc == 0 and s["crashes"] == 0 and s["hangs"] == 0, out
    assert s["cases"] == len(corpus)
