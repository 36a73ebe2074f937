"""The layer sweep: zero-shot top-1 (and the answers' mean log-probability) with one vector added at each
candidate layer, for every layer in one pass over the prompts.

The vector is added to the output of block ``L`` at the last prompt token (the FV policy of
:mod:`app.model.steering`), so nothing before the last token changes and nothing up to block ``L`` either. One
unpatched forward of the prompts fills their prefix caches, records each block's last-token output and gives the
unsteered ranks; then one forward of a copy of the last token per layer (:mod:`app.fv.ragged`) runs the copy for
layer ``L`` only from block ``L + 1`` up, with the vector added to block ``L``'s recorded output. The numbers are
those of one steered forward per layer (:func:`app.fv.evaluation.ranks_of_answers`), in ~1/15 of the time on
the embedded model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedTokenizerBase

from app.fv.answers import AnswerSets
from app.fv.forward import encode_left_padded, model_device
from app.fv.prompts import PromptItem
from app.fv.ragged import added_at, captured_block_outputs, ragged_blocks, trim, variant_mask
from app.model.adapter import ModelAdapter
from app.model.runner import Runner, run_here

# Prompts per pass: each holds a copy of its last token per swept layer, and the logits of all of them.
SWEEP_BATCH = 16


@dataclass(frozen=True)
class SweepScores:
    """Per swept layer, zero-shot top-1 and the answers' mean log-probability with the vector there; top-1 without."""

    top1: dict[int, float]
    log_prob: dict[int, float]
    baseline_top1: float


def _batch_ranks(
    adapter: ModelAdapter, tokenizer: PreTrainedTokenizerBase, items: list[PromptItem], vector: Tensor,
    layers: list[int],
) -> tuple[Tensor, Tensor, Tensor]:
    """(unsteered ranks ``[B]``, steered ranks ``[B, L]``, steered answer log-probs ``[B, L]``) for ``layers``
    ascending."""
    device = model_device(adapter)
    dtype = next(adapter.model.parameters()).dtype
    ids, mask = encode_left_padded(tokenizer, [item.text for item in items], device)
    answers = AnswerSets.of([item.answer_tokens for item in items], device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    outputs: list[Any] = [None] * adapter.n_layers
    with torch.inference_mode():
        with captured_block_outputs(adapter, outputs):
            plain = adapter.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                                  use_cache=True, logits_to_keep=1).logits[:, -1].float()
        prefix = ids.shape[1] - 1
        trim(cache, prefix)
        width = len(layers)
        try:
            with ragged_blocks(adapter, outputs, [layer + 1 for layer in layers], prefix), \
                    added_at(adapter, [(layer, position, vector) for position, layer in enumerate(layers)]):
                logits = adapter.model(
                    input_ids=ids[:, -1:].expand(-1, width),
                    attention_mask=variant_mask(mask[:, :-1], width, dtype),
                    position_ids=positions[:, -1:].expand(-1, width),
                    past_key_values=cache,
                    use_cache=True,
                ).logits.float()
        finally:
            trim(cache, prefix)
    base_ranks = answers.rank(plain)
    rows = torch.arange(len(items), device=device).repeat_interleave(width)  # row-major: item, then layer
    flat = logits.reshape(len(items) * width, -1)
    per_layer = answers.take(rows)
    ranks = per_layer.rank(flat).reshape(len(items), width)
    log_probs = per_layer.log_prob(flat).reshape(len(items), width)
    return base_ranks.cpu(), ranks.cpu(), log_probs.cpu()


def sweep_layers(
    adapter: ModelAdapter,
    tokenizer: PreTrainedTokenizerBase,
    items: list[PromptItem],
    vector: Tensor,
    layers: list[int],
    *,
    batch_size: int = SWEEP_BATCH,
    run: Runner[Any] = run_here,
    on_batch: Callable[[int, int], None] | None = None,
) -> SweepScores:
    """Top-1 and mean answer log-probability on ``items`` with ``vector`` at each of ``layers``, and top-1 without."""
    if not items:
        raise ValueError("the layer sweep needs at least one prompt")
    order = sorted(set(layers))
    base: list[Tensor] = []
    ranks: list[Tensor] = []
    log_probs: list[Tensor] = []
    starts = range(0, len(items), batch_size)
    for index, start in enumerate(starts):
        chunk = items[start : start + batch_size]
        got: tuple[Tensor, Tensor, Tensor] = run(functools.partial(_batch_ranks, adapter, tokenizer, chunk, vector,
                                                                   order))
        base.append(got[0])
        ranks.append(got[1])
        log_probs.append(got[2])
        if on_batch is not None:
            on_batch(index + 1, len(starts))
    all_ranks, all_log_probs = torch.cat(ranks), torch.cat(log_probs)
    column = {layer: order.index(layer) for layer in layers}
    return SweepScores(
        top1={layer: float((all_ranks[:, column[layer]] < 1).float().mean()) for layer in layers},
        log_prob={layer: float(all_log_probs[:, column[layer]].mean()) for layer in layers},
        baseline_top1=float((torch.cat(base) < 1).float().mean()),
    )
