"""Composite weights from relation scores (Kang, Wu & Lu 2026; the form is ours): ``w = W · mix(s) + b``, where
``mix`` turns the ``[N, K]`` scores ``sᵢ = log p(B | "Q: A\\nA:", vᵢ)`` into a distribution over the bank —

0. optionally **normalised** per source pair (:func:`app.analogy.basis.normalise`: per token of B, or against
   B's unsteered log p);
1. optionally **calibrated**: each vector's score standardised by its own mean and spread over training source
   pairs (a vector that makes every continuation likely is no evidence of its relation);
2. ``softmax(· / T)`` at a temperature ``T``;
3. optionally **sparse**: only the ``top_k`` largest kept, renormalised.

W = I, b = 0 is the plain mixture (``kind="softmax"``); :mod:`fvsteer_lab.fitting` chooses calibration, T and
top-k on validation analogies and fits W, b. The combiner is saved as JSON beside the bank
(``vectors/<model>/combiner.json``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from app.analogy.basis import NORMALISATIONS, Bank, Normalisation, SourceFacts, normalise
from app.registry.registry import VectorRegistry

log = logging.getLogger(__name__)

FORMAT = "fvsteer-combiner/2"
FORMATS = ("fvsteer-combiner/1", FORMAT)  # /1: no calibration, no top-k (read as such); no normalisation: "sum"
FILE_NAME = "combiner.json"


@dataclass(frozen=True)
class Calibration:
    """Each vector's score mean and standard deviation over the training source pairs."""

    centre: Tensor  # [K]
    scale: Tensor  # [K], > 0

    @classmethod
    def of(cls, scores: Tensor) -> Calibration:
        return cls(scores.mean(dim=0), scores.std(dim=0).clamp(min=1e-3))

    def __call__(self, scores: Tensor) -> Tensor:
        return (scores - self.centre) / self.scale


def mix(scores: Tensor, temperature: Tensor | float, calibration: Calibration | None, top_k: int | None) -> Tensor:
    """``[N, K]`` scores → ``[N, K]`` rows that sum to 1 (differentiable in the temperature)."""
    logits = calibration(scores) if calibration is not None else scores
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_k is not None and top_k < probs.shape[-1]:
        kept = torch.zeros_like(probs).scatter(-1, probs.topk(top_k, dim=-1).indices, 1.0)
        probs = probs * kept
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


@dataclass(frozen=True)
class Combiner:
    relations: list[str]
    weight: Tensor  # [K, K]
    bias: Tensor  # [K]
    temperature: float
    kind: str = "affine"  # or "softmax" (W = I, b = 0: no fitted combiner)
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: Calibration | None = None
    top_k: int | None = None
    bank_sha256: str | None = None  # :meth:`Bank.sha256` of the bank it was fitted over (None: not recorded)
    normalisation: Normalisation = "sum"

    @classmethod
    def softmax(cls, relations: list[str], temperature: float = 1.0) -> Combiner:
        k = len(relations)
        return cls(list(relations), torch.eye(k), torch.zeros(k), temperature, kind="softmax")

    @property
    def _effective_normalisation(self) -> Normalisation:
        """``pmi`` without calibration shifts each pair's scores by one constant, which neither the softmax nor the
        top-k sees: the same weights as ``sum``, without the extra forward per source pair its facts cost."""
        return "sum" if self.normalisation == "pmi" and self.calibration is None else self.normalisation

    @property
    def needs_facts(self) -> bool:
        """Whether :meth:`weights` needs the source pairs' :class:`SourceFacts` beside their scores."""
        return self._effective_normalisation != "sum"

    def weights(self, scores: Tensor, facts: SourceFacts | None = None) -> Tensor:
        """``[N, K]`` relation scores (as :func:`app.analogy.basis.relation_scores` gives them) → ``[N, K]`` composite
        weights; ``facts`` of the same source pairs when :attr:`needs_facts`."""
        normalised = normalise(scores, self._effective_normalisation, facts)
        return mix(normalised, self.temperature, self.calibration, self.top_k) @ self.weight.T + self.bias

    def save(self, path: Path, fingerprint: str) -> None:
        calibration = (None if self.calibration is None else
                       {"centre": self.calibration.centre.tolist(), "scale": self.calibration.scale.tolist()})
        record = {"format": FORMAT, "model_fingerprint": fingerprint, "relations": self.relations,
                  "bank_sha256": self.bank_sha256, "temperature": self.temperature, "calibration": calibration,
                  "top_k": self.top_k, "normalisation": self.normalisation,
                  "weight": self.weight.tolist(), "bias": self.bias.tolist(),
                  "metrics": self.metrics}
        path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> Combiner:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") not in FORMATS:
            raise ValueError(f"{path}: not a {FORMAT} file")
        if record.get("model_fingerprint") != fingerprint:
            raise ValueError(f"{path}: fitted for model fingerprint {record.get('model_fingerprint')!r}")
        relations = [str(name) for name in record["relations"]]
        k = len(relations)
        weight, bias = torch.tensor(record["weight"]), torch.tensor(record["bias"])
        temperature = float(record["temperature"])
        if weight.shape != (k, k) or bias.shape != (k,):
            raise ValueError(f"{path}: weight/bias shapes do not match {k} relations")
        calibration = None
        if record.get("calibration") is not None:
            calibration = Calibration(torch.tensor(record["calibration"]["centre"]),
                                      torch.tensor(record["calibration"]["scale"]))
            if calibration.centre.shape != (k,) or calibration.scale.shape != (k,) or not (
                    torch.isfinite(calibration.centre).all() and (calibration.scale > 0).all()):
                raise ValueError(f"{path}: calibration needs {k} finite centres and positive scales")
        top_k = record.get("top_k")
        if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= k):
            raise ValueError(f"{path}: top_k must be an integer from 1 to {k}")
        if not (torch.isfinite(weight).all() and torch.isfinite(bias).all() and math.isfinite(temperature)
                and temperature > 0):
            raise ValueError(f"{path}: non-finite or non-positive values")
        normalisation = record.get("normalisation", "sum")
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"{path}: normalisation must be one of {', '.join(NORMALISATIONS)}")
        bank_sha256 = record.get("bank_sha256")
        return cls(relations, weight, bias, temperature, "affine", dict(record.get("metrics", {})), calibration,
                   top_k, str(bank_sha256) if bank_sha256 is not None else None, normalisation)


def bank_in_force(registry: VectorRegistry, fingerprint: str) -> tuple[Bank, Combiner]:
    """The fitted combiner's bank when ``combiner.json`` is there and all its vectors are loaded; otherwise every
    fine-tuned vector with plain softmax weights."""
    path = registry.folder / FILE_NAME
    if path.is_file():
        try:
            combiner = Combiner.load(path, fingerprint)
            if set(combiner.relations) <= {stored.name for stored in registry.list()}:
                return Bank.from_registry(registry, combiner.relations), combiner
            log.warning("combiner %s needs vectors that are not loaded; using softmax weights", path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring combiner %s: %s", path, exc)
    bank = Bank.from_registry(registry)
    return bank, Combiner.softmax(bank.names)
