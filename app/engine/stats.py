"""Counters of a generation backend, read by ``/metrics`` and the tests."""

from __future__ import annotations

from collections import Counter
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
    tasks_run: int = 0  # forwards of jobs, evaluations and analogies run between decode steps
    queue_depth: int = 0
    active_rows: int = 0

    @property
    def requests_finished(self) -> int:
        return sum(self.finished.values())
