"""The position scheme of one request: the CLI's scheme flags as JSON fields.

A request may carry `rope_scaling` and any flag of scheme_flags.add_scheme_arguments with
underscores (`rerope_window`, `rerope_leaky_k`, `logn`, `rope_scale`, `grp_attn_n`, ...). They are
turned back into command-line words and parsed by that same parser, so the types, the checks and
"this option does not apply to that scheme" are the CLI's, defined once. Fields a request leaves
out come from the server's own flags when it keeps the server's scheme.
"""

from __future__ import annotations

import argparse
import re
from typing import Optional

from ..scheme_flags import add_scheme_arguments, scheme_options_from_args
from .errors import APIError

SchemeKey = tuple[str, tuple[tuple[str, object], ...]]


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print and exit the server
        raise ValueError(message)


def _field_names(text: str) -> str:
    """'--rerope-window' -> 'rerope_window' in messages meant for API clients."""
    text = text.replace("--no-logn", "logn=false")
    return re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), text)


def _norm(name) -> str:
    return str(name).lower().replace("_", "-")


class SchemeFields:
    """Reads a request's scheme fields against the server's scheme flags."""

    def __init__(self, server_args: Optional[argparse.Namespace] = None):
        self._parser = _RaisingParser(add_help=False, exit_on_error=False)
        add_scheme_arguments(self._parser)
        self.defaults: dict[str, object] = vars(self._parser.parse_args([]))
        given = vars(server_args) if server_args is not None else {}
        self.server_fields = {k: given[k] for k in self.defaults if k in given and given[k] != self.defaults[k]}
        self.server_name = _norm(given.get("rope_scaling", self.defaults["rope_scaling"]))
        self.server_scheme = self._resolve({"rope_scaling": self.server_name, **self.server_fields})

    @property
    def names(self):
        return set(self.defaults)

    def for_request(self, extra: Optional[dict]) -> SchemeKey:
        """(scheme name, sorted options) for a request's extra fields; APIError 400 when invalid."""
        fields = {k: v for k, v in (extra or {}).items() if k in self.defaults}
        if not fields:
            return self.server_scheme
        name = fields.get("rope_scaling", self.server_name)
        if not isinstance(name, str):
            raise APIError(400, "rope_scaling: must be a scheme name (a string)", param="rope_scaling",
                           code="invalid_value")
        base = self.server_fields if _norm(name) == self.server_name else {}
        return self._resolve({**base, **fields, "rope_scaling": name})

    def _argv(self, fields: dict) -> list:
        argv = ["--rope-scaling", fields["rope_scaling"]]
        for key, value in fields.items():
            if key == "rope_scaling":
                continue
            if key == "logn":
                if not isinstance(value, bool):
                    raise APIError(400, "logn: must be true or false", param=key, code="invalid_value")
                if not value:
                    argv.append("--no-logn")
                continue
            flag = "--" + key.replace("_", "-")
            if key == "longrope_factors":  # a list only: the CLI's "or a file" must not reach the server's disk
                if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                          for x in value):
                    raise APIError(400, f"{key}: must be a list of numbers", param=key, code="invalid_value")
                argv += [flag, ",".join(repr(float(x)) for x in value)]
                continue
            if value is None:
                continue
            if key == "attn_temperature" and value == "yarn":  # the one word a numeric flag takes
                argv += [flag, value]
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise APIError(400, f"{key}: must be a number", param=key, code="invalid_value")
            argv += [flag, repr(value)]
        return argv

    def _resolve(self, fields: dict) -> SchemeKey:
        try:
            args = self._parser.parse_args(self._argv(fields))
            name, options = scheme_options_from_args(args)
        except APIError:
            raise
        except (ValueError, argparse.ArgumentError) as e:
            raise APIError(400, _field_names(str(e)), param="rope_scaling", code="invalid_value") from None
        return name, tuple(sorted(options.items()))
