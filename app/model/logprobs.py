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

from functools import partial
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from app.model.adapter import ModelAdapter
from app.model.runner import Runner, run_here
from app.model.steering import BatchSteering, steered
from app.model.tokens import TokenLogprob

MAX_TOKENS_PER_BATCH = 8192  # rows × width of one batch of scored rows (they share a KV cache)
CHUNK_TOKENS = 64  # rows × positions of one forward: the slice the engine's time share interleaves with decoding


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


def sequence_logprobs(
    adapter: ModelAdapter,
    rows: list[list[int]],
    steer_from: list[int],
    vectors: dict[int, Tensor] | None,
    top_k: int = 0,
    run: Runner[Any] = run_here,
    chunk_tokens: int = CHUNK_TOKENS,
) -> list[list[TokenLogprob]]:
    """For each row of token ids, ``log p(x_t | x_<t)`` for ``t = 1 … len-1`` (the first token has no prediction),
    with ``vectors[layer]`` (``[d_model]``, the same composite for every row) added at positions ``≥ steer_from``
    of its row (``len(row)`` or more: unsteered).

    Rows are batched (right padding) and each batch goes through the model in slices of about ``chunk_tokens``
    tokens, its KV cache carried from slice to slice: each slice is one ``run(...)``, so the server's engine
    interleaves decoding between them and a caller that has gone stops at the next slice (``offload``)."""
    results: list[list[TokenLogprob]] = []
    start = 0
    while start < len(rows):
        stop = start + 1
        while stop < len(rows) and (stop + 1 - start) * max(map(len, rows[start : stop + 1])) <= MAX_TOKENS_PER_BATCH:
            stop += 1
        results += _sequence_batch(adapter, rows[start:stop], steer_from[start:stop], vectors, top_k, run,
                                   chunk_tokens)
        start = stop
    return results


def _sequence_batch(
    adapter: ModelAdapter, rows: list[list[int]], steer_from: list[int], vectors: dict[int, Tensor] | None,
    top_k: int, run: Runner[Any], chunk_tokens: int,
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
    blocks = None
    if vectors:
        blocks = {layer: vector.float()[None, :].expand(len(rows), -1).to(device) for layer, vector in vectors.items()}
    cache = DynamicCache()
    out: list[list[TokenLogprob]] = [[] for _ in rows]
    step = max(1, chunk_tokens // len(rows))

    @torch.inference_mode()
    def forward(begin: int, end: int) -> list[list[TokenLogprob]]:
        steering = None if blocks is None else BatchSteering(blocks, at[:, begin:end])
        with steered(adapter, steering):
            logits = adapter.model(input_ids=ids[:, begin:end].to(device), past_key_values=cache, use_cache=True,
                                   position_ids=torch.arange(begin, end, device=device)[None, :]).logits
        scored: list[list[TokenLogprob]] = []
        for index, row in enumerate(rows):
            last = min(end, len(row) - 1)  # positions that predict a token of the row
            if last <= begin:
                scored.append([])
                continue
            log_probs = torch.log_softmax(logits[index, : last - begin].float(), dim=-1)
            scored.append(picked_logprobs(log_probs, row[begin + 1 : last + 1], top_k))
        return scored

    for begin in range(0, width, step):
        for index, piece in enumerate(run(partial(forward, begin, min(begin + step, width)))):
            out[index] += piece
    return out


def next_token_logprobs(
    adapter: ModelAdapter, row: list[int], vectors: dict[int, Tensor], top_k: int = 0, run: Runner[Any] = run_here,
    chunk_tokens: int = CHUNK_TOKENS,
) -> list[TokenLogprob]:
    """``log p(x_t | x_<t)`` for ``t = 1 … len-1``, each with the vector added at position ``t-1`` only — as if
    ``x_<t`` were the prompt and steered generation were asked for its first token.

    Two passes, each in slices of ``chunk_tokens`` (one ``run(...)`` each, as in :func:`sequence_logprobs`): an
    unsteered one fills the KV cache; then a steered one in which query ``i`` attends to the unsteered keys of
    positions ``< i`` and to its own steered key only (a custom 4-D mask; the steered keys of earlier slices, also
    in the cache, are masked out)."""
    if len(row) < 2:
        return []
    device = _device(adapter)
    n = len(row)
    ids = torch.tensor([row], device=device)
    cache = DynamicCache()
    dtype = next(adapter.model.parameters()).dtype
    blocks = {layer: vector.float()[None, :].to(device) for layer, vector in vectors.items()}

    @torch.inference_mode()
    def fill(begin: int, end: int) -> None:
        adapter.model(input_ids=ids[:, begin:end], position_ids=torch.arange(begin, end, device=device)[None, :],
                      past_key_values=cache, use_cache=True, logits_to_keep=1)

    @torch.inference_mode()
    def steered_pass(begin: int, end: int) -> list[TokenLogprob]:
        queries = torch.arange(begin, end, device=device)[:, None]
        keys = torch.arange(n + end, device=device)[None, :]
        # Columns 0..n-1: the unsteered keys (those before the query); n..n+end-1: the steered keys (its own only).
        allowed = torch.where(keys < n, keys < queries, keys - n == queries)
        bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
        steering = BatchSteering(blocks, torch.ones((1, end - begin), dtype=torch.bool))
        with steered(adapter, steering):
            logits = adapter.model(input_ids=ids[:, begin:end], position_ids=queries.T, past_key_values=cache,
                                   attention_mask=bias[None, None], use_cache=True).logits
        last = min(end, n - 1)
        if last <= begin:
            return []
        log_probs = torch.log_softmax(logits[0, : last - begin].float(), dim=-1)
        return picked_logprobs(log_probs, row[begin + 1 : last + 1], top_k)

    step = max(1, chunk_tokens)
    for begin in range(0, n, step):
        run(partial(fill, begin, min(begin + step, n)))
    scored: list[TokenLogprob] = []
    for begin in range(0, n, step):
        scored += run(partial(steered_pass, begin, min(begin + step, n)))
    return scored
