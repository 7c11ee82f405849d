"""OpenAI-compatible HTTP server on ggml_rerope's runtime (FastAPI + uvicorn + sse-starlette).

    python -m ggml_rerope.server model.gguf --n_ctx 8192 -np 2 --rope-scaling rerope

Needs the optional dependencies: pip install "ggml-rerope[server]". In code:
`create_app(ServerConfig(...))` is the ASGI app (server/app.py).
"""


def __getattr__(name):
    # Imported on first use: `python -m ggml_rerope.server --help` (and a bad flag) need no web stack.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("ServerConfig", "config_from_args"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'ggml_rerope.server' has no attribute {name!r}")


__all__ = ["create_app", "ServerConfig", "config_from_args"]
