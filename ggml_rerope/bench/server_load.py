"""Load for the server benchmark: N concurrent clients (threads, httpx streaming), each sending R
streaming requests one after the other, greedy (temperature 0), a fixed max_tokens, every prompt
distinct; and the numbers of one such round.

Generated tokens are counted the same way for both servers: one per streamed chunk that carries
text. llama-cpp-python's server sends no usage chunk in a stream (its request model has no
stream_options), so the usage count exists only for ours; it is kept next to the chunk count as a
check (the two differ only where a server held a piece back: an incomplete UTF-8 character or a
possible stop-string prefix, sent later merged into one chunk).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

SUBJECTS = ("a lighthouse keeper", "a lost robot", "the first city on Mars", "a dragon who bakes bread",
            "a river that flows uphill", "an old violin", "a chess tournament", "a winter in Siberia",
            "a detective cat", "the last library", "a voyage on a paper boat", "a garden on the moon",
            "a clockmaker's apprentice", "a storm at sea", "a forgotten language", "a train that never stops")


def prompt_for(index: int, tag: str = "") -> str:
    """The index-th distinct prompt; `tag` keeps warm-up prompts apart from measured ones."""
    subject = SUBJECTS[index % len(SUBJECTS)]
    return f"{tag}Tell story number {index + 1}, a long one, about {subject}. Start right away."


def request_body(endpoint: str, prompt: str, max_tokens: int) -> tuple[str, dict]:
    body = {"max_tokens": max_tokens, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    if endpoint == "chat":
        return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}
    return "/v1/completions", {**body, "prompt": prompt}


@dataclass
class RequestResult:
    ok: bool = False
    error: Optional[str] = None
    start: float = 0.0
    end: float = 0.0
    chunk_times: list[float] = field(default_factory=list)   # arrival of each chunk with text
    usage_tokens: Optional[int] = None                        # the stream's usage chunk, when sent
    finish_reason: Optional[str] = None


def _chunk_text(chunk: dict, endpoint: str) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    if endpoint == "chat":
        return (c.get("delta") or {}).get("content") or ""
    return c.get("text") or ""


def stream_one(client, base_url: str, endpoint: str, prompt: str, max_tokens: int, timeout_s: float) -> RequestResult:
    """One streaming request, timed chunk by chunk; never raises (the error goes into the result)."""
    import httpx

    path, body = request_body(endpoint, prompt, max_tokens)
    res = RequestResult(start=time.perf_counter())
    deadline = res.start + timeout_s
    try:
        with client.stream("POST", base_url + path, json=body) as r:
            if r.status_code != 200:
                r.read()
                res.error = f"HTTP {r.status_code}: {r.text[:200]}"
                return res
            for line in r.iter_lines():
                now = time.perf_counter()
                if now > deadline:
                    res.error = f"request over {timeout_s:.0f} s"
                    return res
                if not line.startswith("data:"):
                    continue  # blank separators, SSE comments and pings
                data = line[5:].strip()
                if data == "[DONE]":
                    res.ok = res.error is None
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    res.error = str(chunk["error"])[:200]
                    continue
                if chunk.get("usage"):
                    res.usage_tokens = int(chunk["usage"]["completion_tokens"])
                if _chunk_text(chunk, endpoint):
                    res.chunk_times.append(now)
                for c in chunk.get("choices") or []:
                    res.finish_reason = c.get("finish_reason") or res.finish_reason
            else:
                res.error = res.error or "stream ended without [DONE]"
    except (httpx.HTTPError, ValueError, KeyError) as e:
        res.error = f"{type(e).__name__}: {e}"[:200]
    finally:
        res.end = time.perf_counter()
    return res


def run_round(base_url: str, endpoint: str, clients: int, requests_per_client: int, max_tokens: int,
              request_timeout_s: float, first_prompt: int = 0, tag: str = "") -> tuple[list[RequestResult], float]:
    """`clients` threads start together; each sends its requests in turn. The results and the wall
    seconds from the common start to the last answer."""
    import httpx

    results: list[Optional[RequestResult]] = [None] * (clients * requests_per_client)
    barrier = threading.Barrier(clients + 1)
    timeout = httpx.Timeout(request_timeout_s, connect=10.0)

    def client_loop(c: int) -> None:
        with httpx.Client(timeout=timeout) as client:
            barrier.wait()
            for r in range(requests_per_client):
                i = c * requests_per_client + r
                results[i] = stream_one(client, base_url, endpoint, prompt_for(first_prompt + i, tag), max_tokens,
                                        request_timeout_s)

    threads = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait(timeout=60.0)
    t0 = time.perf_counter()
    # bounded: each request ends by its own deadline, so this only guards against a stuck thread
    join_deadline = t0 + requests_per_client * (request_timeout_s + 15.0)
    for t in threads:
        t.join(max(0.0, join_deadline - time.perf_counter()))
    wall = time.perf_counter() - t0
    done = [r if r is not None else RequestResult(error="client thread did not finish") for r in results]
    return done, wall


def percentile(values: list[float], q: float) -> Optional[float]:
    """Linear interpolation between the closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summarize(results: list[RequestResult], wall_s: float) -> dict:
    ok = [r for r in results if r.ok]
    tokens = sum(len(r.chunk_times) for r in ok)
    ttft = [r.chunk_times[0] - r.start for r in ok if r.chunk_times]
    gaps = [b - a for r in ok for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    usage = [r.usage_tokens for r in ok]
    return {
        "requests": len(results),
        "requests_completed": len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "generated_tokens": tokens,
        "usage_completion_tokens": sum(usage) if ok and all(u is not None for u in usage) else None,
        "finish_reasons": sorted({r.finish_reason for r in ok if r.finish_reason}),
        "wall_s": wall_s,
        "tok_s": tokens / wall_s if wall_s > 0 else 0.0,
        "ttft_median_s": statistics.median(ttft) if ttft else None,
        "ttft_p90_s": percentile(ttft, 0.9),
        "itl_median_s": statistics.median(gaps) if gaps else None,
    }
