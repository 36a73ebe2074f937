"""Log-probabilities of the tokens of a sequence under the (optionally steered) model: what scoring, ``echo`` and
``/score`` report.

Two steering policies, both the FV policy applied to a sequence that is not being generated:

- :func:`sequence_logprobs` adds the composite at every position from ``steer_from`` on, in one forward: with
  ``steer_from`` = the prompt's last token this is exactly what generating the continuation would do (the vector
  at the last prompt token and at each generated token); with 0 it is ``positions: "all"``.
- :func:`next_token_logprobs` scores each token as the *first* token steered generation would produce after the
  text before it: ``log p(x_t | x_<t)`` with the vector at position ``t-1`` only. A server that sees one sequence
  without knowing where a context ends (``echo`` scoring) can honour the FV policy this way. It costs two forwards,
  not one per token: an unsteered pass fills the KV cache, then a steered pass in which each position attends to
  the unsteered keys and values before it and to its own steered ones (a custom 4-D attention mask).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache

from app.model.adapter import ModelAdapter
from app.model.steering import BatchSteering, steered
from app.model.tokens import TokenLogprob

MAX_TOKENS_PER_FORWARD = 8192  # rows × width of one scoring forward: bounds the [rows, width, vocab] logits


def _device(adapter: ModelAdapter) -> torch.device:
    return next(adapter.model.parameters()).device


def picked_logprobs(log_probs: Tensor, targets: list[int], top_k: int) -> list[TokenLogprob]:
    """Each row of ``log_probs`` (``[len(targets), vocab]``) read at its target, with the ``top_k`` best."""
    chosen = log_probs.gather(-1, torch.tensor(targets, device=log_probs.device)[:, None])[:, 0].tolist()
    if top_k <= 0:
        return [TokenLogprob(t, lp) for t, lp in zip(targets, chosen, strict=True)]
    values, ids = log_probs.topk(top_k, dim=-1)
    return [
        TokenLogprob(t, lp, tuple(zip(row_ids, row_values, strict=True)))
        for t, lp, row_ids, row_values in zip(targets, chosen, ids.tolist(), values.tolist(), strict=True)
    ]


@torch.inference_mode()
def sequence_logprobs(
    adapter: ModelAdapter,
    rows: list[list[int]],
    steer_from: list[int],
    vectors: dict[int, Tensor] | None,
    top_k: int = 0,
) -> list[list[TokenLogprob]]:
    """For each row of token ids, ``log p(x_t | x_<t)`` for ``t = 1 … len-1`` (the first token has no prediction),
    with ``vectors[layer]`` (``[d_model]``, the same composite for every row) added at positions ``≥ steer_from``
    of its row (``len(row)`` or more: unsteered). Rows are batched with left padding."""
    results: list[list[TokenLogprob]] = []
    start = 0
    while start < len(rows):
        stop = start + 1
        while stop < len(rows) and (stop + 1 - start) * max(map(len, rows[start : stop + 1])) <= MAX_TOKENS_PER_FORWARD:
            stop += 1
        results += _sequence_batch(adapter, rows[start:stop], steer_from[start:stop], vectors, top_k)
        start = stop
    return results


def _sequence_batch(
    adapter: ModelAdapter, rows: list[list[int]], steer_from: list[int], vectors: dict[int, Tensor] | None, top_k: int
) -> list[list[TokenLogprob]]:
    device = _device(adapter)
    width = max(map(len, rows))
    # Right padding: every row starts at position 0 and causal attention never reaches the padding after it, so
    # no attention mask is needed and each row is computed as it would be alone.
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    at = torch.zeros((len(rows), width), dtype=torch.bool)
    for index, (row, first) in enumerate(zip(rows, steer_from, strict=True)):
        ids[index, : len(row)] = torch.tensor(row)
        at[index, max(first, 0) : len(row)] = True
    steering = None
    if vectors:
        blocks = {layer: vector.float()[None, :].expand(len(rows), -1).to(device) for layer, vector in vectors.items()}
        steering = BatchSteering(blocks, at)
    with steered(adapter, steering):
        logits = adapter.model(input_ids=ids.to(device)).logits
    out: list[list[TokenLogprob]] = []
    for index, row in enumerate(rows):
        if len(row) < 2:
            out.append([])
            continue
        log_probs = torch.log_softmax(logits[index, : len(row) - 1].float(), dim=-1)
        out.append(picked_logprobs(log_probs, row[1:], top_k))
    return out


@torch.inference_mode()
def next_token_logprobs(
    adapter: ModelAdapter, row: list[int], vectors: dict[int, Tensor], top_k: int = 0
) -> list[TokenLogprob]:
    """``log p(x_t | x_<t)`` for ``t = 1 … len-1``, each with the vector added at position ``t-1`` only — as if
    ``x_<t`` were the prompt and steered generation were asked for its first token."""
    if len(row) < 2:
        return []
    device = _device(adapter)
    n = len(row)
    ids = torch.tensor([row], device=device)
    positions = torch.arange(n, device=device)[None, :]
    cache = DynamicCache()
    adapter.model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
    dtype = next(adapter.model.parameters()).dtype
    # Query i sees the unsteered keys of positions < i (the cache) and its own steered key (column n + i).
    allowed = torch.zeros((n, 2 * n), dtype=torch.bool, device=device)
    allowed[:, :n] = torch.ones((n, n), dtype=torch.bool, device=device).tril(-1)
    allowed[:, n:] = torch.eye(n, dtype=torch.bool, device=device)
    bias = torch.zeros((n, 2 * n), dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    blocks = {layer: vector.float()[None, :].to(device) for layer, vector in vectors.items()}
    steering = BatchSteering(blocks, torch.ones((1, n), dtype=torch.bool))
    with steered(adapter, steering):
        logits = adapter.model(input_ids=ids, position_ids=positions, past_key_values=cache,
                               attention_mask=bias[None, None], use_cache=True).logits
    log_probs = torch.log_softmax(logits[0, : n - 1].float(), dim=-1)
    return picked_logprobs(log_probs, row[1:], top_k)
