"""A token with its log-probability: what generation and scoring report per position (torch-free, so the
generation seam can carry it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability under the model (before temperature or top-p) and the ``k`` likeliest tokens at
    its position as ``(id, logprob)``, best first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
