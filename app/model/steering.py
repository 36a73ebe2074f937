"""Per-row steering of one forward pass: add a vector to the output of chosen decoder blocks.

Hooks live only for the duration of one forward (a context manager), so no request's vector can
leak into another pass. Each row of the batch carries its own vector per layer (zeros for rows that
are not steered: adding 0.0 leaves their activations bit-for-bit unchanged), and a boolean mask
says at which positions of this pass the vector is added.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from app.model.adapter import ModelAdapter


@dataclass(frozen=True)
class BatchSteering:
    """What to add in one forward pass.

    ``vectors[layer]`` is ``[batch, d_model]``; ``positions`` is a ``[batch, seq]`` bool mask of the
    positions of this pass that receive the vector (the same mask for every layer).
    """

    vectors: dict[int, Tensor]
    positions: Tensor

    def is_empty(self) -> bool:
        return not self.vectors


def _add_to_output(output: Any, delta: Tensor) -> Any:
    """Add ``delta`` to a block's hidden states, whether the block returns a tensor or a tuple."""
    if isinstance(output, Tensor):
        return output + delta.to(output.dtype)
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return (output[0] + delta.to(output[0].dtype), *output[1:])
    raise TypeError(f"cannot steer a decoder block that returns {type(output).__name__}")


@contextmanager
def steered(adapter: ModelAdapter, steering: BatchSteering | None) -> Iterator[None]:
    """Within the block, forwards of ``adapter.model`` are steered by ``steering``; after it, not at all."""
    if steering is None or steering.is_empty():
        yield
        return
    mask = steering.positions
    handles = []
    try:
        for layer, vectors in steering.vectors.items():

            def hook(module: torch.nn.Module, args: Any, output: Any, vectors: Tensor = vectors) -> Any:
                hidden = output if isinstance(output, Tensor) else output[0]
                # Callers build the vectors and the mask on the model's device: nothing is copied per forward (a
                # host copy would synchronise every decode step on a GPU); one built elsewhere still works.
                on_device = mask if mask.device == hidden.device else mask.to(hidden.device)
                block = vectors if vectors.device == hidden.device else vectors.to(hidden.device)
                delta = on_device.to(hidden.dtype)[:, :, None] * block[:, None, :]
                return _add_to_output(output, delta)

            handles.append(adapter.blocks[layer].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def stack_row_vectors(rows: list[dict[int, Tensor] | None], d_model: int, dtype: torch.dtype,
                      device: torch.device | str = "cpu") -> dict[int, Tensor]:
    """Turn per-row ``{layer: vector}`` maps into per-layer ``[batch, d_model]`` tensors (zero rows where absent) on
    ``device`` (the model's: the rows' vectors already live there, in the bank)."""
    layers = sorted({layer for row in rows if row for layer in row})
    stacked: dict[int, Tensor] = {}
    for layer in layers:
        block = torch.zeros(len(rows), d_model, dtype=dtype, device=device)
        for index, row in enumerate(rows):
            if row and layer in row:
                block[index] = row[layer].to(dtype)
        stacked[layer] = block
    return stacked
