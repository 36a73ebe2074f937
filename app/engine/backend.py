"""The generation seam: what serving needs from a model backend, and nothing more.

Completions are served by any :class:`GenerationBackend`: ``hf`` (:class:`~app.engine.engine.Engine`, in process)
today. Science (head means, mediation, fine-tuning, evaluation, decoding, analogy scoring) never goes through
this seam; it runs on the HF model through :class:`~app.model.runner.ModelRunner`, so a backend that only
generates can serve while the science runs elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from app.engine.requests import BankSteering, GenerationRequest
from app.engine.stats import EngineStats


class GenerationBackend(Protocol):
    @property
    def model_name(self) -> str: ...

    @property
    def stats(self) -> EngineStats:
        """Counters for ``/metrics`` (batch sizes, tokens, finish reasons, queue)."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def encode(self, prompt: str, max_new_tokens: int) -> list[int]:
        """Token ids of ``prompt``; refuses one over the prompt limit or the model's context (422)."""
        ...

    def check_steering(self, steering: BankSteering) -> None:
        """Refuse steering the bank cannot build (404 unknown vector, 422 a layer the model lacks)."""
        ...

    def submit(self, rows: Sequence[GenerationRequest]) -> None:
        """Queue rows to be admitted together (a steered row and its baseline). Returns at once; refuses at once
        with 429 (queue full), 503 (stopping or failed), 404/422 (steering the bank cannot build)."""
        ...

    def cancel_all(self) -> None:
        """End every row at its next step with the text so far, and refuse what waits (a drain's grace is over)."""
        ...

    def requests_in_flight(self) -> int:
        """Rows running, being admitted or waiting: a drain is over when this is 0."""
        ...

    def health(self) -> str | None:
        """Why the backend cannot serve now, or None when it can."""
        ...
