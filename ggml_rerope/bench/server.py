"""Server benchmark: `python -m ggml_rerope.bench server [--model M] [--clients 1,2,4,8] ...`.

Starts our server (`python -m ggml_rerope.server M --parallel P --n_threads T -c C`), then, once it
has stopped, llama-cpp-python's (`python -m llama_cpp.server --model M --n_threads T --n_ctx C`):
never both at once, as a benchmark that shares its cores with another is void. On each, after an
untimed warm-up round, for every client count N: N concurrent streaming clients (server_load.py),
and the aggregate generated tok/s, time to first token (median, p90), median inter-token gap and
requests completed. Prints a table and the ratios the targets are set on; --json FILE writes it all.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import threading
from typing import Optional

from ..host import usable_cores
from .machine import cpu_name
from .server_load import run_round, summarize
from .server_procs import ServerSpec, ours_spec, peer_missing_modules, peer_spec, running

OURS, PEER = "ours", "llama-cpp-python"

# (name, numerator (server, clients), denominator, target, only with the model on a GPU)
TARGETS = (
    ("ours 4 / ours 1", (OURS, 4), (OURS, 1), 2.5, False),
    ("ours 4 / peer 4", (OURS, 4), (PEER, 4), 2.0, False),
    ("ours 1 / peer 1", (OURS, 1), (PEER, 1), 1.0, False),
    ("ours 8 / ours 1", (OURS, 8), (OURS, 1), 4.0, True),
)


def _client_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of client counts, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"client counts must be >= 1, got {text!r}")
    return sorted(set(counts))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ggml_rerope.bench server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", "-m", help="GGUF file (default: the bundled SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--clients", type=_client_counts, default=[1, 2, 4, 8],
                   help="concurrent client counts, comma-separated (default 1,2,4,8)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (default 64)")
    p.add_argument("--requests-per-client", type=int, default=2,
                   help="requests each client sends, one after the other (default 2)")
    p.add_argument("--threads", "-t", type=int, default=None, help="--n_threads of both servers (default: all cores)")
    p.add_argument("--n-ctx", "-c", type=int, default=2048, help="context size (ours: per slot; default 2048)")
    p.add_argument("--parallel", "-np", type=int, default=None,
                   help="our server's --parallel (default: the largest client count)")
    p.add_argument("-ngl", "--n-gpu-layers", dest="n_gpu_layers", type=int, default=0,
                   help="layers on the GPU for both servers (-1 = all; default 0)")
    p.add_argument("--endpoint", choices=("chat", "completion"), default="chat",
                   help="/v1/chat/completions (default) or /v1/completions")
    p.add_argument("--peer", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure llama-cpp-python's server (default: when it can be imported)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds a server may take to start")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds one request may take")
    return p


def check_args(args) -> None:
    for name in ("max_tokens", "requests_per_client", "n_ctx"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be >= 1")
    if args.parallel is not None and args.parallel < 1:
        raise ValueError("--parallel must be >= 1")
    if args.ready_timeout <= 0 or args.request_timeout <= 0:
        raise ValueError("timeouts must be > 0")


def measure_server(spec: ServerSpec, args) -> dict:
    """One server: started, warmed up (one round at the largest client count, not timed), every client
    count measured, stopped."""
    with running(spec, args.ready_timeout) as (child, startup_s):
        warm, _ = run_round(child.url, args.endpoint, max(args.clients), 1, min(4, args.max_tokens),
                            args.request_timeout, tag="(warm-up) ")
        failed = [r.error for r in warm if not r.ok]
        if failed:
            raise RuntimeError(f"{spec.name} server: warm-up request failed: {failed[0]}\n{child.log_tail()}")
        runs = []
        first = 0
        for n in args.clients:
            results, wall = run_round(child.url, args.endpoint, n, args.requests_per_client, args.max_tokens,
                                      args.request_timeout, first_prompt=first)
            first += len(results)  # every prompt of the benchmark distinct
            runs.append({"clients": n, **summarize(results, wall)})
        return {"command": child.argv[:-2], "startup_s": startup_s, "runs": runs}


def ratios(servers: dict, on_gpu: bool) -> dict:
    def tok_s(key):
        server, clients = key
        for run in servers.get(server, {}).get("runs", []):
            if run["clients"] == clients and run["tok_s"] > 0:
                return run["tok_s"]
        return None

    out = {}
    for name, num, den, target, gpu_only in TARGETS:
        if gpu_only and not on_gpu:
            continue
        a, b = tok_s(num), tok_s(den)
        if a is None or b is None:
            continue
        ratio = a / b
        out[name] = {"ratio": ratio, "target": target, "met": ratio >= target}
    return out


def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def format_report(result: dict) -> str:
    lines = [f"model {os.path.basename(result['model'])}, {result['threads']} threads, n_ctx {result['n_ctx']}, "
             f"parallel {result['parallel']}, {result['endpoint']}, max_tokens {result['max_tokens']}, "
             f"{result['requests_per_client']} request(s) per client, ngl {result['n_gpu_layers']}",
             f"{'server':<18}{'clients':>8}{'done':>9}{'tokens':>8}{'tok/s':>9}{'TTFT med ms':>13}"
             f"{'TTFT p90 ms':>13}{'ITL med ms':>12}"]
    for name, server in result["servers"].items():
        for run in server["runs"]:
            done = f"{run['requests_completed']}/{run['requests']}"
            lines.append(f"{name:<18}{run['clients']:>8}{done:>9}{run['generated_tokens']:>8}{run['tok_s']:>9.1f}"
                         f"{_ms(run['ttft_median_s']):>13}{_ms(run['ttft_p90_s']):>13}{_ms(run['itl_median_s']):>12}")
            for err in run["errors"]:
                lines.append(f"{'':<18}error: {err}")
    if result.get("peer_skipped"):
        lines.append(f"peer not measured: {result['peer_skipped']}")
    for name, r in result["ratios"].items():
        verdict = "met" if r["met"] else "MISSED"
        lines.append(f"{name:<18}{r['ratio']:>8.2f}x  target >= {r['target']}  {verdict}")
    return "\n".join(lines)


def run(args) -> dict:
    from ..default_model import default_model_path

    check_args(args)
    model = args.model or default_model_path()
    if not os.path.isfile(model):
        raise FileNotFoundError(f"model file not found: {model}")
    cores = usable_cores()
    threads = args.threads or cores
    parallel = args.parallel or max(args.clients)
    missing = peer_missing_modules()
    if args.peer and missing:
        raise RuntimeError(f"llama-cpp-python's server cannot start here: missing {', '.join(missing)} "
                           '(pip install "llama-cpp-python[server]", or --no-peer)')
    with_peer = not missing if args.peer is None else args.peer
    result = {
        "benchmark": "server",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": cpu_name(), "cores": cores, "model": model, "threads": threads, "n_ctx": args.n_ctx,
        "parallel": parallel, "n_gpu_layers": args.n_gpu_layers, "endpoint": args.endpoint,
        "max_tokens": args.max_tokens, "requests_per_client": args.requests_per_client,
        "temperature": 0.0, "token_count": "streamed chunks with text (both servers)", "servers": {},
    }
    if not with_peer:
        result["peer_skipped"] = "--no-peer" if args.peer is False else f"missing {', '.join(missing)}"
    # one server alive at a time: each is stopped before the next starts
    result["servers"][OURS] = measure_server(ours_spec(model, threads, args.n_ctx, parallel, args.n_gpu_layers), args)
    if with_peer:
        result["servers"][PEER] = measure_server(peer_spec(model, threads, args.n_ctx, args.n_gpu_layers), args)
    result["ratios"] = ratios(result["servers"], on_gpu=args.n_gpu_layers != 0)
    return result


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through `running`, which stops the server child


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        result = run(args)
    except (OSError, ValueError, RuntimeError, ImportError) as e:  # TimeoutError is an OSError
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(format_report(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
