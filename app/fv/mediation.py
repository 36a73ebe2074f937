"""Average indirect effect of each attention head (Todd et al., ICLR 2024).

For a corrupted prompt (demonstration labels shuffled), replace one head's last-token output by its
mean over clean prompts and measure how much the probability of the right answer rises.

Two implementations with identical results:
- :func:`aie_reference`: one full forward per (prompt, head), as in Todd et al. — kept as the oracle.
- :func:`aie_fast`: patching the last token changes no earlier position, so one full forward per prompt
  fills the KV cache of the first ``T-1`` tokens and records every block's unpatched last-token output;
  then all heads are one forward of copies of the last token laid side by side in one row (each sees the
  shared prefix and itself), in which block ``l`` runs only the copies of heads at ``l`` and below
  (:mod:`app.fv.ragged`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from app.fv.forward import model_device
from app.fv.ragged import captured_block_outputs, ragged_blocks, trim, variant_mask
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


@dataclass(frozen=True)
class Chunk:
    """Heads scored by one forward, lowest layer first: position ``b`` of the variant sequence patches
    ``heads[b]``. Block ``l`` runs only the positions whose head is at layer ``l`` or below (a prefix of them);
    the others are still unpatched there, so the block's recorded unpatched output stands in for them."""

    heads: list[Head]

    @property
    def first_layer(self) -> int:
        return self.heads[0][0]

    @property
    def entries(self) -> list[int]:
        """The block each position enters at (:mod:`app.fv.ragged`): its head's layer."""
        return [layer for layer, _ in self.heads]


def layer_chunks(heads: list[Head], rows: int) -> list[Chunk]:
    """Whole layers of heads, top layer first, gathered into chunks of about ``rows`` heads, each chunk ordered
    by layer from the bottom up (so the positions a block runs are always the first ones).

    A layer is never split: a chunk's positions then enter block by block with their own layer's heads.
    """
    by_layer: dict[int, list[Head]] = {}
    for head in heads:
        by_layer.setdefault(head[0], []).append(head)
    chunks: list[Chunk] = []
    current: list[Head] = []
    for layer in sorted(by_layer, reverse=True):
        if current and len(current) + len(by_layer[layer]) > rows:
            chunks.append(Chunk(current))
            current = []
        current = by_layer[layer] + current
    if current:
        chunks.append(Chunk(current))
    return chunks


@contextmanager
def _patched_positions(adapter: ModelAdapter, heads: list[Head], means: Tensor) -> Iterator[None]:
    """Position ``b`` of the next (one-row) forward gets head ``heads[b]`` set to its mean."""
    by_layer: dict[int, tuple[list[int], list[int]]] = {}
    for position, (layer, head) in enumerate(heads):
        positions, indices = by_layer.setdefault(layer, ([], []))
        positions.append(position)
        indices.append(head)

    def make_hook(layer: int, positions: list[int], indices: list[int]) -> Callable[..., tuple[Any, ...]]:
        position_index, head_index = torch.tensor(positions), torch.tensor(indices)

        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            hidden = args[0]
            split = hidden.reshape(hidden.shape[0], hidden.shape[1], adapter.n_heads, adapter.head_dim).clone()
            device_positions = position_index.to(hidden.device)
            split[0, device_positions, head_index.to(hidden.device)] = means[layer, head_index].to(
                hidden.device, hidden.dtype)
            return (split.reshape(hidden.shape), *args[1:])

        return hook

    handles = []
    try:
        for layer, (positions, indices) in by_layer.items():
            handles.append(adapter.out_proj(layer).register_forward_pre_hook(make_hook(layer, positions, indices)))
        yield
    finally:
        for handle in handles:
            handle.remove()


# Heads per forward: every head of the embedded model (270) in one. Block ``l`` then runs only the heads at ``l``
# and below, so the model's weights are read once per prompt and each head runs from its own layer up; chunks
# read the upper blocks' weights again per chunk (on 2 CPU cores, chunks of 64 heads cost ~30 % more a prompt).
DEFAULT_HEAD_BATCH = 512


def aie_fast(
    adapter: ModelAdapter,
    prompts: list[ScoredPrompt],
    means: Tensor,
    heads: list[Head] | None = None,
    *,
    head_batch: int = DEFAULT_HEAD_BATCH,
    run: Runner[Any] = run_here,
    on_prompt: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Same result as :func:`aie_reference`, from one full forward per prompt plus one short forward per chunk.

    The full forward fills the KV cache of the first ``T-1`` tokens, gives the unpatched probability and
    records every block's last-token output. Each chunk of heads is then one forward of a single row whose
    positions are copies of the last token (one per head, all at position ``T-1``), each attending to the
    cached prefix and to itself only (a 4-D mask), so the prefix is shared without copying it per head; block
    ``l`` runs only the positions of heads at ``l`` and below, and stands in the recorded output for the rest.
    """
    heads = heads or all_heads(adapter)
    device = model_device(adapter)
    dtype = next(adapter.model.parameters()).dtype
    effect = torch.zeros(adapter.n_layers, adapter.n_heads, dtype=torch.float64)
    chunks = layer_chunks(heads, head_batch)
    for index, prompt in enumerate(prompts):
        length = len(prompt.ids)
        cache = DynamicCache()
        outputs: list[Any] = [None] * adapter.n_layers

        def unpatched(prompt: ScoredPrompt = prompt, cache: DynamicCache = cache,
                      outputs: list[Any] = outputs) -> Tensor:
            with torch.inference_mode(), captured_block_outputs(adapter, outputs):
                out = adapter.model(input_ids=torch.tensor([prompt.ids], device=device), past_key_values=cache,
                                    use_cache=True, logits_to_keep=1)
            trim(cache, len(prompt.ids) - 1)
            return _answer_probability(out.logits[:, -1], prompt.answer).double().cpu()

        base = float(run(unpatched)[0])
        for chunk in chunks:

            def score(chunk: Chunk = chunk, prompt: ScoredPrompt = prompt, length: int = length,
                      cache: DynamicCache = cache, outputs: list[Any] = outputs) -> Tensor:
                width = len(chunk.heads)
                bias = variant_mask(torch.ones((1, length - 1), dtype=torch.long, device=device), width, dtype)
                ids = torch.full((1, width), prompt.ids[-1], dtype=torch.long, device=device)
                try:
                    with (torch.inference_mode(), _patched_positions(adapter, chunk.heads, means),
                          ragged_blocks(adapter, outputs, chunk.entries, length - 1)):
                        out = adapter.model(
                            input_ids=ids,
                            attention_mask=bias,
                            position_ids=torch.full((1, width), length - 1, dtype=torch.long, device=device),
                            past_key_values=cache,
                            use_cache=True,
                        )
                finally:
                    trim(cache, length - 1)
                return _answer_probability(out.logits[0], prompt.answer).double().cpu()

            probs = run(score)
            for position, head in enumerate(chunk.heads):
                effect[head] += float(probs[position]) - base
        if on_prompt is not None:
            on_prompt(index + 1, len(prompts))
    return (effect / len(prompts)).float()


def top_heads(aie: Tensor, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` heads with the largest AIE over all layers, as ``(layer, head, aie)``."""
    values, flat = torch.topk(aie.flatten(), k)
    n_heads = aie.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(values, flat, strict=True)]
