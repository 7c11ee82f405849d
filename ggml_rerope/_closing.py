"""Deterministic release of what an object owns: close() by hand, at the end of a `with`, or when the
object is collected."""

from __future__ import annotations


class Closing:
    """Mixin: subclasses define close(), which must be safe to call more than once and on an object
    whose __init__ stopped half way (look attributes up with getattr)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass
