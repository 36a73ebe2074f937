"""The vector bank: Σ wᵢ·vᵢ per layer, scale, layer override, zero weights, refusals, and in-place updates that
keep each layer's table at a fixed address until it is full."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fvsteer_vllm.bank import vector_digest

from app.engine.bank import INITIAL_ROWS, VectorBank
from app.engine.requests import BankSteering
from app.errors import InvalidInput, NotFound
from app.registry.registry import ModelIdentity, VectorRegistry


@pytest.fixture
def registry(tmp_path: Path) -> VectorRegistry:
    registry = VectorRegistry(tmp_path, ModelIdentity("tiny", "tiny", "fp", d_model=4, n_layers=6))
    registry.add(torch.tensor([1.0, 0, 0, 0]), {"name": "a", "layer": "2"})
    registry.add(torch.tensor([0, 1.0, 0, 0]), {"name": "b", "layer": "2"})
    registry.add(torch.tensor([0, 0, 1.0, 0]), {"name": "c", "layer": "5"})
    return registry


@pytest.fixture
def bank(registry: VectorRegistry) -> VectorBank:
    bank = VectorBank(6, 4, torch.device("cpu"), "tiny")
    registry.subscribe(bank.apply)
    return bank


def test_weighted_sum_per_layer_and_scale(bank: VectorBank) -> None:
    steering = BankSteering.checked({"a": 2.0, "b": -0.5, "c": 3.0}, scale=2.0)
    resolved = bank.resolve(steering)
    assert set(resolved.layers) == {2, 5}
    assert torch.equal(resolved.layers[2], torch.tensor([4.0, -1.0, 0, 0]))
    assert torch.equal(resolved.layers[5], torch.tensor([0, 0, 6.0, 0]))
    assert steering.applied == {"a": 2.0, "b": -0.5, "c": 3.0}


def test_the_receipt_names_each_vector_by_digest_with_its_weight_after_scale(bank: VectorBank,
                                                                              registry: VectorRegistry) -> None:
    steering = BankSteering.checked({"a": 2.0, "b": 0.0, "c": 3.0}, scale=2.0, positions="all")
    receipt = bank.resolve(steering).receipt
    assert receipt.positions == "all" and list(receipt.layers) == [2, 5]
    (a,) = receipt.layers[2].vectors
    assert (a.name, a.digest, a.weight) == ("a", vector_digest(registry.get("a").vector), 4.0)
    assert receipt.layers[2].norm == pytest.approx(4.0) and receipt.layers[5].norm == pytest.approx(6.0)
    registry.delete("a")  # made again with other values: a new digest
    registry.add(torch.tensor([0, 0, 0, 2.0]), {"name": "a", "layer": "2"})
    (after,) = bank.resolve(steering).receipt.layers[2].vectors
    assert after.digest == vector_digest(torch.tensor([0, 0, 0, 2.0])) != a.digest


def test_layer_override_and_zero_weights(bank: VectorBank) -> None:
    steering = BankSteering.checked({"a": 1.0, "b": 0.0, "c": 1.0}, layer=0)
    resolved = bank.resolve(steering)
    assert list(resolved.layers) == [0]
    assert torch.equal(resolved.layers[0], torch.tensor([1.0, 0, 1.0, 0]))
    assert steering.applied == {"a": 1.0, "c": 1.0}


def test_the_bank_keeps_its_own_copies(bank: VectorBank, registry: VectorRegistry) -> None:
    resolved = bank.resolve(BankSteering.checked({"a": 5.0}))
    resolved.layers[2].add_(1.0)
    assert torch.equal(registry.get("a").vector, torch.tensor([1.0, 0, 0, 0]))
    assert torch.equal(bank.resolve(BankSteering.checked({"a": 1.0})).layers[2], torch.tensor([1.0, 0, 0, 0]))


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
    bank: VectorBank, relations: dict[str, float], kwargs: dict[str, object], error: type[Exception], param: str,
) -> None:
    with pytest.raises(error) as caught:
        bank.resolve(BankSteering.checked(relations, **kwargs))  # type: ignore[arg-type]
    assert caught.value.param == param  # type: ignore[attr-defined]


def test_saves_and_deletions_update_the_bank_in_place(bank: VectorBank, registry: VectorRegistry) -> None:
    table = bank.table(2)
    address = table.data_ptr()
    registry.add(torch.tensor([0, 0, 0, 2.0]), {"name": "d", "layer": "2"})
    assert "d" in bank and bank.table(2).data_ptr() == address
    assert torch.equal(bank.resolve(BankSteering.checked({"d": 1.0})).layers[2], torch.tensor([0, 0, 0, 2.0]))
    registry.delete("a")
    assert "a" not in bank and bank.table(2).data_ptr() == address
    with pytest.raises(NotFound):
        bank.resolve(BankSteering.checked({"a": 1.0}))
    assert int((bank.table(2).abs().sum(dim=1) > 0).sum()) == 2  # a's row was zeroed, b and d remain


def test_a_full_table_grows_and_keeps_every_vector(bank: VectorBank) -> None:
    for index in range(INITIAL_ROWS + 1):
        bank.put(f"g{index}", 3, torch.full((4,), float(index)))
    assert bank.capacity(3) == 2 * INITIAL_ROWS
    for index in range(INITIAL_ROWS + 1):
        layers = bank.resolve(BankSteering.checked({f"g{index}": 1.0})).layers
        assert torch.equal(layers[3], torch.full((4,), float(index)))


def test_put_refuses_what_the_model_cannot_hold(bank: VectorBank) -> None:
    with pytest.raises(InvalidInput, match="layer"):
        bank.put("x", 6, torch.zeros(4))
    with pytest.raises(InvalidInput, match="shape"):
        bank.put("x", 1, torch.zeros(5))
