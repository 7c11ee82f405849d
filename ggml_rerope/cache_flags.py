"""The KV cache type flags every CLI shares, with llama.cpp's names: -ctk/--cache-type-k,
-ctv/--cache-type-v, and --kv-type as a shorthand for both."""

from __future__ import annotations

import argparse

from .kv_quant import TYPE_IDS

CACHE_TYPES = tuple(TYPE_IDS)  # f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl


def add_cache_type_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-ctk", "--cache-type-k", dest="cache_type_k", choices=CACHE_TYPES,
                   help="KV cache type of the keys (default f16; q8_0 halves the cache at ~no loss)")
    p.add_argument("-ctv", "--cache-type-v", dest="cache_type_v", choices=CACHE_TYPES,
                   help="KV cache type of the values (default f16)")
    p.add_argument("--kv-type", "--kv_type", dest="kv_type", choices=CACHE_TYPES,
                   help="K and V cache type at once (-ctk/-ctv override it)")


def cache_types(args: argparse.Namespace) -> tuple[str, str]:
    """(type_k, type_v) from the parsed flags."""
    both = args.kv_type or "f16"
    return args.cache_type_k or both, args.cache_type_v or both
