"""The in-graph part: each decoder layer of the served model wrapped so that its output gets ``W_t @ B`` added.

The wrapper reads only fixed-address buffers (the bank, the per-layer weight rows, the per-token row index), with
no Python branching on their contents, so the same code runs eagerly, under torch.compile and inside captured
CUDA graphs. Unsteered tokens point at an all-zero weight row: they get exactly 0 added.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fvsteer_vllm.state import SteeringState

# Where architectures keep their decoder layers (vLLM's own model classes).
LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers")


class SteeredLayer(nn.Module):
    def __init__(self, inner: nn.Module, layer: int, state: SteeringState) -> None:
        super().__init__()
        self.inner = inner
        self.layer = layer
        self.rows: torch.Tensor
        self.bank: torch.Tensor
        self.token_rows: torch.Tensor
        self.register_buffer("rows", state.weights[layer], persistent=False)
        self.register_buffer("bank", state.bank.table, persistent=False)
        self.register_buffer("token_rows", state.token_rows, persistent=False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        # vLLM's layers hand on (mlp output, residual) with the stream = their sum; adding to either adds to it.
        delta = self.rows[self.token_rows[: hidden.shape[0]]] @ self.bank
        hidden = hidden + delta.to(hidden.dtype)
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


def check_parallelism(pipeline_parallel_size: int) -> None:
    """Refuse what no run has checked, instead of serving it possibly wrong: tensor parallelism is tested (every rank
    holds the whole residual stream, adds the same ``W_t @ B``); pipeline parallelism only at the layer level."""
    if pipeline_parallel_size > 1:
        raise ValueError(
            f"fvsteer: --pipeline-parallel-size {pipeline_parallel_size} is not supported: each rank wraps the layers "
            "it holds (tested on a split model), but no vLLM run has checked steering across pipeline stages "
            "(vLLM 0.32's CPU runner fails on pipeline parallelism without fvsteer); use --tensor-parallel-size")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    for path in LAYER_PATHS:
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"fvsteer: cannot find the decoder layers of {type(model).__name__} (looked at {LAYER_PATHS})")


def wrap_layers(model: nn.Module, state: SteeringState) -> int:
    """Wrap every layer this rank holds (pipeline parallelism leaves placeholders for the others)."""
    layers = decoder_layers(model)
    wrapped = 0
    for index, layer in enumerate(layers):
        if type(layer).__name__ == "PPMissingLayer" or isinstance(layer, SteeredLayer):
            continue
        layers[index] = SteeredLayer(layer, index, state)
        wrapped += 1
    return wrapped
