"""Fine-tuned function vectors (Kang, Wu & Lu 2026): the model frozen, the vector the only
parameter, trained so that zero-shot prompts ``"Q: x\\nA:"`` steered at block ``layer`` put the first answer token
on top.

Loss = cross-entropy of the first answer token (``−log Σ p`` over the accepted answers) + ``l2 · ‖v − v₀‖²``; Adam
with a cosine schedule over full-batch epochs; a seeded hold-out of the pairs picks the checkpoint (best hold-out
top-1, then lowest hold-out loss), and with ``patience`` training stops once that many epochs in a row have not
beaten it, so each relation trains as long as its hold-out still improves.

With ``chat`` (and a tokenizer that has a chat template) every pair is also a chat-rendered prompt
(:func:`app.fv.prompts.chat_prompts`), in training and in the hold-out: the vector is added at the last prompt
token in either form, and a vector trained on ``"Q: x\\nA:"`` alone steers a chat turn poorly. The checkpoint's
hold-out top-1 is then the mean of the two forms'.

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
from app.fv.prompts import PromptItem, Template, bos_prefix, chat_prompts, has_chat_template, zero_shot_prompts
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
    chat: bool = False  # also train and select on chat-rendered prompts (when the tokenizer has a chat template)
    patience: int | None = None  # stop once this many epochs in a row have not beaten the best hold-out score


@dataclass
class TrainedCheckpoint:
    """The checkpoint and its hold-out top-1 before and after training, on raw prompts and (``None`` without chat
    training) on chat-rendered ones."""

    vector: Tensor
    best_epoch: int
    history: list[dict[str, float]]
    holdout_before: float
    holdout_after: float
    n_train: int
    n_holdout: int
    chat_before: float | None = None
    chat_after: float | None = None


@dataclass(frozen=True)
class TrainingPrompts:
    """A spec's zero-shot prompts: the raw ones (``"Q: x\\nA:"``), then, with ``chat``, the same pairs in chat form."""

    train: list[PromptItem]
    holdout: list[PromptItem]
    n_train: int  # pairs
    n_holdout: int
    chat: bool

    def train_forms(self) -> list[int]:
        """Per training row, 0 for the raw form and 1 for the chat form."""
        return [0] * self.n_train + [1] * (len(self.train) - self.n_train)

    def holdout_forms(self) -> list[int]:
        """Per hold-out row, 0 for the raw form and 1 for the chat form."""
        return [0] * self.n_holdout + [1] * (len(self.holdout) - self.n_holdout)

    def score(self, top1_by_form: tuple[float, float], loss: float) -> tuple[float, float]:
        """What picks the checkpoint: hold-out top-1 (the two forms' mean with chat), then the lower mean loss."""
        raw, chat = top1_by_form
        return ((raw + chat) / 2 if self.chat else raw), -loss


def training_prompts(model: ModelHandle, spec: FinetuneSpec) -> TrainingPrompts:
    """The seeded train / hold-out split of ``spec.pairs`` as prompts, in both forms where the spec asks for chat."""
    train_pairs, holdout_pairs = split_holdout(spec.pairs, spec.holdout_fraction, spec.seed)
    prefix = bos_prefix(model.tokenizer, model.adapter.adds_bos)
    chat = spec.chat and has_chat_template(model.tokenizer)

    def prompts(pairs: list[Pair]) -> list[PromptItem]:
        raw = zero_shot_prompts(model.tokenizer, spec.template, prefix, pairs)
        return raw + chat_prompts(model.tokenizer, pairs) if chat else raw

    return TrainingPrompts(prompts(train_pairs), prompts(holdout_pairs), len(train_pairs), len(holdout_pairs), chat)


def split_holdout(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Seeded train / hold-out split; both parts non-empty."""
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    n_holdout = min(max(1, round(len(shuffled) * fraction)), len(shuffled) - 1)
    return shuffled[n_holdout:], shuffled[:n_holdout]


def patience_over(spec: FinetuneSpec, epoch: int, best_epoch: int) -> bool:
    """Whether training stops after ``epoch``: ``spec.patience`` epochs since the best one, none better."""
    return spec.patience is not None and epoch - best_epoch >= spec.patience


def history_top1(top1: tuple[float, float], chat: bool) -> dict[str, float]:
    """An epoch record's hold-out top-1: ``holdout_top1`` on raw prompts, ``holdout_chat_top1`` on chat ones."""
    return {"holdout_top1": top1[0], **({"holdout_chat_top1": top1[1]} if chat else {})}


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
) -> TrainedCheckpoint:
    """Train a vector from ``init`` (e.g. the mediation FV of the same pairs); the model's weights never change."""
    adapter = model.adapter
    if not 0 <= spec.layer < adapter.n_layers:
        raise InvalidInput(f"layer {spec.layer} is outside the model's 0..{adapter.n_layers - 1}", param="layer")
    if init.shape != (adapter.d_model,):
        raise InvalidInput(
            f"init vector has shape {list(init.shape)}; the model needs [{adapter.d_model}]", param="init"
        )
    prompts = training_prompts(model, spec)
    train, holdout = prompts.train, prompts.holdout
    raw_holdout, chat_holdout = holdout[: prompts.n_holdout], holdout[prompts.n_holdout :]
    device = model_device(adapter)
    dtype = next(adapter.model.parameters()).dtype

    torch.manual_seed(spec.seed)
    start = init.detach().to(device, torch.float32).clone()
    vector = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.Adam([vector], lr=spec.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(spec.epochs, 1))

    def evaluate_holdout() -> tuple[tuple[float, float], float]:
        """Hold-out top-1 per form (raw, chat; 0 for an absent form) and the mean loss over every hold-out row."""
        with torch.no_grad():
            steered_by = vector.detach().to(dtype)
            raw_loss, raw_correct = _loss_and_correct(model, raw_holdout, spec.layer, steered_by)
            chat_loss, chat_correct = (_loss_and_correct(model, chat_holdout, spec.layer, steered_by) if chat_holdout
                                       else (torch.zeros(()), torch.zeros(())))
        top1 = (float(raw_correct) / len(raw_holdout), float(chat_correct) / max(1, len(chat_holdout)))
        return top1, (float(raw_loss) + float(chat_loss)) / len(holdout)

    chunks = [train[i : i + max(1, spec.chunk_size)] for i in range(0, len(train), max(1, spec.chunk_size))]

    def accumulate(chunk: list[PromptItem]) -> tuple[float, float]:
        """Add this chunk's share of the full-batch gradient: one short engine task, not one long one."""
        with torch.inference_mode(False), torch.enable_grad():
            loss, correct = _loss_and_correct(model, chunk, spec.layer, vector.to(dtype))
            # Gradient of the vector only: the model stays frozen even if its weights require grad.
            (grad,) = torch.autograd.grad(loss / len(train), [vector])
        vector.grad = grad if vector.grad is None else vector.grad + grad
        return float(loss.detach()), float(correct)

    def apply() -> tuple[tuple[float, float], float]:
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
        top1, holdout_loss = run(apply)
        return {"loss": sum(loss for loss, _ in parts) / len(train),
                "train_top1": sum(correct for _, correct in parts) / len(train),
                **history_top1(top1, prompts.chat), "holdout_loss": holdout_loss}

    before_top1, before_loss = run(evaluate_holdout)
    best, best_top1 = prompts.score(before_top1, before_loss), before_top1
    best_vector, best_epoch = start.clone(), 0
    history: list[dict[str, float]] = []
    for epoch in range(1, spec.epochs + 1):
        record = step()
        if not math.isfinite(record["loss"]):
            break
        history.append({"epoch": epoch, **record})
        top1 = (record["holdout_top1"], record.get("holdout_chat_top1", 0.0))
        score = prompts.score(top1, record["holdout_loss"])
        if score > best:
            best, best_top1, best_vector, best_epoch = score, top1, vector.detach().clone(), epoch
        report("training", epoch / spec.epochs, history[-1])
        if patience_over(spec, epoch, best_epoch):
            break
    return TrainedCheckpoint(best_vector.cpu(), best_epoch, history, before_top1[0], best_top1[0], prompts.n_train,
                          prompts.n_holdout, before_top1[1] if prompts.chat else None,
                          best_top1[1] if prompts.chat else None)
