"""A multiple-choice analogy problem: what the solver answers and the evaluation sets are read into."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AnalogyProblem:
    """``source[0] : source[1] :: candidates[j][0] : candidates[j][1]``; the right one is ``candidates[answer]``."""

    relation: str | None
    source: tuple[str, str]
    candidates: list[tuple[str, str]]
    answer: int
