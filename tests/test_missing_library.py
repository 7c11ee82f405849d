"""Without libggml_rerope (or with a broken one), `import ggml_rerope` still works and every
command-line tool exits 1 with one 'error:' line naming the problem, not a traceback."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = ROOT / "README.md"


@pytest.mark.parametrize("library", ["/nonexistent/libggml_rerope.so", str(TEXT)])  # missing; not a library
@pytest.mark.parametrize("args", [
    ["-m", "ggml_rerope.chat", "-p", "hi"],
    ["-m", "ggml_rerope.perplexity", str(TEXT), "--ctx", "64"],
    ["-m", "ggml_rerope.passkey", "--ctx", "256"],
    ["-m", "ggml_rerope.bench", "attention"],
])
def test_cli_without_library_reports_one_error_line(args, library):
    env = dict(os.environ, GGML_REROPE_LIBRARY=library, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and ("libggml_rerope" in last or library in last), last


def test_import_works_and_first_use_raises_typed_error():
    code = ("import ggml_rerope, numpy as np\n"
            "q = np.zeros((2, 1, 64), np.float32)\n"
            "try:\n    ggml_rerope.rerope_attention(q, q, q, window=4)\n"
            "except ggml_rerope.LibraryNotFoundError as e:\n    print('typed:', isinstance(e, ImportError))\n")
    env = dict(os.environ, GGML_REROPE_LIBRARY="/nonexistent/libggml_rerope.so", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "typed: True", (r.stdout, r.stderr[-2000:])


def _installed_library():
    try:
        from importlib import metadata

        return any(f.name.startswith("libggml_rerope.so") for f in metadata.distribution("ggml-rerope").files or [])
    except Exception:
        return False


@pytest.mark.skipif(not _installed_library(), reason="the package is not pip-installed here")
def test_checkout_root_finds_the_installed_library():
    """The README's `.venv/bin/python -m ggml_rerope.chat`, run from the checkout's root, imports the
    checkout's copy of the package (no library beside it): it must use the installed library."""
    env = {k: v for k, v in os.environ.items() if k != "GGML_REROPE_LIBRARY"}
    code = "from ggml_rerope._binding import lib; lib.ggml_rerope_cuda_available(); print(lib.path)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "libggml_rerope" in r.stdout
