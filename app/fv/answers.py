"""A prompt's accepted answers as first tokens, and the scores that count any of them.

Many relations have more than one right answer (the opposite of ``warm`` is ``cool`` or ``cold``; a fruit is an apple
or a pear). Scoring one of them as the only answer punishes a vector for saying another, and training on one pushes
probability away from the others. So a pair lists its accepted answers; training minimises
``−log Σ p(accepted first tokens)`` and a prediction is right when its top token is any accepted first token. With
one answer both reduce to the usual cross-entropy and top-1 exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AnswerSets:
    """Per row, its distinct accepted first tokens: ``ids`` ``[rows, k]``, padded with the row's first (primary)
    token, and ``mask`` ``[rows, k]`` true on the real ones."""

    ids: Tensor
    mask: Tensor

    @classmethod
    def of(cls, tokens: Sequence[Sequence[int]], device: torch.device | str) -> AnswerSets:
        width = max((len(row) for row in tokens), default=1)
        ids = torch.tensor([[*row, *[row[0]] * (width - len(row))] for row in tokens], dtype=torch.long)
        mask = torch.tensor([[True] * len(row) + [False] * (width - len(row)) for row in tokens], dtype=torch.bool)
        return cls(ids.reshape(len(tokens), width).to(device), mask.reshape(len(tokens), width).to(device))

    def loss(self, logits: Tensor) -> Tensor:
        """``[rows]`` ``−log Σ p`` over each row's accepted tokens (the cross-entropy when there is one)."""
        picked = torch.log_softmax(logits.float(), dim=-1).gather(1, self.ids)
        return -torch.logsumexp(picked.masked_fill(~self.mask, float("-inf")), dim=1)

    def log_prob(self, logits: Tensor) -> Tensor:
        """``[rows]`` ``log Σ p`` over each row's accepted tokens."""
        return -self.loss(logits)

    def rank(self, logits: Tensor) -> Tensor:
        """``[rows]`` how many tokens score above the best accepted one (0: the top token is accepted)."""
        best = logits.gather(1, self.ids).max(dim=1, keepdim=True).values  # padding repeats a real token
        return (logits > best).sum(dim=1)

    def correct(self, logits: Tensor) -> Tensor:
        """``[rows]`` whether the top token is an accepted one."""
        return (logits.argmax(dim=-1, keepdim=True) == self.ids).any(dim=1)

    def take(self, rows: Tensor) -> AnswerSets:
        return AnswerSets(self.ids[rows], self.mask[rows])
