"""Counters of the server and their Prometheus text exposition (``GET /metrics``)."""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Deque, Dict, List, Tuple

__all__ = ["Metrics"]

_WINDOW = 10.0  # seconds over which tokens/s is measured


class Metrics:
    """Request and token counters. Updated from the event loop and from the threads that wait on
    generations, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Dict[Tuple[str, int], int] = collections.defaultdict(int)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.rejected_full = 0
        self.cancelled = 0
        self.evictions = 0
        self._recent: Deque[Tuple[float, int]] = collections.deque()
        self.started = time.time()

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def generation(self, prompt_tokens: int, completion_tokens: int, evictions: int,
                   cancelled: bool) -> None:
        """One finished choice: its prompt tokens read, tokens generated, evictions in its
        sequence."""
        now = time.monotonic()
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.evictions += evictions
            self.cancelled += int(cancelled)
            self._recent.append((now, completion_tokens))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - _WINDOW:
            self._recent.popleft()

    def tokens_per_second(self) -> float:
        """Completion tokens of the generations that finished in the last 10 s, per second."""
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._recent) / _WINDOW

    def render(self, gauges: Callable[[], Dict[str, Tuple[str, float]]]) -> str:
        """The Prometheus text format: the counters, and ``gauges()`` (name -> (help, value))."""
        lines: List[str] = []

        def metric(name: str, kind: str, help: str, samples: List[Tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {_num(value)}")

        with self._lock:
            reqs = sorted(self.requests.items())
            counters = [
                ("tova_prompt_tokens_total",
                 "Prompt tokens of finished generations, as their usage counts them (the whole "
                 "prompt, also of one cancelled while it was read).", self.prompt_tokens),
                ("tova_completion_tokens_total", "Tokens generated.", self.completion_tokens),
                ("tova_requests_rejected_total", "Requests answered 429 because the queue was full.",
                 self.rejected_full),
                ("tova_generations_cancelled_total",
                 "Generations cancelled (client gone, or stopped early).", self.cancelled),
                ("tova_kv_evictions_total",
                 "KV evictions in the sequences of finished generations.", self.evictions),
            ]
        metric("tova_requests_total", "counter",
               "HTTP requests answered, by endpoint and status (499: the client closed the "
               "connection before its answer, nginx's 'client closed request'; its generation "
               "was cancelled).",
               [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in reqs])
        for name, help, value in counters:
            metric(name, "counter", help, [("", value)])
        metric("tova_tokens_per_second", "gauge",
               f"Completion tokens per second over the last {_WINDOW:g} s.",
               [("", self.tokens_per_second())])
        for name, (help, level) in gauges().items():
            metric(name, "gauge", help, [("", level)])
        return "\n".join(lines) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"
