"""llama.cpp's placement flags for the CLIs: -sm/--split-mode, -ts/--tensor-split, -mg/--main-gpu
(-ngl stays each tool's own), and the Model keywords they give."""

from __future__ import annotations

import argparse

from ._internals import MAX_DEVICES, SPLIT_MODES


def tensor_split_arg(text: str) -> list[float]:
    """llama.cpp's -ts: shares per GPU, comma or slash separated ("3,1")."""
    parts = [p for p in text.replace("/", ",").split(",") if p.strip()]
    try:
        shares = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 3,1, got {text!r}") from None
    if not shares or len(shares) > MAX_DEVICES or any(not s >= 0 for s in shares):
        raise argparse.ArgumentTypeError(f"1..{MAX_DEVICES} shares >= 0 expected, got {text!r}")
    return shares


def add_placement_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-sm", "--split-mode", choices=sorted(SPLIT_MODES), default="layer",
                   help="how offloaded layers spread over several GPUs: layer (runs of layers per GPU, default), "
                        "none (all on --main-gpu); row is llama.cpp's and not supported")
    p.add_argument("-ts", "--tensor-split", type=tensor_split_arg, default=None,
                   help="share of the offloaded layers per GPU, e.g. 3,1 (default: by free memory)")
    p.add_argument("-mg", "--main-gpu", type=int, default=0, help="the GPU of --split-mode none (default 0)")


def placement_kwargs(args: argparse.Namespace) -> dict:
    """Model's split_mode / tensor_split / main_gpu from the parsed flags."""
    return {"split_mode": args.split_mode, "tensor_split": args.tensor_split, "main_gpu": args.main_gpu}
