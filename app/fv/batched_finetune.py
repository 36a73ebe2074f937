"""Many fine-tuned function vectors trained at once (how ``make vectors`` builds the bank): per vector, the loss,
optimizer, schedule and checkpoint rule of :func:`app.fv.finetune.finetune`, for a fraction of the model work.

Two things make it fast, and neither changes what is computed:

- **The prompts' prefixes are run once.** The vector is added only at the last prompt token, and a causal model's
  earlier positions never see a later one, so every layer's keys and values of the first ``T − 1`` tokens are the
  same at every epoch; so is the last token's way up to the block the vector is added to. Both are computed once
  (:class:`PromptRows`); each epoch then runs one-token forwards over that cache from the block above the
  vector's (:mod:`app.fv.ragged`; a zero-shot prompt is ~8 tokens, so ~8× less work per row than a full forward,
  and a vector at block 9 of 30 skips another third of it).
- **K relations share each forward.** A row is steered by its own relation's vector, gathered from one
  ``[K, d_model]`` parameter, so per-op overhead is paid once for K vectors and the matmuls are larger.

Why it is the same training per vector: a relation's loss is the mean over its own training rows (not over the
mixed batch), and no other relation's rows reach its vector, so its gradient is the one it gets alone; Adam is
elementwise, so a ``[K, d_model]`` parameter steps like K separate ones; the L2 term is per vector; each relation
keeps its own best epoch by its own hold-out score. Training is full-batch and unshuffled, so no RNG is involved.
A relation whose loss stops being finite stops recording, as alone; its rows touch no other relation's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from app.errors import InvalidInput
from app.fv.answers import AnswerSets
from app.fv.finetune import (
    FinetuneSpec,
    TrainedCheckpoint,
    TrainingPrompts,
    history_top1,
    patience_over,
    training_prompts,
)
from app.fv.forward import model_device
from app.fv.prompts import PromptItem
from app.fv.ragged import cache_over, captured_block_outputs, kept_keys_values, ragged_blocks, trim
from app.model.adapter import ModelAdapter
from app.model.handle import ModelHandle
from app.model.steering import BatchSteering, steered

# Rows per one-token forward: all of a 27-relation bank's hold-out rows fit in one (benchmarks/bank_build.py).
ROWS_PER_FORWARD = 512
EpochReport = Callable[[int, int], None]


@dataclass(frozen=True)
class PromptRows:
    """Prompts whose first ``T − 1`` tokens are already run: what a one-token forward of their last tokens needs.

    Rows are left-padded (the project's convention), so every row's last token is the single new position.
    """

    keys_values: list[tuple[Tensor, Tensor]]  # per layer, [rows, kv_heads, width − 1, head_dim]
    outputs: list[Any]  # per block, its unsteered output at the last token ([rows, 1, d_model], in the block's form)
    mask: Tensor  # [rows, width]: the prefix's attention mask, then 1 for the last token
    last: Tensor  # [rows, 1] the last token ids
    positions: Tensor  # [rows, 1] the last token's position id
    answers: AnswerSets  # per row, the accepted answers' first tokens
    relation: Tensor  # [rows] index of the row's relation (its vector)
    form: Tensor  # [rows] 0 for a raw prompt, 1 for a chat-rendered one

    def select(self, keep: Tensor) -> PromptRows:
        """Only the rows ``keep`` (indices, in order): what is left when some relations have stopped training."""
        def rows_of(output: Any) -> Any:
            if isinstance(output, tuple):
                return (rows_of(output[0]), *output[1:])
            return output[keep]

        return PromptRows([(keys[keep], values[keep]) for keys, values in self.keys_values],
                          [rows_of(output) for output in self.outputs], self.mask[keep], self.last[keep],
                          self.positions[keep], self.answers.take(keep), self.relation[keep], self.form[keep])


def encode_rows(model: ModelHandle, items: list[PromptItem], relation: list[int], form: list[int] | None = None
                ) -> PromptRows:
    """Run ``items`` once: keep the KV cache of their prefixes (all tokens but the last) and every block's output at
    the last token."""
    adapter, device = model.adapter, model_device(model.adapter)
    encoded: list[list[int]] = [model.tokenizer(item.text).input_ids for item in items]
    if min(len(ids) for ids in encoded) < 2:
        raise InvalidInput("a training prompt must be at least two tokens long", param="pairs")
    width = max(len(ids) for ids in encoded)
    pad = int(model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        mask[row, width - len(tokens) :] = 1
    cache = DynamicCache()
    outputs: list[Any] = [None] * adapter.n_layers
    with torch.no_grad(), captured_block_outputs(adapter, outputs):  # no_grad, not inference_mode: the cache and
        adapter.model(input_ids=ids.to(device), attention_mask=mask.to(device),  # outputs join autograd epochs
                      position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device),
                      past_key_values=cache, use_cache=True, logits_to_keep=1)
    trim(cache, width - 1)
    return PromptRows(
        keys_values=kept_keys_values(cache),
        outputs=outputs,
        mask=mask.to(device),
        last=torch.tensor([[tokens[-1]] for tokens in encoded], device=device),
        positions=torch.tensor([[len(tokens) - 1] for tokens in encoded], device=device),
        answers=AnswerSets.of([item.answer_tokens for item in items], device),
        relation=torch.tensor(relation, device=device),
        form=torch.tensor(form if form is not None else [0] * len(items), device=device),
    )


def last_token_logits_cached(adapter: ModelAdapter, rows: PromptRows, vectors: dict[int, Tensor]) -> Tensor:
    """Last-position logits of ``rows``, ``vectors[layer]`` (``[rows, d_model]``) added at block ``layer``; blocks up to
    the lowest such layer give their recorded unsteered output instead of running."""
    cache = cache_over(rows.keys_values)
    positions = torch.ones(rows.last.shape, dtype=torch.bool)
    entry = min(vectors, default=adapter.n_layers - 1) + 1
    prefix = rows.mask.shape[1] - 1
    with ragged_blocks(adapter, rows.outputs, [entry], prefix), steered(adapter, BatchSteering(vectors, positions)):
        out = adapter.model(input_ids=rows.last, attention_mask=rows.mask, position_ids=rows.positions,
                            past_key_values=cache, use_cache=True, logits_to_keep=1)
    # One position per row (logits_to_keep=1): squeezed, not indexed — the backward of an index allocates and
    # zero-fills the whole [rows, 1, vocab] logits (~100 MB at 500 rows) every epoch; a squeeze's is a view.
    logits: Tensor = out.logits.squeeze(1).float()
    return logits


def _check_shared(specs: list[FinetuneSpec]) -> None:
    """One optimizer and one schedule step every vector: epochs, lr and l2 must agree."""
    first = specs[0]
    for spec in specs[1:]:
        for name in ("epochs", "lr", "l2"):
            if getattr(spec, name) != getattr(first, name):
                raise InvalidInput(f"vectors trained together need the same {name}", param=name)


class _Batch:
    """The rows of every relation (training and hold-out), chunked for forwards, and the per-relation tallies."""

    def __init__(self, model: ModelHandle, specs: list[FinetuneSpec], rows_per_forward: int) -> None:
        self.model, self.specs = model, specs
        self.prompts: list[TrainingPrompts] = [training_prompts(model, spec) for spec in specs]
        train = [(item, index, form) for index, prompts in enumerate(self.prompts)
                 for item, form in zip(prompts.train, prompts.train_forms(), strict=True)]
        holdout = [(item, index, form) for index, prompts in enumerate(self.prompts)
                   for item, form in zip(prompts.holdout, prompts.holdout_forms(), strict=True)]
        device = model_device(model.adapter)
        self.train = self._chunks(train, rows_per_forward)
        self.holdout = self._chunks(holdout, rows_per_forward)
        self.layers = torch.tensor([spec.layer for spec in specs], device=device)
        # Each relation's loss is the mean over its own training rows, as when trained alone.
        self.train_weight = 1.0 / torch.tensor([len(p.train) for p in self.prompts], dtype=torch.float32,
                                               device=device)

    def _chunks(self, rows: list[tuple[PromptItem, int, int]], size: int) -> list[PromptRows]:
        """Rows sorted by length so that a chunk pads little, then cut into forwards of ``size`` rows."""
        tokenizer = self.model.tokenizer
        ordered = sorted(rows, key=lambda row: len(tokenizer(row[0].text).input_ids))
        return [encode_rows(self.model, [item for item, _, _ in part], [index for _, index, _ in part],
                            [form for _, _, form in part])
                for part in (ordered[i : i + size] for i in range(0, len(ordered), max(1, size)))]

    def stop(self, relations: set[int]) -> None:
        """Drop the rows of ``relations`` (they stopped early): later epochs run only the others'."""
        def kept(chunks: list[PromptRows]) -> list[PromptRows]:
            out = []
            for rows in chunks:
                keep = torch.nonzero(~torch.isin(rows.relation, torch.tensor(sorted(relations),
                                                                             device=rows.relation.device))).flatten()
                if len(keep) == len(rows.relation):
                    out.append(rows)
                elif len(keep):
                    out.append(rows.select(keep))
            return out

        self.train, self.holdout = kept(self.train), kept(self.holdout)

    def row_vectors(self, vectors: Tensor, rows: PromptRows) -> dict[int, Tensor]:
        """Each row's own vector at its relation's layer (zero at the others: adding 0 changes nothing)."""
        gathered = vectors[rows.relation]
        row_layers = self.layers[rows.relation]
        return {int(layer): gathered * (row_layers == layer)[:, None].to(gathered.dtype)
                for layer in torch.unique(row_layers)}

    def tally(self, chunks: list[PromptRows], vectors: Tensor, dtype: torch.dtype,
              with_grad: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Per relation: summed loss (``−log Σ p`` of the accepted answers) and number right per prompt form
        (``[k, 2]``: raw, chat) over ``chunks``; ``with_grad``: also the gradient of every relation's mean training loss
        with respect to ``vectors``."""
        k = len(self.specs)
        device = vectors.device
        losses, correct = torch.zeros(k, device=device), torch.zeros(2 * k, device=device)
        grad: Tensor | None = None
        for rows in chunks:
            with torch.inference_mode(False), torch.set_grad_enabled(with_grad):
                steering = self.row_vectors(vectors.to(dtype), rows)
                logits = last_token_logits_cached(self.model.adapter, rows, steering)
                loss = rows.answers.loss(logits)
                if with_grad:
                    # Each relation's rows weigh 1/n_train of that relation: its mean, as when trained alone.
                    (part,) = torch.autograd.grad((loss * self.train_weight[rows.relation]).sum(), [vectors])
                    grad = part if grad is None else grad + part
            losses.index_add_(0, rows.relation, loss.detach())
            correct.index_add_(0, rows.relation * 2 + rows.form, rows.answers.correct(logits.detach()).float())
        return losses, correct.reshape(k, 2), grad


def finetune_many(
    model: ModelHandle,
    specs: list[FinetuneSpec],
    inits: list[Tensor],
    *,
    rows_per_forward: int = ROWS_PER_FORWARD,
    report: EpochReport = lambda epoch, epochs: None,
) -> list[TrainedCheckpoint]:
    """Train one vector per spec from its init, all at once; result ``i`` is what ``finetune(model, specs[i],
    inits[i])`` gives, to float rounding (``chunk_size`` is not used: ``rows_per_forward`` mixes relations)."""
    adapter = model.adapter
    if not specs or len(specs) != len(inits):
        raise InvalidInput("one init vector per spec, at least one spec", param="inits")
    _check_shared(specs)
    for spec, init in zip(specs, inits, strict=True):
        if not 0 <= spec.layer < adapter.n_layers:
            raise InvalidInput(f"layer {spec.layer} is outside the model's 0..{adapter.n_layers - 1}", param="layer")
        if init.shape != (adapter.d_model,):
            raise InvalidInput(f"init vector has shape {list(init.shape)}; the model needs [{adapter.d_model}]",
                               param="init")
    batch = _Batch(model, specs, rows_per_forward)
    device, dtype = model_device(adapter), next(adapter.model.parameters()).dtype
    epochs, lr, l2 = specs[0].epochs, specs[0].lr, specs[0].l2

    start = torch.stack([init.detach().to(device, torch.float32) for init in inits])
    vectors = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.Adam([vectors], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    prompts = batch.prompts
    train_rows = torch.tensor([len(p.train) for p in prompts], dtype=torch.float64)
    holdout_rows = torch.tensor([len(p.holdout) for p in prompts], dtype=torch.float64)
    form_rows = torch.tensor([[p.n_holdout, max(1, len(p.holdout) - p.n_holdout)] for p in prompts],
                             dtype=torch.float64)

    def evaluate_holdout() -> tuple[list[tuple[float, float]], list[float]]:
        """Per relation, hold-out top-1 per form (raw, chat; 0 for an absent form) and the mean hold-out loss."""
        with torch.no_grad():
            losses, correct, _ = batch.tally(batch.holdout, vectors.detach(), dtype)
        top1 = (correct.double().cpu() / form_rows).tolist()
        return [(raw, chat) for raw, chat in top1], (losses.double().cpu() / holdout_rows).tolist()

    before, before_loss = evaluate_holdout()
    best = [p.score(top1, loss) for p, top1, loss in zip(prompts, before, before_loss, strict=True)]
    best_top1 = list(before)
    best_vectors, best_epochs = start.clone(), [0] * len(specs)
    histories: list[list[dict[str, float]]] = [[] for _ in specs]
    running = [True] * len(specs)
    for epoch in range(1, epochs + 1):
        optimizer.zero_grad(set_to_none=True)
        losses, correct, grad = batch.tally(batch.train, vectors, dtype, with_grad=True)
        assert grad is not None
        with torch.inference_mode(False), torch.enable_grad():
            (penalty,) = torch.autograd.grad(l2 * (vectors - start).pow(2).sum(), [vectors])
        vectors.grad = grad + penalty
        optimizer.step()
        schedule.step()
        holdout_top1, holdout_loss = evaluate_holdout()
        train_loss = (losses.double().cpu() / train_rows).tolist()
        train_top1 = (correct.sum(dim=1).double().cpu() / train_rows).tolist()
        stopped: set[int] = set()
        for index in range(len(specs)):
            if not running[index]:
                continue
            if not math.isfinite(train_loss[index]):
                running[index] = False
                stopped.add(index)
                continue
            histories[index].append({"epoch": epoch, "loss": train_loss[index], "train_top1": train_top1[index],
                                     **history_top1(holdout_top1[index], prompts[index].chat),
                                     "holdout_loss": holdout_loss[index]})
            score = prompts[index].score(holdout_top1[index], holdout_loss[index])
            if score > best[index]:
                best[index], best_top1[index], best_epochs[index] = score, holdout_top1[index], epoch
                best_vectors[index] = vectors.detach()[index].clone()
            if patience_over(specs[index], epoch, best_epochs[index]):
                running[index] = False
                stopped.add(index)
        report(epoch, epochs)
        if not any(running):
            break
        if stopped:
            batch.stop(stopped)
    return [TrainedCheckpoint(best_vectors[index].cpu().clone(), best_epochs[index], histories[index], before[index][0],
                           best_top1[index][0], p.n_train, p.n_holdout, before[index][1] if p.chat else None,
                           best_top1[index][1] if p.chat else None)
            for index, p in enumerate(prompts)]
