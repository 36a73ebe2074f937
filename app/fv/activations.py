"""Per-head outputs at the last token (Todd et al., ICLR 2024): the input of each layer's attention out-projection,
split into ``[n_heads, head_dim]``, captured with forward-pre hooks for the length of one forward."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from app.fv.forward import encode_left_padded, last_token_logits, model_device
from app.model.adapter import ModelAdapter
from app.model.runner import Runner, run_here


@contextmanager
def capture_last_token_heads(adapter: ModelAdapter, into: list[Tensor | None]) -> Iterator[None]:
    """Fill ``into[layer]`` with ``[batch, n_heads, head_dim]`` head outputs at the last position."""
    handles = []

    def make_hook(layer: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            hidden = args[0][:, -1, :]
            into[layer] = hidden.reshape(hidden.shape[0], adapter.n_heads, adapter.head_dim).detach().float()

        return hook

    try:
        for layer in range(adapter.n_layers):
            handles.append(adapter.out_proj(layer).register_forward_pre_hook(make_hook(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def mean_head_outputs(
    adapter: ModelAdapter,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    batch_size: int = 8,
    run: Runner[Tensor] = run_here,
    on_batch: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Mean over ``prompts`` of every head's last-token output: ``[n_layers, n_heads, head_dim]``."""
    device = model_device(adapter)
    total = torch.zeros(adapter.n_layers, adapter.n_heads, adapter.head_dim, dtype=torch.float64)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]

        def forward(chunk: list[str] = chunk) -> Tensor:
            captured: list[Tensor | None] = [None] * adapter.n_layers
            ids, mask = encode_left_padded(tokenizer, chunk, device)
            with torch.inference_mode(), capture_last_token_heads(adapter, captured):
                last_token_logits(adapter, ids, mask)
            return torch.stack([c for c in captured if c is not None], dim=1).sum(0).double().cpu()

        total += run(forward)
        if on_batch is not None:
            on_batch(min(start + batch_size, len(prompts)), len(prompts))
    return (total / len(prompts)).float()
