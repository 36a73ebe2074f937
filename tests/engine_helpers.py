"""Building the ``hf`` engine around a tiny model, and steering it with vectors put in its bank."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.engine.bank import VectorBank
from app.engine.engine import Engine
from app.engine.requests import BankSteering
from app.model.adapter import adapt
from app.model.handle import ModelHandle
from app.model.loading import LoadedModel

_names = itertools.count()


def tiny_engine(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = "tiny", *,
                max_batch: int = 16, max_queue: int = 64, max_prompt_tokens: int = 128) -> Engine:
    """An engine (not started) over ``model`` with an empty vector bank."""
    adapter = adapt(model, tokenizer)
    cpu = torch.device("cpu")
    loaded = LoadedModel(model, tokenizer, name, cpu, torch.float32)
    bank = VectorBank(adapter.n_layers, adapter.d_model, cpu, name)
    return Engine(loaded, ModelHandle(adapter, tokenizer, "tiny-fingerprint", name), bank, max_batch=max_batch,
                  max_queue=max_queue, max_prompt_tokens=max_prompt_tokens)


def bank_steering(bank: VectorBank, vectors: dict[int, Tensor] | None, all_positions: bool = False
                  ) -> BankSteering | None:
    """Put each ``{layer: vector}`` in the bank under a new name and steer with weight 1 on each: the row gets
    exactly those vectors at those layers."""
    if vectors is None:
        return None
    weights = {}
    for layer, vector in vectors.items():
        name = f"v{next(_names)}"
        bank.put(name, layer, vector)
        weights[name] = 1.0
    return BankSteering(weights, positions="all" if all_positions else "fv")
