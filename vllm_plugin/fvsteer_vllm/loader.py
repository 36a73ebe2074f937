"""``--load-format fvsteer``: vLLM's default loader, then the steering installed before vLLM compiles the model or
captures graphs.

Configured by environment: ``FVSTEER_BANK_DIR`` (the registry folder of the served model; required) and
``FVSTEER_BANK_CAPACITY`` (bank rows, fixed for the life of the server; default 128).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from vllm.config import ModelConfig, VllmConfig
from vllm.config.load import LoadConfig
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.model_executor.model_loader.base_loader import BaseModelLoader
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

from fvsteer_vllm import runtime
from fvsteer_vllm.layers import check_parallelism, decoder_layers, wrap_layers
from fvsteer_vllm.state import SteeringState

log = logging.getLogger("vllm.fvsteer")  # under vLLM's logger: its handlers and format
DEFAULT_CAPACITY = 128


def bank_folder() -> Path:
    folder = os.environ.get("FVSTEER_BANK_DIR")
    if not folder:
        raise ValueError("fvsteer: set FVSTEER_BANK_DIR to the fvsteer registry folder of the served model")
    return Path(folder)


class FvsteerModelLoader(BaseModelLoader):
    def __init__(self, load_config: LoadConfig) -> None:
        super().__init__(load_config)
        self.inner = DefaultModelLoader(dataclasses.replace(load_config, load_format="auto"))

    def download_model(self, model_config: ModelConfig) -> None:
        self.inner.download_model(model_config)

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        self.inner.load_weights(model, model_config)

    def load_model(self, vllm_config: VllmConfig, model_config: ModelConfig, prefix: str = "") -> nn.Module:
        model: nn.Module = super().load_model(vllm_config, model_config, prefix)
        install(model, vllm_config)
        return model


def install(model: nn.Module, vllm_config: VllmConfig) -> SteeringState:
    check_parallelism(vllm_config.parallel_config.pipeline_parallel_size)
    text_config = vllm_config.model_config.hf_text_config
    scheduler = vllm_config.scheduler_config
    device = next(model.parameters()).device
    n_layers = len(decoder_layers(model))
    max_tokens = max(scheduler.max_num_batched_tokens, vllm_config.compilation_config.max_cudagraph_capture_size or 0)
    state = SteeringState(
        bank_folder(), int(os.environ.get("FVSTEER_BANK_CAPACITY", DEFAULT_CAPACITY)), n_layers,
        int(text_config.hidden_size), scheduler.max_num_seqs, max_tokens + 8, device,
    )
    state.bank.refresh()
    wrapped = wrap_layers(model, state)
    model.register_forward_pre_hook(_before_forward(state), with_kwargs=True)
    runtime.STATE = state
    log.info("fvsteer: steering installed on %d layers; bank %s holds %d of %d rows", wrapped,
             state.bank.folder.folder, len(state.bank.folder.holding()), state.bank.capacity)
    return state


def _before_forward(state: SteeringState) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        if positions is None:
            return
        if positions.dim() > 1:  # M-RoPE: [3, T]; the text position is the last row
            positions = positions[-1]
        state.prepare(_query_start_loc(), positions)

    return hook


def _query_start_loc() -> torch.Tensor | None:
    """This forward's ``query_start_loc`` (None in dummy and profiling runs, which carry no requests)."""
    if not is_forward_context_available():
        return None
    metadata = get_forward_context().attn_metadata
    if not metadata:
        return None
    if not isinstance(metadata, dict):  # a list: micro-batches (DBO), whose token ranges this does not follow
        raise RuntimeError("fvsteer: steering does not support micro-batching (dual batch overlap); turn it off")
    first = next(iter(metadata.values()))
    qsl = getattr(first, "query_start_loc", None)
    if qsl is None:
        raise RuntimeError(f"fvsteer: attention metadata {type(first).__name__} has no query_start_loc")
    return qsl  # type: ignore[no-any-return]
