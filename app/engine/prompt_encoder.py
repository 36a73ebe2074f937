"""Turning a prompt into token ids under the server's limits: the same for every generation backend, so a prompt
gets the same ids (and the same refusals) whichever backend serves it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the tokenizer is handed in: the fronts that import this module load no transformers
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
        return self.check_ids(ids, max_new_tokens)

    def check_ids(self, ids: Sequence[int], max_new_tokens: int, param: str = "prompt", limit: bool = True
                  ) -> list[int]:
        """Refuse token ids the model cannot take: none, one outside the vocabulary, or (``limit``) too many (422)."""
        if not ids:
            raise InvalidInput(f"{param} encodes to no tokens", param=param)
        vocab = len(self.tokenizer)
        bad = next((token for token in ids if not 0 <= token < vocab), None)
        if bad is not None:
            raise InvalidInput(f"token id {bad} is outside the vocabulary (0 … {vocab - 1})", param=param)
        if not limit:
            return list(ids)
        if len(ids) > self.max_prompt_tokens:
            raise InvalidInput(f"{param} has {len(ids)} tokens; the limit is {self.max_prompt_tokens}", param=param)
        if self.context is not None and len(ids) + max_new_tokens > self.context:
            raise InvalidInput(
                f"{param} ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"context of {self.context} tokens",
                param="max_new_tokens",
            )
        return list(ids)

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``, unchecked; by default as it appears inside a sequence (no special tokens)."""
        with self._lock:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text of a conversation, by the tokenizer's chat template, ending with the assistant header."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidInput("this model's tokenizer has no chat template; use /v1/completions with a prompt",
                               param="messages")
        with self._lock:
            try:
                text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception as exc:  # the template refused the conversation (e.g. roles out of order)
                raise InvalidInput(f"the chat template refused these messages: {exc}", param="messages") from exc
        return str(text)

    def text_of(self, ids: Sequence[int]) -> str:
        """Token ids as text, special tokens included (an echoed prompt given as ids)."""
        with self._lock:
            return str(self.tokenizer.decode(list(ids)))

    def token_text(self, token_id: int) -> str:
        """One token as text, special tokens included (a logprob entry's ``token``)."""
        with self._lock:
            return str(self.tokenizer.decode([token_id]))

    def decode(self, tokens: list[int]) -> str:
        with self._lock:
            return str(self.tokenizer.decode(tokens, skip_special_tokens=True))


def model_context(config: object) -> int | None:
    """The longest sequence the model takes, from its config (None when it does not say)."""
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if value else None
