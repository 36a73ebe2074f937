"""Composite function vectors: ``v = scale · Σ wᵢ · vᵢ``, each vector added at its own layer (DESIGN.md §3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from app.errors import InvalidInput
from app.registry.registry import VectorRegistry

MAX_RELATIONS = 64
MAX_ABS_WEIGHT = 1000.0


@dataclass(frozen=True)
class Composite:
    """The relations used (zero weights dropped) and the summed vector per layer."""

    relations: dict[str, float]
    layers: dict[int, Tensor]

    def norms(self) -> dict[int, float]:
        return {layer: float(vector.norm()) for layer, vector in sorted(self.layers.items())}


def build_composite(
    relations: dict[str, float],
    registry: VectorRegistry,
    *,
    layer: int | None = None,
    scale: float = 1.0,
) -> Composite:
    """Weight, sum per layer and scale the named vectors; ``layer`` puts every vector at that one layer."""
    if len(relations) > MAX_RELATIONS:
        raise InvalidInput(f"relations has {len(relations)} entries; the limit is {MAX_RELATIONS}", param="relations")
    if not math.isfinite(scale):
        raise InvalidInput("scale must be a finite number", param="scale")
    n_layers = registry.model.n_layers
    if layer is not None and not 0 <= layer < n_layers:
        raise InvalidInput(f"layer {layer} is outside the model's 0..{n_layers - 1}", param="layer")
    used: dict[str, float] = {}
    layers: dict[int, Tensor] = {}
    for name, weight in relations.items():
        param = f"relations.{name}"
        if not math.isfinite(weight) or abs(weight) > MAX_ABS_WEIGHT:
            raise InvalidInput(f"weight of {name!r} must be finite and within ±{MAX_ABS_WEIGHT:g}", param=param)
        stored = registry.get(name, param=param)
        if weight == 0.0:
            continue
        target = stored.layer if layer is None else layer
        contribution = weight * stored.vector
        layers[target] = layers[target] + contribution if target in layers else contribution.clone()
        used[name] = weight
    scaled = {target: (scale * vector).to(torch.float32) for target, vector in layers.items()}
    return Composite(used, scaled)
