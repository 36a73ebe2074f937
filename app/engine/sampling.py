"""Choosing the next token of one row: greedy, or temperature/top-p with the row's own generator.

Each sampled row owns a seeded ``torch.Generator``, so a request with a seed draws the same tokens
whatever else shares its batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def next_token(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Pick a token id from one row's ``[vocab]`` logits."""
    logits = logits.float()
    if temperature <= 0.0:
        return int(torch.argmax(logits))
    # Shift before dividing: a tiny temperature (1e-40 passes validation) would otherwise overflow to inf and
    # give NaN probabilities, which makes multinomial raise and fails every row of the batch.
    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        keep = before < top_p
        # The most likely token always stays: a top_p the schema admits (1e-300) is 0 in float32, and "0 < 0" would
        # remove every token and leave multinomial nothing to draw from.
        keep[0] = True
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    choice = torch.multinomial(probs.cpu(), 1, generator=generator)
    return int(choice)


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (or from the OS when no seed is given)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
