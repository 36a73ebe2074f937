"""What a caller hands the engine and what it gets back."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

FinishReason = Literal["stop", "length", "timeout", "cancelled"]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class GenerationRequest:
    """One row to generate. ``steering`` maps layer → vector (already weighted and scaled); None = unsteered."""

    prompt_ids: list[int]
    params: SamplingParams
    steering: dict[int, Tensor] | None = None
    all_positions: bool = False
    deadline: float | None = None
    on_text: Callable[[str], None] | None = None  # streaming: called on the engine thread with each new text piece
    future: Future[GenerationResult] = field(default_factory=Future)
    admitted: Future[None] = field(default_factory=Future)  # resolved when the row joins the batch
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        """Ask the engine to drop this row at its next step (e.g. the client went away)."""
        self.cancelled = True


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    batch_sizes: tuple[int, ...]

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)
