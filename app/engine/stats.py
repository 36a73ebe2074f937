"""Counters of a generation backend, read by ``/metrics`` and the tests."""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass
class EngineStats:
    """Counters the metrics endpoint and the tests read; updated by the engine thread (``rejected`` by submitters,
    under the engine's lock)."""

    batch_sizes: Counter[int] = field(default_factory=Counter)
    tokens_generated: int = 0
    finished: Counter[str] = field(default_factory=Counter)  # rows by finish reason
    queue_timeouts: int = 0
    rejected: int = 0  # requests refused because the queue was full
    failed_steps: int = 0
    failed_rows: int = 0  # rows failed alone (their sampling or stop handling raised); the batch went on
    tasks_run: int = 0  # forwards of jobs, evaluations and analogies run between decode steps
    queue_depth: int = 0
    active_rows: int = 0

    @property
    def requests_finished(self) -> int:
        return sum(self.finished.values())


class FinishRate:
    """When rows finished recently: how long a new request will likely wait, for ``Retry-After``."""

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=64)

    def finished(self, now: float) -> None:
        self._recent.append(now)

    def retry_after(self, waiting: int) -> int:
        """Seconds until the queue has likely moved by ``waiting`` rows, at the recent finishing rate (1–60)."""
        recent = self._recent
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return 1
        rate = (len(recent) - 1) / (recent[-1] - recent[0])
        return max(1, min(60, math.ceil(waiting / rate)))
