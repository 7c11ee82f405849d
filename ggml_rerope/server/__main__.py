"""`python -m ggml_rerope.server [model.gguf] [flags]`: see `--help` and config.py.

uvicorn serves the app; SIGINT / SIGTERM stop it cleanly: new requests get 503, queued and
running generations end at their next token (streams close), the slots are freed, exit code 0.
A model that fails to load stops the server with exit code 1.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    from .config import config_from_args

    config = config_from_args(argv)  # flag errors first, before the slower imports
    try:
        import uvicorn
    except ImportError:
        print('the server needs its optional dependencies: pip install "ggml-rerope[server]"', file=sys.stderr)
        return 2
    from .app import create_app

    logging.basicConfig(level=logging.DEBUG if config.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    runtime = app.state.runtime

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # Before uvicorn waits for open connections: end the generations that keep them open.
            runtime.request_shutdown()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info",
                                   timeout_graceful_shutdown=10, access_log=config.verbose))
    failed: list[BaseException] = []

    def on_load_failed(e: BaseException) -> None:
        failed.append(e)
        server.should_exit = True

    runtime.on_load_failed = on_load_failed

    def stopped_by_signal(signum, frame):
        # uvicorn re-raises the signal it handled once it has stopped (the handlers are ours again):
        # the server shut down in order, so end as a normal exit rather than die by the signal.
        raise SystemExit()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stopped_by_signal)
    try:
        server.run()
    except SystemExit:
        pass
    if failed:
        print(f"ggml_rerope.server: the model failed to load: {failed[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
