"""Average indirect effect of each attention head (FV_METHOD.md §3).

For a corrupted prompt (demonstration labels shuffled), replace one head's last-token output by its
mean over clean prompts and measure how much the probability of the right answer rises.

Two implementations with identical results:
- :func:`aie_reference`: one full forward per (prompt, head), as in Todd et al. — kept as the oracle.
- :func:`aie_fast`: patching the last token changes no earlier position, so the KV cache of the first
  ``T-1`` tokens is computed once per prompt; then every head is scored by a one-token forward over
  that cache, many heads per batch (one batch row per head).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from app.fv.forward import model_device
from app.model.adapter import ModelAdapter
from app.model.runner import Runner, run_here

Head = tuple[int, int]


@dataclass(frozen=True)
class ScoredPrompt:
    """Token ids of a corrupted prompt and the first token of its correct answer."""

    ids: list[int]
    answer: int


def all_heads(adapter: ModelAdapter) -> list[Head]:
    return [(layer, head) for layer in range(adapter.n_layers) for head in range(adapter.n_heads)]


@contextmanager
def patched_heads(adapter: ModelAdapter, row_heads: list[Head | None], means: Tensor) -> Iterator[None]:
    """Row ``b`` of the next forward gets head ``row_heads[b]`` set to its mean at the last position."""
    by_layer: dict[int, tuple[list[int], list[int]]] = {}
    for row, item in enumerate(row_heads):
        if item is not None:
            rows, heads = by_layer.setdefault(item[0], ([], []))
            rows.append(row)
            heads.append(item[1])
    handles = []

    def make_hook(layer: int, rows: list[int], heads: list[int]) -> Callable[..., tuple[Any, ...]]:
        row_index = torch.tensor(rows)
        head_index = torch.tensor(heads)

        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            hidden = args[0].clone()
            last = hidden[:, -1, :].reshape(hidden.shape[0], adapter.n_heads, adapter.head_dim).clone()
            device_rows = row_index.to(hidden.device)
            last[device_rows, head_index.to(hidden.device)] = means[layer, head_index].to(hidden.device, hidden.dtype)
            hidden[:, -1, :] = last.reshape(hidden.shape[0], -1)
            return (hidden, *args[1:])

        return hook

    try:
        for layer, (rows, heads) in by_layer.items():
            handles.append(adapter.out_proj(layer).register_forward_pre_hook(make_hook(layer, rows, heads)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _answer_probability(logits: Tensor, answer: int) -> Tensor:
    return torch.softmax(logits.float(), dim=-1)[:, answer]


def aie_reference(
    adapter: ModelAdapter,
    prompts: list[ScoredPrompt],
    means: Tensor,
    heads: list[Head] | None = None,
) -> Tensor:
    """``[n_layers, n_heads]`` AIE, one full forward per (prompt, head). Slow; the oracle of the tests."""
    heads = heads or all_heads(adapter)
    device = model_device(adapter)
    effect = torch.zeros(adapter.n_layers, adapter.n_heads, dtype=torch.float64)
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt.ids], device=device)
            base = _answer_probability(adapter.model(input_ids=ids).logits[:, -1], prompt.answer)
            for head in heads:
                with patched_heads(adapter, [head], means):
                    patched = _answer_probability(adapter.model(input_ids=ids).logits[:, -1], prompt.answer)
                effect[head] += float(patched[0] - base[0])
    return (effect / len(prompts)).float()


def _expanded(cache: DynamicCache, rows: int) -> DynamicCache:
    """The one-row prefix cache seen as ``rows`` rows, without copying it (``expand`` is a view; the
    forward's own concatenation with the new token makes the only copy)."""
    copy = DynamicCache()
    for layer in cache.layers:
        assert isinstance(layer, DynamicLayer) and layer.keys is not None and layer.values is not None
        fresh = DynamicLayer()  # type: ignore[no-untyped-call]
        fresh.lazy_initialization(layer.keys, layer.values)
        fresh.keys = layer.keys.expand(rows, -1, -1, -1)
        fresh.values = layer.values.expand(rows, -1, -1, -1)
        copy.layers.append(fresh)
    return copy


KV_BUDGET_BYTES = 2 * 1024**3


def rows_within_budget(adapter: ModelAdapter, length: int, budget: int = KV_BUDGET_BYTES) -> int:
    """How many heads one batched forward can score while its copied KV cache stays within ``budget``.

    Bigger batches amortise per-forward overhead (on the embedded model all 270 heads in one batch run
    ~3x faster per head than batches of 64); the budget keeps large models from running out of memory.
    """
    config = adapter.model.config
    kv_heads = getattr(config, "num_key_value_heads", None) or adapter.n_heads
    itemsize = next(adapter.model.parameters()).element_size()
    per_row = adapter.n_layers * 2 * kv_heads * length * adapter.head_dim * itemsize
    return max(1, budget // max(per_row, 1))


def aie_fast(
    adapter: ModelAdapter,
    prompts: list[ScoredPrompt],
    means: Tensor,
    heads: list[Head] | None = None,
    *,
    head_batch: int | None = None,
    run: Runner[Any] = run_here,
    on_prompt: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Same result as :func:`aie_reference` from one prefix forward per prompt plus batched one-token forwards."""
    heads = heads or all_heads(adapter)
    device = model_device(adapter)
    effect = torch.zeros(adapter.n_layers, adapter.n_heads, dtype=torch.float64)
    rows: list[Head | None] = [None, *heads]  # row 0: the unpatched corrupted run
    for index, prompt in enumerate(prompts):
        length = len(prompt.ids)
        batch = head_batch or rows_within_budget(adapter, length)

        def prefix(prompt: ScoredPrompt = prompt) -> DynamicCache:
            cache = DynamicCache()
            with torch.inference_mode():
                adapter.model(input_ids=torch.tensor([prompt.ids[:-1]], device=device), past_key_values=cache,
                              use_cache=True, logits_to_keep=1)
            return cache

        cache: DynamicCache = run(prefix)
        probabilities: list[Tensor] = []
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]

            def score(
                chunk: list[Head | None] = chunk, prompt: ScoredPrompt = prompt, length: int = length,
                cache: DynamicCache = cache,
            ) -> Tensor:
                size = len(chunk)
                ids = torch.full((size, 1), prompt.ids[-1], dtype=torch.long, device=device)
                with torch.inference_mode(), patched_heads(adapter, chunk, means):
                    out = adapter.model(
                        input_ids=ids,
                        attention_mask=torch.ones((size, length), dtype=torch.long, device=device),
                        position_ids=torch.full((size, 1), length - 1, dtype=torch.long, device=device),
                        past_key_values=_expanded(cache, size),
                        use_cache=True,
                    )
                return _answer_probability(out.logits[:, -1], prompt.answer).double().cpu()

            probabilities.append(run(score))
        probs = torch.cat(probabilities)
        for row, head in enumerate(heads, start=1):
            effect[head] += float(probs[row] - probs[0])
        if on_prompt is not None:
            on_prompt(index + 1, len(prompts))
    return (effect / len(prompts)).float()


def top_heads(aie: Tensor, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` heads with the largest AIE over all layers, as ``(layer, head, aie)``."""
    values, flat = torch.topk(aie.flatten(), k)
    n_heads = aie.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(values, flat, strict=True)]
