"""``--logits-processors fvsteer_vllm.batch:SteeringBatch``: follows vLLM's persistent batch for the steering state.

vLLM tells every logits processor, before each forward, which requests joined the batch (with their sampling
parameters and prompt), left it, or moved within it. This one writes each steered request's weights into its batch
slot of :class:`~fvsteer_vllm.state.SteeringState`. At admission (in vLLM's front process)
:meth:`SteeringBatch.validate_params` refuses steering that cannot be applied, so the request fails with HTTP 400
instead of running unsteered, and pins the vectors it admits (a deletion after admission does not reach the
request). A request whose steering still cannot be applied in the worker is the one whose logits this processor
changes: end-of-sequence becomes its only possible token, so it ends at once, unsteered text never produced.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from vllm import SamplingParams
from vllm.config import VllmConfig
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from fvsteer_vllm import runtime
from fvsteer_vllm.bank import BankFolder
from fvsteer_vllm.spec import SpecError, SteeringSpec

_folders: dict[str, BankFolder] = {}


class SteeringBatch(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        spec = SteeringSpec.of(sampling_params.extra_args)
        if spec is None:
            return
        folder = os.environ.get("FVSTEER_BANK_DIR")
        if not folder:
            raise SpecError("fvsteer: this vLLM server does not steer (start it with --load-format fvsteer and "
                            "FVSTEER_BANK_DIR)")
        bank = _folders.setdefault(folder, BankFolder(Path(folder)))
        held = bank.holding()
        if any(entry.key not in held for entry in spec.entries):
            held = bank.holding(force=True)  # saved a moment ago?
        for entry in spec.entries:
            try:
                bank.pin(entry.key, held[entry.key])
            except (KeyError, OSError) as exc:
                raise SpecError(f"fvsteer: no vector {entry.key!r} in the bank (it was deleted or changed)") from exc

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self._calls = 0
        eos = getattr(vllm_config.model_config.hf_config, "eos_token_id", None)
        self._eos = int((eos[0] if isinstance(eos, list | tuple) else eos) or 0)

    def is_argmax_invariant(self) -> bool:
        return False  # a failed request's logits are changed, greedy or not

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        state = runtime.STATE
        if state is not None and state.failed:
            rows = [slot for slot in state.failed if slot < logits.shape[0]]
            logits[rows] = float("-inf")
            logits[rows, self._eos] = 0.0
        return logits

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        state = runtime.STATE
        if state is None:  # not loaded with --load-format fvsteer: validate_params refuses steered requests
            return
        self._calls += 1
        if self._calls % 64 == 0:
            state.bank.refresh()  # vectors saved since: ready before a request names them
        if batch_update is None:
            return
        for slot in batch_update.removed:
            state.remove(slot)
        for slot, params, prompt_ids, _ in batch_update.added:
            state.add(slot, SteeringSpec.of(params.extra_args), len(prompt_ids or ()))
        for source, target, direction in batch_update.moved:
            state.move(source, target, swap=direction == MoveDirectionality.SWAP)
