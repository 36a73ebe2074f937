"""KV-cache surgery for continuous batching: join two left-padded batches, drop finished rows.

The cache is a plain :class:`DynamicCache` (no per-layer sliding truncation), so every layer holds
``[batch, kv_heads, seq, head_dim]`` tensors that line up with the 2-D attention mask; sliding-window
models still attend correctly because their masks apply the window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def _pad_left(tensor: Tensor, length: int, dim: int) -> Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim % tensor.dim()) + [missing, 0]
    return F.pad(tensor, pad)


def concat_batches(
    cache_a: DynamicCache, mask_a: Tensor, cache_b: DynamicCache, mask_b: Tensor
) -> tuple[DynamicCache, Tensor]:
    """Stack batch ``b`` under batch ``a``, left-padding the shorter one with masked positions."""
    length = max(mask_a.shape[1], mask_b.shape[1])
    mask = torch.cat([_pad_left(mask_a, length, 1), _pad_left(mask_b, length, 1)], dim=0)
    merged = DynamicCache()
    for layer_a, layer_b in zip(cache_a.layers, cache_b.layers, strict=True):
        keys_a, values_a = _kv(layer_a)
        keys_b, values_b = _kv(layer_b)
        keys = torch.cat([_pad_left(keys_a, length, 2), _pad_left(keys_b, length, 2)], dim=0)
        values = torch.cat([_pad_left(values_a, length, 2), _pad_left(values_b, length, 2)], dim=0)
        merged.layers.append(_layer_from(keys, values))
    return merged, mask


def select_rows(cache: DynamicCache, mask: Tensor, keep: list[int]) -> tuple[DynamicCache, Tensor]:
    """Keep the rows ``keep`` and drop the leading columns that are padding in every kept row."""
    index = torch.tensor(keep, dtype=torch.long, device=mask.device)
    mask = mask.index_select(0, index)
    live = mask.any(dim=0).nonzero()
    start = int(live[0]) if live.numel() else mask.shape[1]
    mask = mask[:, start:]
    selected = DynamicCache()
    for layer in cache.layers:
        keys, values = _kv(layer)
        keys = keys.index_select(0, index.to(keys.device))[:, :, start:]
        values = values.index_select(0, index.to(values.device))[:, :, start:]
        selected.layers.append(_layer_from(keys, values))
    return selected, mask


def _kv(layer: object) -> tuple[Tensor, Tensor]:
    if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
        raise TypeError(f"continuous batching needs filled dynamic cache layers, not {type(layer).__name__}")
    return layer.keys, layer.values


def _layer_from(keys: Tensor, values: Tensor) -> DynamicLayer:
    layer = DynamicLayer()  # type: ignore[no-untyped-call]
    layer.update(keys, values)
    return layer
