"""Do the bank's vectors steer a chat turn as well as the raw ``"Q: x\\nA:"`` prompt they were first made for?

Most users reach the model through its chat template, where the user's turn is the input word alone. For one
relation's test pairs, :func:`relation_row` greedily generates a few tokens in four conditions — raw and chat, each
with the relation's vector added at the prompt's last token and every generated token (the server's default ``fv``
positions) and without — and
counts an item right when the **first word** of the answer is the first word of an accepted answer (case-folded;
``"Cold."`` and ``"cold, of course"`` both answer ``cold``). Generation, not the first token, because a chat answer
often starts with a capital or a quote; one scoring rule for both forms, so the two figures compare.

``benchmarks/finetune_report.py``'s ``relations`` part adds these figures to every relation's row, and the report
pools them over the bank with a paired bootstrap interval on the chat − raw difference
(``benchmarks/intervals.py``).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedTokenizerBase

from app.fv.forward import encode_left_padded, model_device
from app.fv.pairs import Pair
from app.fv.prompts import Template, chat_query
from app.model.adapter import ModelAdapter
from app.model.steering import BatchSteering, steered

NEW_TOKENS = 6  # enough for the first word of every shipped answer and a leading quote or space
BATCH = 16
WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
CONDITIONS = ("raw", "raw_steered", "chat", "chat_steered")


def first_word(text: str) -> str:
    """The first word of ``text``, case-folded ('' when it has none)."""
    match = WORD.search(text)
    return match.group(0).casefold() if match else ""


def is_right(generated: str, pair: Pair) -> bool:
    """Whether the generated answer's first word is the first word of an accepted answer."""
    return first_word(generated) in {first_word(answer) for answer in pair.answers} - {""}


def greedy(adapter: ModelAdapter, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
           vector: tuple[int, Tensor] | None, new_tokens: int = NEW_TOKENS) -> list[str]:
    """Greedy continuations of ``prompts``; ``vector = (layer, v)`` is added at each prompt's last token and at every
    generated token, as the server's ``fv`` positions do."""
    device = model_device(adapter)
    ids, mask = encode_left_padded(tokenizer, prompts, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    steering = step = None
    if vector is not None:
        rows = {vector[0]: vector[1].float().reshape(1, -1).expand(len(prompts), -1)}
        at = torch.zeros(ids.shape, dtype=torch.bool)
        at[:, -1] = True
        steering = BatchSteering(rows, at)
        step = BatchSteering(rows, torch.ones((len(prompts), 1), dtype=torch.bool))
    cache = DynamicCache()
    tokens: list[Tensor] = []
    with torch.inference_mode():
        with steered(adapter, steering):
            logits = adapter.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                   past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        for _ in range(new_tokens):
            token = logits.argmax(dim=-1, keepdim=True)
            tokens.append(token)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            positions = positions[:, -1:] + 1
            with steered(adapter, step):
                logits = adapter.model(input_ids=token, attention_mask=mask, position_ids=positions,
                                       past_key_values=cache, use_cache=True).logits[:, -1]
    generated = torch.cat(tokens, dim=1).tolist()
    return [str(tokenizer.decode(row, skip_special_tokens=True)) for row in generated]


def relation_row(adapter: ModelAdapter, tokenizer: PreTrainedTokenizerBase, prefix: str, pairs: list[Pair],
                 vector: tuple[int, Tensor]) -> dict[str, Any]:
    """Per condition, which test items the first generated word gets right (0/1 lists, in ``pairs`` order)."""
    template = Template()
    prompts = {"raw": [prefix + template.query(pair.input) for pair in pairs],
               "chat": [chat_query(tokenizer, pair.input) for pair in pairs]}
    row: dict[str, Any] = {}
    for form, texts in prompts.items():
        for steer in (False, True):
            outputs: list[str] = []
            for start in range(0, len(texts), BATCH):
                outputs += greedy(adapter, tokenizer, texts[start : start + BATCH], vector if steer else None)
            name = f"{form}_steered" if steer else form
            row[name] = [int(is_right(text, pair)) for text, pair in zip(outputs, pairs, strict=True)]
            row[f"{name}_examples"] = outputs[:3]
    return row


