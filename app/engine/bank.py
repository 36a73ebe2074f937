"""The vector bank: the registry's vectors of the loaded model, resident on the model's device, one table per layer.

Per layer ``l`` the bank holds ``B_l`` (``[capacity, d_model]``, a fixed tensor grown by reallocation only when
full); a name maps to its layer and row. Saving or deleting a vector updates the bank in place (the registry
announces every change, :meth:`VectorBank.apply`). A request's composite ``scale · Σ wᵢ · vᵢ`` is built from the
rows, each vector added at its own layer or all at the request's ``layer``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from fvsteer_vllm.bank import vector_digest
from torch import Tensor

from app.engine.requests import AppliedLayer, AppliedVector, BankSteering, Positions, SteeringReceipt
from app.errors import InvalidInput, NotFound

if TYPE_CHECKING:  # only named: the engine's import closure stays free of the registry's pydantic and safetensors
    from app.registry.registry import RegistryChange
    from app.registry.vector_file import StoredVector

INITIAL_ROWS = 8


@dataclass(frozen=True)
class _Slot:
    layer: int
    row: int
    digest: str


@dataclass(frozen=True)
class ResolvedSteering:
    """A row's composite: layer → vector (float32, on the bank's device), and the receipt of what it holds."""

    layers: dict[int, Tensor]
    receipt: SteeringReceipt


def compose(parts: Iterable[tuple[int, AppliedVector, Tensor]], positions: Positions) -> ResolvedSteering:
    """Sum ``weight · vector`` per layer, in the order given, and write the receipt from the very same parts.

    ``weight`` already holds the request's scale; parts of weight zero add nothing and are left out of both.
    """
    sums: dict[int, Tensor] = {}
    applied: dict[int, list[AppliedVector]] = {}
    for layer, vector, values in parts:
        if vector.weight == 0.0:
            continue
        contribution = vector.weight * values.to(torch.float32)
        sums[layer] = sums[layer] + contribution if layer in sums else contribution
        applied.setdefault(layer, []).append(vector)
    receipt = SteeringReceipt({layer: AppliedLayer(tuple(applied[layer]), float(sums[layer].norm()))
                               for layer in sorted(sums)}, positions)
    return ResolvedSteering(sums, receipt)


class VectorBank:
    """Thread-safe: the registry updates it from request threads while the engine thread reads it."""

    def __init__(self, n_layers: int, d_model: int, device: torch.device, model_name: str = "the loaded model") -> None:
        self.n_layers = n_layers
        self.d_model = d_model
        self.device = device
        self.model_name = model_name
        self._tables: dict[int, Tensor] = {}
        self._free: dict[int, list[int]] = {}
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._slots

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)

    def table(self, layer: int) -> Tensor:
        """``B_layer`` itself (rows of deleted vectors are zero); its address changes only when it grows."""
        with self._lock:
            return self._tables[layer]

    def capacity(self, layer: int) -> int:
        with self._lock:
            table = self._tables.get(layer)
            return 0 if table is None else int(table.shape[0])

    def put(self, name: str, layer: int, vector: Tensor, digest: str | None = None) -> None:
        """Add (or replace) a vector; its layer's table is reallocated only when it has no free row."""
        if not 0 <= layer < self.n_layers:
            raise InvalidInput(f"layer {layer} is outside the model's 0..{self.n_layers - 1}", param="layer")
        if tuple(vector.shape) != (self.d_model,):
            raise InvalidInput(f"vector has shape {list(vector.shape)}; the model needs [{self.d_model}]",
                               param="vector")
        with self._lock:
            self._remove(name)
            table = self._tables.get(layer)
            free = self._free.setdefault(layer, [])
            if not free:
                old = 0 if table is None else int(table.shape[0])
                grown = torch.zeros(max(INITIAL_ROWS, 2 * old), self.d_model, dtype=torch.float32, device=self.device)
                if table is not None:
                    grown[:old] = table
                self._tables[layer] = table = grown
                free.extend(range(int(grown.shape[0]) - 1, old - 1, -1))
            assert table is not None
            row = free.pop()
            table[row] = vector.detach().to(self.device, torch.float32)
            self._slots[name] = _Slot(layer, row, digest or vector_digest(vector))

    def remove(self, name: str) -> None:
        with self._lock:
            self._remove(name)

    def _remove(self, name: str) -> None:
        slot = self._slots.pop(name, None)
        if slot is not None:
            self._tables[slot.layer][slot.row] = 0.0
            self._free[slot.layer].append(slot.row)

    def sync(self, vectors: Iterable[StoredVector]) -> None:
        """Make the bank hold exactly ``vectors`` (start, or a registry that re-read its folder)."""
        wanted = {stored.name: stored for stored in vectors}
        with self._lock:
            for name in set(self._slots) - set(wanted):
                self._remove(name)
        for stored in wanted.values():
            self.put(stored.name, stored.layer, stored.vector, stored.meta.digest)

    def apply(self, change: RegistryChange) -> None:
        """A registry listener: mirror a save, a deletion or a reload."""
        if change.kind == "saved" and change.stored is not None:
            self.put(change.stored.name, change.stored.layer, change.stored.vector, change.stored.meta.digest)
        elif change.kind == "deleted" and change.name is not None:
            self.remove(change.name)
        elif change.kind == "reloaded":
            self.sync(change.vectors)

    def check(self, steering: BankSteering) -> None:
        """Refuse steering the bank cannot build (an unknown name, a layer the model lacks) before it is queued."""
        if steering.layer is not None and not 0 <= steering.layer < self.n_layers:
            raise InvalidInput(f"layer {steering.layer} is outside the model's 0..{self.n_layers - 1}", param="layer")
        with self._lock:
            missing = next((name for name in steering.weights if name not in self._slots), None)
        if missing is not None:
            raise NotFound(f"no vector named {missing[:80]!r} for model {self.model_name}",
                           param=f"relations.{missing}")

    def resolve(self, steering: BankSteering) -> ResolvedSteering:
        """``scale · Σ wᵢ · vᵢ`` per target layer, summed in the order the weights were given, with its receipt:
        both are made under the bank's lock, so the receipt names exactly the values added."""
        self.check(steering)
        parts: list[tuple[int, AppliedVector, Tensor]] = []
        with self._lock:
            for name, weight in steering.weights.items():
                slot = self._slots.get(name)
                if slot is None:  # deleted since check(): refuse, never run unsteered
                    raise NotFound(f"no vector named {name[:80]!r} for model {self.model_name}",
                                   param=f"relations.{name}")
                target = slot.layer if steering.layer is None else steering.layer
                parts.append((target, AppliedVector(name, slot.digest, steering.scale * weight),
                              self._tables[slot.layer][slot.row]))
            return compose(parts, steering.positions)  # under the lock: the rows cannot change while summed
