"""Continuation rows whose unsteered part is run once: what the combiner's fit scores over and over
(``log p(D | "Q: C\\nA:", Σ wᵢ vᵢ)`` for the same analogies at every grid point, step and epoch, with new weights).

The composite is added at the prompt's last token, at one block or a few. Nothing before that token depends on it,
and no position's way up to the lowest steered block does either. So :func:`prefixed_rows` runs the rows once,
unsteered, and keeps the KV cache of every prompt's first ``T − 1`` tokens and, for the blocks below the entry,
their outputs over the *group* — the last prompt token and the continuation's tokens but the last, the positions
whose next token is scored. :func:`prefixed_log_probs` then runs only the group, from the block above the lowest
steered one (:mod:`app.fv.ragged`), which on the embedded model is ~4× fewer positions and a third fewer blocks
than :func:`app.analogy.continuations.sequence_log_probs`, and gives the same numbers (to float rounding) and gradients.

Layout: prompts are left-padded so that every row's last prompt token sits in the same column; the group follows,
right-padded (a padding position is masked as a key and never scored, and a causal model's real positions never
look at the later padding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedTokenizerBase

from app.analogy.continuations import ScoreRow
from app.errors import InvalidInput
from app.fv.forward import model_device
from app.fv.ragged import cache_over, captured_block_outputs, kept_keys_values, ragged_blocks, trim
from app.model.adapter import ModelAdapter
from app.model.steering import BatchSteering, steered

# Rows per unsteered forward when the rows are first run (bounds the activations held at once).
PREFIX_BATCH = 64


@dataclass(frozen=True)
class PrefixedRows:
    """Rows run once up to the steered block; every tensor's first dimension is the row."""

    entry: int  # the first block the group runs (the one above the lowest steered block)
    keys_values: list[tuple[Tensor, Tensor]]  # per layer, [rows, kv_heads, prefix, head_dim]
    outputs: list[Any]  # per block below ``entry``: its unsteered output over the group ([rows, G, d], in the block's
    # own form: a tensor, or a tuple led by one); None above
    prefix_mask: Tensor  # [rows, prefix]: 0 on the left padding
    group_ids: Tensor  # [rows, G]: the last prompt token, then the continuation's tokens but the last
    group_mask: Tensor  # [rows, G]: 0 on the right padding
    positions: Tensor  # [rows, G] position ids of the group
    targets: Tensor  # [rows, G]: the continuation's tokens (0 on padding)

    def __len__(self) -> int:
        return int(self.group_ids.shape[0])

    def select(self, index: Tensor | slice) -> PrefixedRows:
        """The rows ``index`` (a 1-D tensor of row numbers, in that order; or a slice, which copies nothing)."""
        return PrefixedRows(
            self.entry,
            [(keys[index], values[index]) for keys, values in self.keys_values],
            [None if output is None else _map_hidden(output, lambda hidden: hidden[index]) for output in self.outputs],
            self.prefix_mask[index], self.group_ids[index], self.group_mask[index], self.positions[index],
            self.targets[index],
        )


def _map_hidden(output: Any, change: Callable[[Tensor], Tensor]) -> Any:
    """A block's output (a tensor, or a tuple led by its hidden states) with ``change`` applied to the hidden states."""
    if isinstance(output, tuple):
        return (change(output[0]), *output[1:])
    return change(output)


def _joined(parts: list[Any]) -> Any:
    """One block's outputs of successive row batches, as one (the hidden states concatenated by row)."""
    hidden = torch.cat([part[0] if isinstance(part, tuple) else part for part in parts])
    return _map_hidden(parts[0], lambda _: hidden)


def prefixed_rows(
    adapter: ModelAdapter, tokenizer: PreTrainedTokenizerBase, rows: list[ScoreRow], lowest_layer: int,
    *, batch_size: int = PREFIX_BATCH,
) -> PrefixedRows:
    """Run ``rows`` (prompt and continuation; their ``vectors`` are not used) once, unsteered, for scoring with
    vectors added at block ``lowest_layer`` or above."""
    if not rows:
        raise InvalidInput("no rows to score", param="rows")
    if not 0 <= lowest_layer < adapter.n_layers:
        raise InvalidInput(f"layer {lowest_layer} is outside the model's 0..{adapter.n_layers - 1}", param="layer")
    prompts: list[list[int]] = [tokenizer(row.prompt).input_ids for row in rows]
    answers: list[list[int]] = [tokenizer(" " + row.continuation, add_special_tokens=False).input_ids
                                for row in rows]
    if min(len(ids) for ids in prompts) < 2 or min(len(ids) for ids in answers) < 1:
        raise InvalidInput("a row needs a prompt of at least two tokens and a continuation", param="rows")
    prefix = max(len(ids) for ids in prompts) - 1
    group = max(len(ids) for ids in answers)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    ids = torch.full((len(rows), prefix + group), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), prefix + group), dtype=torch.long)
    targets = torch.zeros((len(rows), group), dtype=torch.long)
    positions = torch.zeros((len(rows), group), dtype=torch.long)
    for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        tokens = prompt + answer[:-1]
        start = prefix + 1 - len(prompt)
        ids[row, start : start + len(tokens)] = torch.tensor(tokens)
        mask[row, start : start + len(tokens)] = 1
        targets[row, : len(answer)] = torch.tensor(answer)
        positions[row] = torch.arange(len(prompt) - 1, len(prompt) - 1 + group)
    prefix_positions = (mask[:, :prefix].cumsum(-1) - 1).clamp(min=0)

    device = model_device(adapter)
    entry = lowest_layer + 1
    keys_values: list[list[tuple[Tensor, Tensor]]] = []
    outputs: list[list[Any]] = [[] for _ in range(entry)]
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        cache = DynamicCache()
        recorded: list[Any] = [None] * adapter.n_layers
        with torch.no_grad(), captured_block_outputs(adapter, recorded, group):
            adapter.model(input_ids=ids[part].to(device), attention_mask=mask[part].to(device),
                          position_ids=torch.cat([prefix_positions[part], positions[part]], dim=1).to(device),
                          past_key_values=cache, use_cache=True, logits_to_keep=1)
        trim(cache, prefix)
        keys_values.append(kept_keys_values(cache))
        for block in range(entry):
            outputs[block].append(recorded[block])
    return PrefixedRows(
        entry=entry,
        keys_values=[(torch.cat([part[block][0] for part in keys_values]),
                      torch.cat([part[block][1] for part in keys_values])) for block in range(len(keys_values[0]))],
        outputs=[_joined(outputs[block]) if block < entry else None for block in range(adapter.n_layers)],
        prefix_mask=mask[:, :prefix].to(device),
        group_ids=ids[:, prefix:].to(device),
        group_mask=mask[:, prefix:].to(device),
        positions=positions.to(device),
        targets=targets.to(device),
    )


def prefixed_log_probs(adapter: ModelAdapter, rows: PrefixedRows, vectors: dict[int, Tensor]) -> Tensor:
    """``[rows]``: each row's summed continuation log-probability with ``vectors[layer]`` (``[rows, d]``) added at
    block ``layer`` at the row's last prompt token; differentiable in ``vectors``. Every layer must be at or
    above the one the rows were prepared for."""
    if vectors and min(vectors) < rows.entry - 1:
        raise InvalidInput(f"these rows were run up to block {rows.entry - 1}; a vector at block {min(vectors)} "
                           "needs rows prepared for it", param="layer")
    cache = cache_over(rows.keys_values)
    group = rows.group_ids.shape[1]
    at_steer = torch.zeros(rows.group_ids.shape, dtype=torch.bool)
    at_steer[:, 0] = True
    prefix = rows.prefix_mask.shape[1]
    with ragged_blocks(adapter, rows.outputs, [rows.entry] * group, prefix), \
            steered(adapter, BatchSteering(vectors, at_steer) if vectors else None):
        logits = adapter.model(input_ids=rows.group_ids,
                               attention_mask=torch.cat([rows.prefix_mask, rows.group_mask], dim=1),
                               position_ids=rows.positions, past_key_values=cache, use_cache=True).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, rows.targets[..., None])[..., 0]
    return (picked * rows.group_mask.to(picked.dtype)).sum(dim=-1)
