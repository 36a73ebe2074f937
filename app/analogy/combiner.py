"""Composite weights from relation scores: ``w = W · softmax(s / T) + b`` (FV_METHOD.md §7), fitted on training
analogies built from the shipped relations, through the frozen model.

A training analogy is two pairs of one relation, A:B and C:D, taken from the relation's *test* split, which no
bank vector was trained on (so the scores look like they will on new pairs). The loss is
``−log p(D | "Q: C\\nA:", Σ wᵢ vᵢ)`` plus ``λ(‖W − I‖² + ‖b‖²)``; W starts at the identity, b at zero, so the
starting point is plain softmax weights. A seeded fifth of the analogies picks the epoch. The fitted combiner
is saved as JSON beside the bank (``vectors/<model>/combiner.json``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from app.analogy.bank import Bank, query, relation_scores
from app.analogy.scoring import ScoreRow, encode_rows, sequence_log_probs
from app.fv.pairs import relation_pairs, split_pairs
from app.model.handle import ModelHandle
from app.model.runner import Runner, run_here
from app.registry.registry import VectorRegistry

log = logging.getLogger(__name__)

FORMAT = "fvsteer-combiner/1"
FILE_NAME = "combiner.json"


@dataclass(frozen=True)
class Combiner:
    relations: list[str]
    weight: Tensor  # [K, K]
    bias: Tensor  # [K]
    temperature: float
    kind: str = "affine"  # or "softmax" (W = I, b = 0: no fitted combiner)
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def softmax(cls, relations: list[str], temperature: float = 1.0) -> Combiner:
        k = len(relations)
        return cls(list(relations), torch.eye(k), torch.zeros(k), temperature, kind="softmax")

    def weights(self, scores: Tensor) -> Tensor:
        """``[N, K]`` relation scores → ``[N, K]`` composite weights."""
        return torch.softmax(scores / self.temperature, dim=-1) @ self.weight.T + self.bias

    def save(self, path: Path, fingerprint: str) -> None:
        record = {"format": FORMAT, "model_fingerprint": fingerprint, "relations": self.relations,
                  "temperature": self.temperature, "weight": self.weight.tolist(), "bias": self.bias.tolist(),
                  "metrics": self.metrics}
        path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> Combiner:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file")
        if record.get("model_fingerprint") != fingerprint:
            raise ValueError(f"{path}: fitted for model fingerprint {record.get('model_fingerprint')!r}")
        relations = [str(name) for name in record["relations"]]
        weight, bias = torch.tensor(record["weight"]), torch.tensor(record["bias"])
        temperature = float(record["temperature"])
        if weight.shape != (len(relations), len(relations)) or bias.shape != (len(relations),):
            raise ValueError(f"{path}: weight/bias shapes do not match {len(relations)} relations")
        if not (torch.isfinite(weight).all() and torch.isfinite(bias).all() and math.isfinite(temperature)
                and temperature > 0):
            raise ValueError(f"{path}: non-finite or non-positive values")
        return cls(relations, weight, bias, temperature, "affine", dict(record.get("metrics", {})))


@dataclass(frozen=True)
class TrainingAnalogy:
    relation: str
    source: tuple[str, str]
    target: tuple[str, str]


def training_analogies(relations: list[str], per_relation: int, seed: int) -> list[TrainingAnalogy]:
    """Ordered pairs of distinct test-split pairs of each shipped relation (seeded sample)."""
    rng = random.Random(seed)
    analogies: list[TrainingAnalogy] = []
    for relation in relations:
        test = split_pairs(relation_pairs(relation), seed).test
        ordered = [(s, t) for s in test for t in test if s != t]
        for source, target in rng.sample(ordered, min(per_relation, len(ordered))):
            analogies.append(TrainingAnalogy(relation, (source.input, source.output), (target.input, target.output)))
    rng.shuffle(analogies)
    return analogies


@dataclass(frozen=True)
class FitOptions:
    per_relation: int = 24
    epochs: int = 8
    # Adam moves every entry by ~lr per step while 27 softmax weights average 0.04: at 0.02 the 80-epoch bank's
    # combiner never beat its softmax start on validation; at 0.005 it does (-3.28 → -2.97 mean log p).
    lr: float = 0.005
    l2: float = 0.01
    batch_size: int = 32
    temperature: float = 1.0
    seed: int = 0


def fit_combiner(
    model: ModelHandle,
    bank: Bank,
    options: FitOptions,
    *,
    run: Runner[Any] = run_here,
    report: Callable[[str], None] = lambda line: None,
) -> Combiner:
    """Fit W, b and T on training analogies of the bank's relations (each bank vector named after its relation)."""
    analogies = training_analogies(bank.names, options.per_relation, options.seed)
    n_valid = max(1, len(analogies) // 5)
    valid, train = analogies[:n_valid], analogies[n_valid:]
    scores = relation_scores(model, bank, [item.source for item in analogies], run=run)
    valid_scores, train_scores = scores[:n_valid], scores[n_valid:]
    k = len(bank)
    weight = torch.nn.Parameter(torch.eye(k))
    bias = torch.nn.Parameter(torch.zeros(k))
    log_t = torch.nn.Parameter(torch.tensor(math.log(options.temperature)))
    optimizer = torch.optim.Adam([weight, bias, log_t], lr=options.lr)
    rng = random.Random(options.seed)

    def combine(batch_scores: Tensor) -> Tensor:
        return torch.softmax(batch_scores / log_t.exp(), dim=-1) @ weight.T + bias

    def target_log_probs(items: list[TrainingAnalogy], batch_scores: Tensor) -> Tensor:
        rows = [ScoreRow(query(model, item.target[0]), item.target[1]) for item in items]
        encoded = encode_rows(model.tokenizer, rows)
        return sequence_log_probs(model.adapter, encoded, bank.composite(combine(batch_scores)))

    def validation() -> float:
        def forward() -> float:
            with torch.no_grad():
                total = sum(float(target_log_probs(valid[i : i + 64], valid_scores[i : i + 64]).sum())
                            for i in range(0, len(valid), 64))
            return total / len(valid)
        result: float = run(forward)
        return result

    def step(batch: list[int]) -> float:
        with torch.inference_mode(False), torch.enable_grad():
            optimizer.zero_grad(set_to_none=True)
            log_probs = target_log_probs([train[i] for i in batch], train_scores[batch])
            loss = -log_probs.mean() + options.l2 * ((weight - torch.eye(k)).pow(2).sum() + bias.pow(2).sum())
            grads = torch.autograd.grad(loss, [weight, bias, log_t])
            for parameter, grad in zip((weight, bias, log_t), grads, strict=True):
                parameter.grad = grad
            optimizer.step()
        return float(loss.detach())

    start = validation()
    best = (start, weight.detach().clone(), bias.detach().clone(), float(log_t.detach().exp()), 0)
    report(f"combiner: {len(train)} training / {len(valid)} validation analogies; softmax start {start:.3f}")
    for epoch in range(1, options.epochs + 1):
        order = list(range(len(train)))
        rng.shuffle(order)
        losses: list[float] = []
        for i in range(0, len(order), options.batch_size):
            batch = order[i : i + options.batch_size]
            losses.append(run(functools.partial(step, batch)))
        score = validation()
        report(f"combiner epoch {epoch}: train loss {sum(losses) / len(losses):.3f}, validation log p {score:.3f}")
        if score > best[0]:
            best = (score, weight.detach().clone(), bias.detach().clone(), float(log_t.detach().exp()), epoch)
    metrics = {"n_train": len(train), "n_valid": len(valid), "best_epoch": best[4],
               "valid_log_prob_softmax": round(start, 4), "valid_log_prob_fitted": round(best[0], 4),
               "options": options.__dict__}
    return Combiner(bank.names, best[1], best[2], best[3], "affine", metrics)


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
