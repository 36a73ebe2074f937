"""Composite vectors: Σ wᵢ·vᵢ per layer, scale, layer override, dropped zeros, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.errors import InvalidInput, NotFound
from app.fv.composite import build_composite
from app.registry.registry import ModelIdentity, VectorRegistry


@pytest.fixture
def registry(tmp_path: Path) -> VectorRegistry:
    registry = VectorRegistry(tmp_path, ModelIdentity("tiny", "tiny", "fp", d_model=4, n_layers=6))
    registry.add(torch.tensor([1.0, 0, 0, 0]), {"name": "a", "layer": "2"})
    registry.add(torch.tensor([0, 1.0, 0, 0]), {"name": "b", "layer": "2"})
    registry.add(torch.tensor([0, 0, 1.0, 0]), {"name": "c", "layer": "5"})
    return registry


def test_weighted_sum_per_layer_and_scale(registry: VectorRegistry) -> None:
    composite = build_composite({"a": 2.0, "b": -0.5, "c": 3.0}, registry, scale=2.0)
    assert set(composite.layers) == {2, 5}
    assert torch.equal(composite.layers[2], torch.tensor([4.0, -1.0, 0, 0]))
    assert torch.equal(composite.layers[5], torch.tensor([0, 0, 6.0, 0]))
    assert composite.norms()[5] == pytest.approx(6.0)
    assert composite.relations == {"a": 2.0, "b": -0.5, "c": 3.0}


def test_layer_override_and_zero_weights(registry: VectorRegistry) -> None:
    composite = build_composite({"a": 1.0, "b": 0.0, "c": 1.0}, registry, layer=0)
    assert list(composite.layers) == [0]
    assert torch.equal(composite.layers[0], torch.tensor([1.0, 0, 1.0, 0]))
    assert composite.relations == {"a": 1.0, "c": 1.0}


def test_registry_vectors_are_not_mutated(registry: VectorRegistry) -> None:
    build_composite({"a": 5.0}, registry)
    assert torch.equal(registry.get("a").vector, torch.tensor([1.0, 0, 0, 0]))


@pytest.mark.parametrize(
    ("relations", "kwargs", "error", "param"),
    [
        ({"nope": 1.0}, {}, NotFound, "relations.nope"),
        ({"a": float("nan")}, {}, InvalidInput, "relations.a"),
        ({"a": float("inf")}, {}, InvalidInput, "relations.a"),
        ({"a": 1e9}, {}, InvalidInput, "relations.a"),
        ({"a": 1.0}, {"layer": 6}, InvalidInput, "layer"),
        ({"a": 1.0}, {"scale": float("nan")}, InvalidInput, "scale"),
        ({f"x{i}": 1.0 for i in range(65)}, {}, InvalidInput, "relations"),
    ],
)
def test_refusals_name_the_parameter(
    registry: VectorRegistry, relations: dict[str, float], kwargs: dict[str, object], error: type[Exception],
    param: str,
) -> None:
    with pytest.raises(error) as caught:
        build_composite(relations, registry, **kwargs)  # type: ignore[arg-type]
    assert caught.value.param == param  # type: ignore[attr-defined]
