"""Log-probability of a continuation after a prompt, optionally steered at the prompt's last token — the one
measurement behind relation scores (``log p(B | "Q: A\\nA:", vᵢ)``), multiple-choice answers and the unsteered
``"A : B :: C : D"`` baseline.

Rows are batched with left padding; each row may carry its own vector per layer. :func:`sequence_log_probs` is
differentiable so the analogy combiner can be fitted through the frozen model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedTokenizerBase

from app.fv.forward import model_device
from app.fv.ragged import added_at, captured_block_outputs, ragged_blocks, trim, variant_mask
from app.model.adapter import ModelAdapter
from app.model.runner import Runner, run_here
from app.model.steering import BatchSteering, steered


@dataclass(frozen=True)
class ScoreRow:
    prompt: str
    continuation: str  # scored as " " + continuation, the way an answer follows "A:" or ":"
    vectors: dict[int, Tensor] | None = None  # layer → vector added at the prompt's last token


@dataclass(frozen=True)
class EncodedRows:
    ids: Tensor  # [B, T] left-padded prompt + continuation
    mask: Tensor  # [B, T] attention mask
    steer_at: Tensor  # [B, T] bool: each row's last prompt token
    targets: Tensor  # [B, T] the token predicted at each position (shifted), 0 where not scored
    scored: Tensor  # [B, T] bool: positions whose next token belongs to the continuation


def encode_rows(tokenizer: PreTrainedTokenizerBase, rows: list[ScoreRow]) -> EncodedRows:
    prompts: list[list[int]] = [tokenizer(row.prompt).input_ids for row in rows]
    answers: list[list[int]] = [tokenizer(" " + row.continuation, add_special_tokens=False).input_ids for row in rows]
    width = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    steer_at = torch.zeros((len(rows), width), dtype=torch.bool)
    targets = torch.zeros((len(rows), width), dtype=torch.long)
    scored = torch.zeros((len(rows), width), dtype=torch.bool)
    for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        start = width - len(prompt) - len(answer)
        ids[row, start:] = torch.tensor(prompt + answer)
        mask[row, start:] = 1
        last_prompt = width - len(answer) - 1
        steer_at[row, last_prompt] = True
        targets[row, last_prompt : width - 1] = torch.tensor(answer)
        scored[row, last_prompt : width - 1] = True
    return EncodedRows(ids, mask, steer_at, targets, scored)


def stack_vectors(rows: list[ScoreRow], d_model: int) -> dict[int, Tensor]:
    """Per-layer ``[B, d_model]`` blocks of the rows' vectors (zeros where a row has none at that layer)."""
    layers = sorted({layer for row in rows if row.vectors for layer in row.vectors})
    blocks = {layer: torch.zeros(len(rows), d_model) for layer in layers}
    for index, row in enumerate(rows):
        for layer, vector in (row.vectors or {}).items():
            blocks[layer][index] = vector.float()
    return blocks


def sequence_log_probs(adapter: ModelAdapter, encoded: EncodedRows, vectors: dict[int, Tensor]) -> Tensor:
    """Summed log-probability of each row's continuation, with ``vectors[layer]`` (``[B, d]``) added at each
    row's last prompt token. Differentiable in ``vectors``."""
    device = model_device(adapter)
    mask = encoded.mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    steering = BatchSteering({layer: block.to(device) for layer, block in vectors.items()}, encoded.steer_at)
    with steered(adapter, steering if vectors else None):
        logits = adapter.model(input_ids=encoded.ids.to(device), attention_mask=mask, position_ids=positions).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, encoded.targets.to(device)[..., None])[..., 0]
    return (picked * encoded.scored.to(device)).sum(dim=-1)


def score_rows(
    adapter: ModelAdapter,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[ScoreRow],
    *,
    batch_size: int = 32,
    run: Runner[Tensor] = run_here,
) -> Tensor:
    """``log p(continuation | prompt, vectors)`` of every row, in order (no gradients)."""
    parts: list[Tensor] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]

        def forward(chunk: list[ScoreRow] = chunk) -> Tensor:
            with torch.inference_mode():
                encoded = encode_rows(tokenizer, chunk)
                return sequence_log_probs(adapter, encoded, stack_vectors(chunk, adapter.d_model)).cpu()

        parts.append(run(forward))
    return torch.cat(parts) if parts else torch.zeros(0)


def variant_log_probs(
    adapter: ModelAdapter,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    continuation: str,
    layers: list[int],
    vectors: Tensor,
) -> Tensor:
    """``[K]``: ``log p(" " + continuation | prompt)`` with ``vectors[k]`` added at block ``layers[k]`` at the
    prompt's last token — the K rows :func:`score_rows` would score, from one shared forward.

    Nothing before the prompt's last token depends on the vector, and nothing up to the lowest vector's block
    either (the continuation's tokens included). So one unsteered forward of the prompt and continuation fills the
    prefix cache and records each block's output over the last prompt token and the continuation; then one forward
    holds a group of those positions per vector (each group sees the prefix and itself, causally), run from the
    block above the lowest vector's (:mod:`app.fv.ragged`).
    """
    device = model_device(adapter)
    dtype = next(adapter.model.parameters()).dtype
    prompt_ids: list[int] = tokenizer(prompt).input_ids
    answer: list[int] = tokenizer(" " + continuation, add_special_tokens=False).input_ids
    steer_at = len(prompt_ids) - 1
    group = prompt_ids[steer_at:] + answer[:-1]  # the positions whose next token is the continuation's
    count = len(layers)
    cache = DynamicCache()
    outputs: list[Any] = [None] * adapter.n_layers
    with torch.inference_mode():
        with captured_block_outputs(adapter, outputs, len(group)):
            adapter.model(input_ids=torch.tensor([prompt_ids + answer[:-1]], device=device), past_key_values=cache,
                          use_cache=True, logits_to_keep=1)
        trim(cache, steer_at)
        width = count * len(group)
        starts = [k * len(group) for k in range(count)]
        try:
            with ragged_blocks(adapter, outputs, [min(layers) + 1] * width, steer_at), \
                    added_at(adapter, [(layer, start, vector) for layer, start, vector in zip(
                        layers, starts, vectors, strict=True)]):
                logits = adapter.model(
                    input_ids=torch.tensor([group * count], device=device),
                    attention_mask=variant_mask(torch.ones((1, steer_at), dtype=torch.long, device=device), width,
                                                dtype, group=len(group)),
                    position_ids=torch.arange(steer_at, steer_at + len(group), device=device).repeat(count)[None],
                    past_key_values=cache,
                    use_cache=True,
                ).logits[0].float()
        finally:
            trim(cache, steer_at)
    log_probs = torch.log_softmax(logits, dim=-1).reshape(count, len(group), -1)
    targets = torch.tensor(answer, device=log_probs.device)[None, :, None].expand(count, -1, 1)
    return log_probs.gather(2, targets)[..., 0].sum(dim=1).cpu()
