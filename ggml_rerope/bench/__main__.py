"""python -m ggml_rerope.bench attention|model|server|kv-decode|state-reopen [options]: dispatches to the
operator benchmark (attention.py), the model benchmark (model.py), the server benchmark (server.py), the
long-context decode per cache type (kv_decode.py) or the saved document's reopen (state_reopen.py); each is
imported only when asked for."""

from __future__ import annotations

import sys

USAGE = ("usage: python -m ggml_rerope.bench {attention,model,server,kv-decode,state-reopen} [options]"
         "  (--help after the subcommand for its options)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "attention":
        from . import attention

        attention.main(rest)
        return 0
    if cmd == "model":
        from . import model  # written separately; imported lazily

        result = model.main(rest)
        return result if isinstance(result, int) else 0
    if cmd == "server":
        from . import server

        return server.main(rest)
    if cmd == "kv-decode":
        from . import kv_decode

        return kv_decode.main(rest)
    if cmd == "state-reopen":
        from . import state_reopen

        return state_reopen.main(rest)
    print(f"unknown benchmark {cmd!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    from ..errors import LibraryNotFoundError

    try:
        sys.exit(main())
    except LibraryNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
