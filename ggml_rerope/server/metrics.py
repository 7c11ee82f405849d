"""Counters of the server and their Prometheus text form (GET /metrics).

Counters are updated on the event loop thread only (the scheduler reports finished jobs there),
so they need no lock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

PREFIX = "ggml_rerope_"


@dataclass
class Metrics:
    prompt_tokens: int = 0          # prompt tokens evaluated (cached prefixes not counted)
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    requests: Counter = field(default_factory=Counter)  # outcome -> count

    def add_timings(self, timings) -> None:
        """Adds one finished completion's CompletionTimings."""
        self.prompt_tokens += int(timings.prompt_eval_tokens)
        self.prompt_seconds += float(timings.prompt_s)
        self.generated_tokens += int(timings.completion_tokens)
        self.generation_seconds += float(timings.completion_s)

    def count(self, outcome: str) -> None:
        self.requests[outcome] += 1

    def render(self, gauges: Callable[[], list[tuple[str, str, float]]]) -> str:
        """Prometheus exposition text; gauges() gives (name, help, value) read at this moment."""
        lines: list[str] = []

        def metric(name, kind, help_text, samples):
            lines.append(f"# HELP {PREFIX}{name} {help_text}")
            lines.append(f"# TYPE {PREFIX}{name} {kind}")
            for labels, value in samples:
                lines.append(f"{PREFIX}{name}{labels} {value:g}" if isinstance(value, float)
                             else f"{PREFIX}{name}{labels} {value}")

        metric("prompt_tokens_total", "counter", "Prompt tokens evaluated (cache hits excluded).",
               [("", self.prompt_tokens)])
        metric("prompt_seconds_total", "counter", "Seconds spent evaluating prompts.", [("", self.prompt_seconds)])
        metric("tokens_predicted_total", "counter", "Tokens generated.", [("", self.generated_tokens)])
        metric("tokens_predicted_seconds_total", "counter", "Seconds spent generating tokens.",
               [("", self.generation_seconds)])
        outcomes = sorted(set(self.requests) | {"ok", "error", "cancelled", "rejected"})
        metric("requests_total", "counter", "Finished requests by outcome.",
               [(f'{{outcome="{o}"}}', self.requests.get(o, 0)) for o in outcomes])
        for name, help_text, value in gauges():
            metric(name, "gauge", help_text, [("", value)])
        return "\n".join(lines) + "\n"
