"""Fine-tuned function vectors (Kang, Wu & Lu 2026): the model frozen, the vector the only
parameter, trained so that zero-shot prompts ``"Q: x\\nA:"`` steered at block ``layer`` put the first answer token
on top.

Loss = cross-entropy of the first answer token + ``l2 · ‖v − v₀‖²``; Adam with a cosine schedule over full-batch
epochs; a seeded hold-out of the pairs picks the checkpoint (best hold-out top-1, then lowest hold-out loss).
A step is several short callables handed to ``run`` (the gradient accumulated over chunks of ``chunk_size``
prompts, then the update), so on the engine thread decoding interleaves with training at a fine grain.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from app.errors import InvalidInput
from app.fv.answers import AnswerSets
from app.fv.forward import encode_left_padded, last_token_logits, model_device
from app.fv.pairs import Pair
from app.fv.prompts import PromptItem, Template, bos_prefix, zero_shot_prompts
from app.model.handle import ModelHandle
from app.model.runner import Runner, run_here
from app.model.steering import BatchSteering, steered

Progress = Callable[[str, float, dict[str, Any]], None]


@dataclass(frozen=True)
class FinetuneSpec:
    pairs: list[Pair]
    layer: int
    epochs: int = 60
    lr: float = 0.5
    l2: float = 0.0
    seed: int = 0
    holdout_fraction: float = 0.25
    chunk_size: int = 8  # prompts per engine task: bounds how long one task holds the engine from decoding
    template: Template = field(default_factory=Template)


@dataclass
class FinetuneResult:
    vector: Tensor
    best_epoch: int
    history: list[dict[str, float]]
    holdout_before: float
    holdout_after: float
    n_train: int
    n_holdout: int


def split_holdout(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Seeded train / hold-out split; both parts non-empty."""
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    n_holdout = min(max(1, round(len(shuffled) * fraction)), len(shuffled) - 1)
    return shuffled[n_holdout:], shuffled[:n_holdout]


def _steering(layer: int, vector: Tensor, rows: int, width: int) -> BatchSteering:
    positions = torch.zeros((rows, width), dtype=torch.bool)
    positions[:, -1] = True
    return BatchSteering({layer: vector.reshape(1, -1).expand(rows, -1)}, positions)


def _loss_and_correct(
    model: ModelHandle, items: list[PromptItem], layer: int, vector: Tensor
) -> tuple[Tensor, Tensor]:
    """Summed ``−log Σ p(accepted first tokens)`` (the cross-entropy when one answer is accepted) and the number
    right (top-1 is an accepted token)."""
    device = model_device(model.adapter)
    ids, mask = encode_left_padded(model.tokenizer, [item.text for item in items], device)
    answers = AnswerSets.of([item.answer_tokens for item in items], device)
    with steered(model.adapter, _steering(layer, vector, ids.shape[0], ids.shape[1])):
        logits = last_token_logits(model.adapter, ids, mask)
    loss = answers.loss(logits).sum()
    correct = answers.correct(logits).float().sum()
    return loss, correct


def finetune(
    model: ModelHandle,
    spec: FinetuneSpec,
    init: Tensor,
    *,
    run: Runner[Any] = run_here,
    report: Progress = lambda phase, fraction, detail: None,
) -> FinetuneResult:
    """Train a vector from ``init`` (e.g. the mediation FV of the same pairs); the model's weights never change."""
    adapter = model.adapter
    if not 0 <= spec.layer < adapter.n_layers:
        raise InvalidInput(f"layer {spec.layer} is outside the model's 0..{adapter.n_layers - 1}", param="layer")
    if init.shape != (adapter.d_model,):
        raise InvalidInput(
            f"init vector has shape {list(init.shape)}; the model needs [{adapter.d_model}]", param="init"
        )
    train_pairs, holdout_pairs = split_holdout(spec.pairs, spec.holdout_fraction, spec.seed)
    prefix = bos_prefix(model.tokenizer, adapter.adds_bos)
    train = zero_shot_prompts(model.tokenizer, spec.template, prefix, train_pairs)
    holdout = zero_shot_prompts(model.tokenizer, spec.template, prefix, holdout_pairs)
    device = model_device(adapter)
    dtype = next(adapter.model.parameters()).dtype

    torch.manual_seed(spec.seed)
    start = init.detach().to(device, torch.float32).clone()
    vector = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.Adam([vector], lr=spec.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(spec.epochs, 1))

    def evaluate_holdout() -> tuple[float, float]:
        with torch.no_grad():
            loss, correct = _loss_and_correct(model, holdout, spec.layer, vector.detach().to(dtype))
        return float(correct) / len(holdout), float(loss) / len(holdout)

    chunks = [train[i : i + max(1, spec.chunk_size)] for i in range(0, len(train), max(1, spec.chunk_size))]

    def accumulate(chunk: list[PromptItem]) -> tuple[float, float]:
        """Add this chunk's share of the full-batch gradient: one short engine task, not one long one."""
        with torch.inference_mode(False), torch.enable_grad():
            loss, correct = _loss_and_correct(model, chunk, spec.layer, vector.to(dtype))
            # Gradient of the vector only: the model stays frozen even if its weights require grad.
            (grad,) = torch.autograd.grad(loss / len(train), [vector])
        vector.grad = grad if vector.grad is None else vector.grad + grad
        return float(loss.detach()), float(correct)

    def apply() -> tuple[float, float]:
        with torch.inference_mode(False), torch.enable_grad():
            penalty = spec.l2 * (vector - start).pow(2).sum()
            (grad,) = torch.autograd.grad(penalty, [vector])
            vector.grad = grad if vector.grad is None else vector.grad + grad
            optimizer.step()
            schedule.step()
        return evaluate_holdout()

    def step() -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        parts = [run(functools.partial(accumulate, chunk)) for chunk in chunks]
        holdout_accuracy, holdout_loss = run(apply)
        return {"loss": sum(loss for loss, _ in parts) / len(train),
                "train_top1": sum(correct for _, correct in parts) / len(train),
                "holdout_top1": holdout_accuracy, "holdout_loss": holdout_loss}

    before, before_loss = run(evaluate_holdout)
    best = (before, -before_loss)
    best_vector, best_epoch = start.clone(), 0
    history: list[dict[str, float]] = []
    for epoch in range(1, spec.epochs + 1):
        record = step()
        if not math.isfinite(record["loss"]):
            break
        history.append({"epoch": epoch, **record})
        score = (record["holdout_top1"], -record["holdout_loss"])
        if score > best:
            best, best_vector, best_epoch = score, vector.detach().clone(), epoch
        report("training", epoch / spec.epochs, history[-1])
    return FinetuneResult(best_vector.cpu(), best_epoch, history, before, best[0], len(train), len(holdout))
