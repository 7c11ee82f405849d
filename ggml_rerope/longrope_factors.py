"""The LongRoPE factors file: the one format `--longrope-factors FILE` reads and the search writes.

    {"long_factor": [1.0, 1.0, 1.3, ...],      # n_rot/2 DIVISORS of theta, past the original context
     "short_factor": [1.0, 1.0, ...],          # optional: the set used up to the original context
     ...}                                      # anything else (how it was made) is kept as metadata

The two keys are those of a transformers `rope_scaling` block of type "longrope" (Phi-3's
config.json), so such a block can be saved as a file and read as it is. On the command line the flag
also takes an inline comma list, which is the long set alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Optional

FORMAT_HINT = '{"long_factor": [...], "short_factor": [...]} (JSON, n_rot/2 divisors each)'


@dataclasses.dataclass(frozen=True)
class LongRopeFactors:
    """Both factor sets of a LongRoPE scheme (divisors of theta) and what the file says about them."""

    long: tuple
    short: Optional[tuple] = None
    meta: Mapping = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "long", _numbers(self.long, "long_factor"))
        if self.short is not None:
            object.__setattr__(self, "short", _numbers(self.short, "short_factor"))
            if len(self.short) != len(self.long):
                raise ValueError(f"short_factor has {len(self.short)} values, long_factor {len(self.long)}")

    def scheme_options(self) -> dict:
        """Keywords of schemes.longrope: factors (the long set) and short_factors when present."""
        options = {"factors": list(self.long)}
        if self.short is not None:
            options["short_factors"] = list(self.short)
        return options

    def to_json(self) -> dict:
        out = {"long_factor": list(self.long)}
        if self.short is not None:
            out["short_factor"] = list(self.short)
        out.update({k: v for k, v in self.meta.items() if k not in ("long_factor", "short_factor")})
        return out


def _numbers(values, what: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "tolist"):
        raise ValueError(f"{what} must be a list of numbers")
    if hasattr(values, "tolist"):
        values = values.tolist()
    out = []
    for x in values:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
            raise ValueError(f"{what} must hold finite numbers > 0, got {x!r}")
        out.append(float(x))
    if not out:
        raise ValueError(f"{what} is empty")
    return tuple(out)


def parse_factors(text: str, source: str = "factors file") -> LongRopeFactors:
    """The factors in a file's text; ValueError naming the source and the expected format."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source} is not JSON ({e.msg}, line {e.lineno}); expected {FORMAT_HINT}") from None
    if not isinstance(obj, dict) or "long_factor" not in obj:
        raise ValueError(f"{source} has no \"long_factor\"; expected {FORMAT_HINT}")
    meta = {k: v for k, v in obj.items() if k not in ("long_factor", "short_factor")}
    try:
        return LongRopeFactors(obj["long_factor"], obj.get("short_factor"), meta)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def read_factors_file(path) -> LongRopeFactors:
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the factors file {p}: {getattr(e, 'strerror', None) or e}") from None
    return parse_factors(text, f"factors file {p}")


def write_factors_file(path, factors: LongRopeFactors) -> None:
    """Writes atomically (a temporary file renamed over the target), so a reader never sees half a file."""
    p = pathlib.Path(path)
    tmp = p.with_name(p.name + ".tmp")
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in factors.to_json().items())  # a key a line
    tmp.write_text("{\n" + body + "\n}\n", encoding="utf-8")
    os.replace(tmp, p)
