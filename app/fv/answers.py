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
        """``[rows]`` how many other tokens score at least as high as the best accepted one (0: an accepted token
        is the top one). A tie counts against, and a row with NaN or +inf logits (a vector too large for the model)
        ranks last: a broken forward never scores as right."""
        best = logits.gather(1, self.ids).max(dim=1, keepdim=True).values  # padding repeats a real token
        accepted = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, self.ids, True)
        rank = ((logits >= best) & ~accepted).sum(dim=1)
        broken = (torch.isnan(logits) | torch.isposinf(logits)).any(dim=1)
        return torch.where(broken, torch.full_like(rank, logits.shape[1]), rank)

    def correct(self, logits: Tensor) -> Tensor:
        """``[rows]`` whether an accepted token is the top one, alone."""
        return self.rank(logits) == 0

    def take(self, rows: Tensor) -> AnswerSets:
        return AnswerSets(self.ids[rows], self.mask[rows])
