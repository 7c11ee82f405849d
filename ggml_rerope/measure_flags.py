"""The flags every measuring CLI (perplexity, passkey, retrieval) shares after its own, defined once:
`add_measurement_arguments(parser)` adds them, `parse_measurement_args(parser, argv)` parses and
checks the scheme flags; evaluators.run_measurement reads the rest. This module does not load the
library, so a CLI can report a missing one as one error line.
"""

from __future__ import annotations

from .cache_flags import add_cache_type_arguments
from .placement_flags import add_placement_flags
from .scheme_flags import add_scheme_arguments, scheme_options_from_args

ENGINES = ("ggml-rerope", "llama.cpp")


def add_measurement_arguments(parser) -> None:
    """Engine, threads, batch, GPU layers and placement, cache types, --json, --no-progress and the
    position-scheme flags."""
    parser.add_argument("--engine", choices=ENGINES, default="ggml-rerope",
                        help="llama.cpp: the peer through llama-cpp-python (schemes none, linear, yarn, ntk)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all)")
    parser.add_argument("--batch", type=int, default=512, help="micro-batch size")
    parser.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                        help="layers on the GPU, llama.cpp's count (the output head is the first); "
                             "-1: all (CUDA builds)")
    add_placement_flags(parser)
    add_cache_type_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-progress", action="store_true")
    add_scheme_arguments(parser)


def parse_measurement_args(parser, argv):
    """(args, scheme name, scheme options); a flag of another scheme is the parser's usage error."""
    args = parser.parse_args(argv)
    try:
        name, options = scheme_options_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    return args, name, options
