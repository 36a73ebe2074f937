"""The loaded HF model as the science needs it: its layout, tokenizer and identity."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from app.model.adapter import ModelAdapter


@dataclass(frozen=True)
class ModelHandle:
    adapter: ModelAdapter
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    name: str
