"""The steering state of one vLLM worker: fixed-address buffers that the steered layers read in-graph, and the
bookkeeping that fills them.

- ``bank.table`` ``B`` (``[K, d_model]``): the resident vectors.
- ``weights`` (``[n_layers, R + 1, K]``): row ``r`` of layer ``l`` holds the weights of the request in batch slot
  ``r`` for the vectors it adds at layer ``l``; row ``R`` is all zeros (tokens that get nothing).
- ``token_rows`` (``[T_max]``): for each token of the current forward, the weight row it uses: its request's slot
  where the FV policy steers that token, else ``R``.

A request whose steering cannot be applied (its vector gone everywhere, or every bank row held) is in ``failed``:
its weights stay zero, :class:`~fvsteer_vllm.batch.SteeringBatch` makes it end at once (end-of-sequence is its only
token) and ``.failed/<id>`` in the bank folder tells fvsteer why. The engine and the batch's other requests go on.

A steered layer computes ``h += weights[l][token_rows[:T]] @ B``: the per-token weight matrix ``W_t`` times the
bank, any mix of vectors per request, no slot per distinct composite, and exactly zero for unsteered tokens.
Batch slots follow vLLM's persistent batch (:class:`~fvsteer_vllm.batch.SteeringBatch`); ``token_rows`` is
rebuilt before every forward from the attention metadata's ``query_start_loc`` and the token positions, on the
device, without a host sync.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fvsteer_vllm.bank import BankError, ResidentBank
from fvsteer_vllm.spec import SteeringSpec

NO_STEER_PROMPT_LEN = 2**62  # a slot without steering: no position reaches it
FAILED = ".failed"

log = logging.getLogger("vllm.fvsteer")


@dataclass
class _Slot:
    spec: SteeringSpec
    layers: tuple[int, ...]
    keys: tuple[str, ...]  # bank rows it holds, released when it leaves


def failure_path(folder: Path, request_id: str) -> Path:
    return folder / FAILED / request_id


class SteeringState:
    def __init__(self, folder: Path, capacity: int, n_layers: int, d_model: int, max_slots: int, max_tokens: int,
                 device: torch.device) -> None:
        self.n_layers = n_layers
        self.max_slots = max_slots
        self.zero_row = max_slots
        self.device = device
        self.bank = ResidentBank(folder, capacity, d_model, device)
        self.weights = torch.zeros(n_layers, max_slots + 1, capacity, dtype=torch.float32, device=device)
        self.token_rows = torch.full((max_tokens,), self.zero_row, dtype=torch.long, device=device)
        # Per slot: the first position the FV policy steers (prompt length - 1; 0 with positions "all").
        self.first_steered = torch.full((max_slots + 1,), NO_STEER_PROMPT_LEN, dtype=torch.long, device=device)
        self._slots: dict[int, _Slot] = {}
        self.failed: set[int] = set()  # slots whose steering could not be applied: they end at once
        self._arange = torch.arange(max_tokens, dtype=torch.long, device=device)

    # ----------------------------------------------------------- the persistent batch
    def add(self, slot: int, spec: SteeringSpec | None, prompt_len: int) -> None:
        """A request took batch slot ``slot`` (replacing whatever was there)."""
        self.remove(slot)
        if spec is None:
            return
        rows: list[tuple[int, int, float]] = []
        keys: list[str] = []
        try:
            for entry in spec.entries:
                if not 0 <= entry.layer < self.n_layers:
                    raise BankError(f"fvsteer: layer {entry.layer} is outside the model's 0..{self.n_layers - 1}")
                rows.append((entry.layer, self.bank.acquire(entry.key), entry.weight))
                keys.append(entry.key)
        except BankError as exc:
            for key in keys:
                self.bank.release(key)
            self._fail(slot, spec, str(exc))
            return
        for layer, row, weight in rows:
            self.weights[layer, slot, row] += weight
        self.first_steered[slot] = 0 if spec.positions == "all" else max(prompt_len - 1, 0)
        self._slots[slot] = _Slot(spec, tuple(sorted({layer for layer, _, _ in rows})), tuple(keys))

    def remove(self, slot: int) -> None:
        old = self._slots.pop(slot, None)
        if old is not None:
            self.weights[list(old.layers), slot] = 0.0
            for key in old.keys:
                self.bank.release(key)
        self.failed.discard(slot)
        self.first_steered[slot] = NO_STEER_PROMPT_LEN

    def _fail(self, slot: int, spec: SteeringSpec, reason: str) -> None:
        log.error("fvsteer: request %s ends unserved: %s", spec.request_id or "(no id)", reason)
        self.failed.add(slot)
        if spec.request_id is not None:
            path = failure_path(self.bank.folder.folder, spec.request_id)
            path.parent.mkdir(exist_ok=True)
            staging = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            staging.write_text(reason)
            os.replace(staging, path)

    def move(self, source: int, target: int, swap: bool) -> None:
        """vLLM moved a request from ``source`` to ``target`` (or swapped the two)."""
        if swap:
            self.weights[:, [source, target]] = self.weights[:, [target, source]]
            self.first_steered[[source, target]] = self.first_steered[[target, source]]
            a, b = self._slots.pop(source, None), self._slots.pop(target, None)
            if a is not None:
                self._slots[target] = a
            if b is not None:
                self._slots[source] = b
            failed = {target} if source in self.failed else set()
            failed |= {source} if target in self.failed else set()
            self.failed = (self.failed - {source, target}) | failed
            return
        self.remove(target)
        self.weights[:, target] = self.weights[:, source]
        self.first_steered[target] = self.first_steered[source]
        self.weights[:, source] = 0.0
        self.first_steered[source] = NO_STEER_PROMPT_LEN
        moved = self._slots.pop(source, None)
        if moved is not None:
            self._slots[target] = moved
        if source in self.failed:
            self.failed.discard(source)
            self.failed.add(target)

    @property
    def steering(self) -> bool:
        return bool(self._slots)

    # ----------------------------------------------------------- every forward
    def prepare(self, query_start_loc: torch.Tensor | None, positions: torch.Tensor) -> None:
        """Point each token of this forward at its weight row (device ops only)."""
        n = int(positions.shape[0])
        rows = self.token_rows
        if query_start_loc is None or not self._slots:
            rows[:n].fill_(self.zero_row)
            return
        ends = query_start_loc[1:].to(torch.long)
        slot = torch.searchsorted(ends, self._arange[:n], right=True).clamp_(max=self.zero_row)
        steered = positions.to(torch.long) >= self.first_steered[slot]
        rows[:n] = torch.where(steered, slot, self.zero_row)
