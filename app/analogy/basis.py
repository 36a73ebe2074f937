"""The bank of basis relations an analogy's composite is built from (Kang, Wu & Lu 2026), the relation scores
``sᵢ = log p(B | "Q: A\\nA:", vᵢ)`` that say which of them a source pair A:B expresses, and the ways those scores
may be normalised before they are mixed.

A source pair's scores share two things no relation explains: how many tokens B has (a long B has a low summed
log p under every vector) and how likely B is anyway. ``per_token`` divides the scores by B's token count (a
per-pair temperature); ``pmi`` subtracts the unsteered ``log p(B | "Q: A\\nA:")``. Both shift or scale a pair's
scores by one amount, so the ranking of relations for that pair never changes; what changes is how peaked the
mixture is and, with calibration, how the relations' scores compare across pairs. The fit keeps one only when
validation prefers it (:mod:`fvsteer_lab.fitting`)."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from app.analogy.continuations import variant_log_probs
from app.errors import MissingBank
from app.fv.prompts import Template, bos_prefix
from app.model.handle import ModelHandle
from app.model.runner import Runner, run_here
from app.registry.registry import VectorRegistry

MIN_BANK = 2
Normalisation = Literal["sum", "per_token", "pmi"]
NORMALISATIONS: tuple[Normalisation, ...] = get_args(Normalisation)


@dataclass(frozen=True)
class Bank:
    names: list[str]
    layers: list[int]
    vectors: Tensor  # [K, d_model]

    @classmethod
    def from_registry(cls, registry: VectorRegistry, names: list[str] | None = None) -> Bank:
        """``names`` in that order, or every fine-tuned vector of the registry (the starter bank and users')."""
        stored = ([registry.get(name, param="bank") for name in names] if names is not None else
                  [item for item in registry.list() if item.meta.method == "finetuned"])
        if len(stored) < MIN_BANK:
            raise MissingBank(f"analogies need at least {MIN_BANK} fine-tuned vectors in the registry; it has "
                           f"{len(stored)} (run `make vectors` or fine-tune some)")
        return cls([item.name for item in stored], [item.layer for item in stored],
                   torch.stack([item.vector.float() for item in stored]))

    def __len__(self) -> int:
        return len(self.names)

    def sha256(self) -> str:
        """What a combiner is fitted over: the relations in order, their layers and their vectors' float32 bytes."""
        digest = hashlib.sha256(json.dumps([self.names, self.layers]).encode())
        digest.update(self.vectors.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()

    def composite(self, weights: Tensor) -> dict[int, Tensor]:
        """``weights`` ``[N, K]`` → per-layer ``[N, d]`` sums ``Σᵢ wᵢ vᵢ`` (differentiable in the weights)."""
        out: dict[int, Tensor] = {}
        for layer in sorted(set(self.layers)):
            index = torch.tensor([i for i, at in enumerate(self.layers) if at == layer])
            out[layer] = weights[:, index] @ self.vectors[index]
        return out

    def composites(self, weights: Tensor) -> list[dict[int, Tensor]]:
        """``weights`` ``[N, K]`` → each row's composite as ``{layer: vector}`` (what a scored row carries)."""
        blocks = self.composite(weights)
        return [{layer: block[i] for layer, block in blocks.items()} for i in range(len(weights))]

    def one(self, name: str) -> dict[int, Tensor]:
        index = self.names.index(name)
        return {self.layers[index]: self.vectors[index]}


def query(model: ModelHandle, text: str) -> str:
    """The zero-shot query ``"Q: text\\nA:"`` every vector was trained on (with the model's BOS text if needed)."""
    return bos_prefix(model.tokenizer, model.adapter.adds_bos) + Template().query(text)


def relation_scores(
    model: ModelHandle, bank: Bank, pairs: list[tuple[str, str]], *, run: Runner[Tensor] = run_here,
    prompt: Callable[[str], str] | None = None,
) -> Tensor:
    """``[N, K]``: ``log p(b | "Q: a\\nA:", vᵢ)`` for each source pair and bank vector (one shared forward per
    distinct pair: :func:`app.analogy.continuations.variant_log_probs`; the combiner's training analogies reuse each
    source pair ~2×). ``prompt`` replaces the query the vectors were trained on (to measure other templates)."""
    distinct = list(dict.fromkeys(pairs))
    rows: list[Tensor] = []
    for a, b in distinct:
        text = query(model, a) if prompt is None else prompt(a)
        rows.append(run(functools.partial(variant_log_probs, model.adapter, model.tokenizer, text, b,
                                          bank.layers, bank.vectors)))
    if not rows:
        return torch.zeros(0, len(bank))
    at = {pair: index for index, pair in enumerate(distinct)}
    return torch.stack(rows)[torch.tensor([at[pair] for pair in pairs])]


@dataclass(frozen=True)
class SourceFacts:
    """Per source pair A:B, what normalising its scores needs: B's token count and its unsteered ``log p``."""

    tokens: Tensor  # [N]
    unsteered: Tensor  # [N]


def source_facts(
    model: ModelHandle, pairs: list[tuple[str, str]], *, run: Runner[Tensor] = run_here,
    prompt: Callable[[str], str] | None = None,
) -> SourceFacts:
    """B's token count (as scored: ``" " + B``) and ``log p(B | "Q: A\\nA:")`` without a vector, per pair."""
    distinct = list(dict.fromkeys(pairs))
    zero = torch.zeros(1, model.adapter.d_model)
    tokens, unsteered = [], []
    for a, b in distinct:
        text = query(model, a) if prompt is None else prompt(a)
        tokens.append(len(model.tokenizer(" " + b, add_special_tokens=False).input_ids))
        # A zero vector changes nothing: the unsteered continuation, from the same forward the scores use.
        unsteered.append(run(functools.partial(variant_log_probs, model.adapter, model.tokenizer, text, b,
                                               [0], zero))[0])
    if not distinct:
        return SourceFacts(torch.zeros(0), torch.zeros(0))
    index = {pair: row for row, pair in enumerate(distinct)}
    at = torch.tensor([index[pair] for pair in pairs])
    return SourceFacts(torch.tensor(tokens, dtype=torch.float32)[at], torch.stack(unsteered).float()[at])


def normalise(scores: Tensor, normalisation: Normalisation, facts: SourceFacts | None) -> Tensor:
    """``[N, K]`` relation scores as the combiner mixes them (``sum``: unchanged)."""
    if normalisation == "sum":
        return scores
    if facts is None:
        raise ValueError(f"{normalisation!r} scores need the source pairs' facts")
    if normalisation == "per_token":
        return scores / facts.tokens[:, None]
    return scores - facts.unsteered[:, None]
