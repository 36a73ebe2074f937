"""Turning a prompt into token ids under the server's limits: the same for every generation backend, so a prompt
gets the same ids (and the same refusals) whichever backend serves it."""

from __future__ import annotations

import threading

from transformers import PreTrainedTokenizerBase

from app.errors import InvalidInput


class PromptEncoder:
    """Thread-safe: fast tokenizers must not be used from two threads at once."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_prompt_tokens: int, context: int | None) -> None:
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.context = context
        self._lock = threading.Lock()

    def encode(self, prompt: str, max_new_tokens: int) -> list[int]:
        """Token ids of ``prompt``; refuses one over the prompt limit or the model's context (422)."""
        with self._lock:
            ids: list[int] = self.tokenizer(prompt).input_ids
        if not ids:
            raise InvalidInput("prompt encodes to no tokens", param="prompt")
        if len(ids) > self.max_prompt_tokens:
            raise InvalidInput(f"prompt has {len(ids)} tokens; the limit is {self.max_prompt_tokens}", param="prompt")
        if self.context is not None and len(ids) + max_new_tokens > self.context:
            raise InvalidInput(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"context of {self.context} tokens",
                param="max_new_tokens",
            )
        return ids

    def decode(self, tokens: list[int]) -> str:
        with self._lock:
            return str(self.tokenizer.decode(tokens, skip_special_tokens=True))


def model_context(config: object) -> int | None:
    """The longest sequence the model takes, from its config (None when it does not say)."""
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if value else None
