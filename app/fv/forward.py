"""Small helpers every FV computation shares: left-padded batches and a forward with position ids."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from app.model.adapter import ModelAdapter


def encode_left_padded(tokenizer: PreTrainedTokenizerBase, texts: list[str], device: torch.device) -> tuple[
    Tensor, Tensor
]:
    """Token ids and attention mask, padded on the left so the last position is every row's last token."""
    encoded: list[list[int]] = [tokenizer(text).input_ids for text in texts]
    width = max(len(ids) for ids in encoded)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    ids = torch.full((len(texts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        mask[row, width - len(tokens) :] = 1
    return ids.to(device), mask.to(device)


def last_token_logits(adapter: ModelAdapter, ids: Tensor, mask: Tensor, **kwargs: Any) -> Tensor:
    """Logits at the last position of each (left-padded) row."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = adapter.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **kwargs)
    logits: Tensor = out.logits[:, -1, :].float()
    return logits


def model_device(adapter: ModelAdapter) -> torch.device:
    return next(adapter.model.parameters()).device
