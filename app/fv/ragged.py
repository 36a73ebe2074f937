"""Variants of a prompt's last token that differ from some block on, run over one shared prefix (what the fast
head scoring and the fast layer sweep are made of).

A change at the last token (a patched head, a vector added to the residual stream) alters no earlier position, and
nothing below the block where it enters. So one unpatched forward of the prompts fills the KV cache of their first
``T-1`` tokens and records every block's last-token output (:func:`captured_block_outputs`); then the variants are
one more forward whose positions are copies of the last token, all at position ``T-1``, each attending to the
cached prefix and to itself only (:func:`variant_mask`). Variants are ordered by the block they enter at, lowest
first, so block ``l`` runs only the first ones — those entering at ``l`` or below — and the recorded unpatched
output stands in for the rest (:func:`ragged_blocks`): each variant costs only its own layers, and the model's
weights are read once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from app.model.adapter import ModelAdapter


def active_counts(entries: list[int], n_layers: int) -> list[int]:
    """For each block, how many variants run it: those entering at it or below (``entries`` ascending)."""
    if entries != sorted(entries):
        raise ValueError("variants must be ordered by the block they enter at, lowest first")
    return [sum(1 for entry in entries if entry <= layer) for layer in range(n_layers)]


@contextmanager
def captured_block_outputs(adapter: ModelAdapter, into: list[Any], positions: int = 1) -> Iterator[None]:
    """Fill ``into[layer]`` with block ``layer``'s output at the last ``positions`` positions, in the block's own
    form."""
    def last(output: Any) -> Any:
        if isinstance(output, tuple):
            return (last(output[0]), *output[1:])
        return output[:, -positions:, :].clone()

    def make_hook(layer: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            into[layer] = last(output)

        return hook

    handles = [block.register_forward_hook(make_hook(layer)) for layer, block in enumerate(adapter.blocks)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def trim(cache: DynamicCache, length: int) -> None:
    """Drop what a forward appended after the first ``length`` positions (blocks no variant ran got nothing)."""
    for layer in cache.layers:
        assert isinstance(layer, DynamicLayer)  # what a DynamicCache made without a config holds
        extra = layer.get_seq_length() - length
        if extra > 0:
            layer.crop(-extra)


def kept_keys_values(cache: DynamicCache) -> list[tuple[Tensor, Tensor]]:
    """Every layer's keys and values, ``[rows, kv_heads, length, head_dim]``: a prefix to run more forwards over."""
    kept = []
    for layer in cache.layers:
        assert isinstance(layer, DynamicLayer) and layer.keys is not None and layer.values is not None
        kept.append((layer.keys, layer.values))
    return kept


def cache_over(keys_values: list[tuple[Tensor, Tensor]]) -> DynamicCache:
    """A cache holding ``keys_values`` (:func:`kept_keys_values`) for one forward; what that forward appends is
    concatenated into new tensors, so the kept ones stay as they are for the next."""
    cache = DynamicCache()
    for keys, values in keys_values:
        layer = DynamicLayer()  # type: ignore[no-untyped-call]
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def variant_mask(prefix_mask: Tensor, width: int, dtype: torch.dtype, group: int = 1) -> Tensor:
    """``[rows, 1, width, prefix + width]`` additive mask: each variant sees its row's prefix (``prefix_mask``,
    ``[rows, prefix]``, 0 on padding) and itself — or, when a variant is ``group`` consecutive positions, its own
    group's positions up to itself."""
    rows, prefix = prefix_mask.shape
    device = prefix_mask.device
    allowed = torch.zeros((rows, width, prefix + width), dtype=torch.bool, device=device)
    allowed[:, :, :prefix] = prefix_mask.bool()[:, None, :]
    group_of = torch.arange(width, device=device) // group
    same_group = group_of[:, None] == group_of[None, :]
    allowed[:, :, prefix:] = same_group & torch.ones(width, width, dtype=torch.bool, device=device).tril()
    bias = torch.zeros(allowed.shape, dtype=dtype, device=prefix_mask.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


@contextmanager
def ragged_blocks(adapter: ModelAdapter, outputs: list[Any], entries: list[int], prefix: int) -> Iterator[None]:
    """In the next forward of ``len(entries)`` variants, block ``l`` runs only the variants entering at ``l`` or
    below and returns the recorded unpatched output (``outputs[l]``) for the others; a block no variant enters
    by is not run at all.

    The block's own inputs are cut to the positions it runs: hidden states, position ids and embeddings, cache
    positions and the ``[..., width, prefix + width]`` attention mask (the cache then receives only their keys).
    Every block's own ``forward`` is back afterwards, even when the forward fails.
    """
    width = len(entries)
    counts = active_counts(entries, adapter.n_layers)
    saved: list[tuple[torch.nn.Module, Any]] = []

    def ragged(block: torch.nn.Module, layer: int) -> Callable[..., Any]:
        run_block = block.forward  # the class's forward, bound (hooks stay on __call__)
        active = counts[layer]

        def forward(*args: Any, **kwargs: Any) -> Any:
            if active == 0:
                return _widened(outputs[layer], width)
            if active == width:
                return run_block(*args, **kwargs)
            out = run_block(*_cut(args, active, width, prefix), **_cut(kwargs, active, width, prefix))
            return _joined(out, _widened(outputs[layer], width - active))

        return forward

    try:
        for layer, block in enumerate(adapter.blocks):
            forward = ragged(block, layer)
            saved.append((block, block.__dict__.get("forward")))
            block.__dict__["forward"] = forward  # an instance attribute shadows the class's forward
        yield
    finally:
        for block, previous in saved:
            if previous is None:
                del block.__dict__["forward"]
            else:
                block.__dict__["forward"] = previous


def _cut(value: Any, active: int, width: int, prefix: int) -> Any:
    """``value`` (an argument of a block, or a tuple, list or dict of them) cut to the first ``active`` variants."""
    if isinstance(value, Tensor):
        if value.dim() == 4 and value.shape[-2:] == (width, prefix + width):  # attention mask over cache + new
            return value[..., :active, : prefix + active]
        if value.dim() >= 2 and value.shape[1] == width:  # hidden states, position ids, rotary cos / sin
            return value[:, :active]
        if value.dim() == 1 and value.shape[0] == width:  # cache positions
            return value[:active]
        return value
    if isinstance(value, tuple):
        return tuple(_cut(item, active, width, prefix) for item in value)
    if isinstance(value, list):
        return [_cut(item, active, width, prefix) for item in value]
    if isinstance(value, dict):
        return {key: _cut(item, active, width, prefix) for key, item in value.items()}
    return value


def _joined(out: Any, rest: Any) -> Any:
    """A block's output for the variants it ran followed by ``rest`` (same form: a tensor or a tuple led by one)."""
    if isinstance(out, tuple):
        return (_joined(out[0], rest[0] if isinstance(rest, tuple) else rest), *out[1:])
    return torch.cat([out, rest.to(out.dtype)], dim=1)


def _widened(output: Any, width: int) -> Any:
    """A block's recorded output (a tensor, or a tuple led by one) over ``width`` positions: one position as
    ``width`` identical ones, a group of positions repeated once per variant."""
    if isinstance(output, tuple):
        return (_widened(output[0], width), *output[1:])
    if output.shape[1] == 1:
        return output.expand(output.shape[0], width, output.shape[-1])
    return output.repeat(1, width // output.shape[1], 1)


@contextmanager
def added_at(adapter: ModelAdapter, additions: list[tuple[int, int, Tensor]]) -> Iterator[None]:
    """In the next forward, for each ``(layer, position, vector)``: ``vector`` added to block ``layer``'s output at
    ``position`` (every row)."""
    by_layer: dict[int, list[tuple[int, Tensor]]] = {}
    for layer, position, vector in additions:
        by_layer.setdefault(layer, []).append((position, vector))

    def make_hook(items: list[tuple[int, Tensor]]) -> Callable[..., Any]:
        index = torch.tensor([position for position, _ in items])
        stacked = torch.stack([vector for _, vector in items])

        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            hidden = output if isinstance(output, Tensor) else output[0]
            delta = torch.zeros_like(hidden)
            delta[:, index.to(hidden.device)] = stacked.to(hidden.device, hidden.dtype)
            return hidden + delta if isinstance(output, Tensor) else (output[0] + delta, *output[1:])

        return hook

    handles = []
    try:
        for layer, items in by_layer.items():
            handles.append(adapter.blocks[layer].register_forward_hook(make_hook(items)))
        yield
    finally:
        for handle in handles:
            handle.remove()
