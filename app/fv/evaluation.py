"""First-token accuracy of prompts with and without a vector, and the five-way evaluation
of Todd et al. (zero-shot, zero-shot + FV, 10-shot, shuffled 10-shot, shuffled 10-shot + FV)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from app.fv.answers import AnswerSets
from app.fv.forward import encode_left_padded, last_token_logits, model_device
from app.fv.pairs import Pair
from app.fv.prompts import PromptItem, Template, icl_prompts, zero_shot_prompts
from app.model.adapter import ModelAdapter
from app.model.runner import Runner, run_here
from app.model.steering import BatchSteering, steered

TOP_K = (1, 3)


def _per_answer(
    adapter: ModelAdapter,
    tokenizer: PreTrainedTokenizerBase,
    items: list[PromptItem],
    vector: tuple[int, Tensor] | None,
    measure: Callable[[Tensor, AnswerSets], Tensor],
    batch_size: int,
    run: Runner[Tensor],
) -> Tensor:
    """``measure(logits, answers)`` per item over batches of last-position logits, optionally steered by
    ``vector = (layer, v)`` added at the last prompt token (the FV policy)."""
    device = model_device(adapter)
    parts: list[Tensor] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]

        def forward(chunk: list[PromptItem] = chunk) -> Tensor:
            ids, mask = encode_left_padded(tokenizer, [item.text for item in chunk], device)
            with torch.inference_mode(), steered(adapter, _last_token_steering(vector, ids.shape)):
                logits = last_token_logits(adapter, ids, mask)
            return measure(logits, AnswerSets.of([item.answer_tokens for item in chunk], logits.device)).cpu()

        parts.append(run(forward))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def ranks_of_answers(
    adapter: ModelAdapter,
    tokenizer: PreTrainedTokenizerBase,
    items: list[PromptItem],
    vector: tuple[int, Tensor] | None = None,
    *,
    batch_size: int = 16,
    run: Runner[Tensor] = run_here,
) -> Tensor:
    """Rank (0 = top-1) of each item's best accepted answer token in the last-position logits."""
    return _per_answer(adapter, tokenizer, items, vector, lambda logits, answers: answers.rank(logits), batch_size,
                       run)


def _last_token_steering(vector: tuple[int, Tensor] | None, shape: torch.Size) -> BatchSteering | None:
    if vector is None:
        return None
    positions = torch.zeros(shape, dtype=torch.bool)
    positions[:, -1] = True
    return BatchSteering({vector[0]: vector[1].reshape(1, -1).expand(shape[0], -1)}, positions)


def accuracy(ranks: Tensor, k: int = 1) -> float:
    return float((ranks < k).float().mean()) if ranks.numel() else 0.0


SETTINGS = ("zero_shot", "zero_shot_fv", "icl", "icl_shuffled", "icl_shuffled_fv")


@dataclass(frozen=True)
class Evaluation:
    """Top-1 and top-3 accuracy of the five conditions.

    ``icl`` is clean 10-shot accuracy over all ``n + n_dropped`` test items; the four others are measured on
    the ``n`` items clean 10-shot prompting gets right (Todd et al.'s filter), so a vector is judged on what
    the model can do.
    """

    zero_shot: dict[str, float]
    zero_shot_fv: dict[str, float]
    icl: dict[str, float]
    icl_shuffled: dict[str, float]
    icl_shuffled_fv: dict[str, float]
    n: int
    n_dropped: int



def _scores(ranks: Tensor) -> dict[str, float]:
    return {f"top{k}": accuracy(ranks, k) for k in TOP_K}


def evaluate(
    adapter: ModelAdapter,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    prefix: str,
    demo_pool: list[Pair],
    test: list[Pair],
    vector: tuple[int, Tensor],
    *,
    seed: int = 0,
    shots: int = 10,
    run: Runner[Tensor] = run_here,
) -> Evaluation:
    """Todd et al.'s evaluation; items the model misses with clean ``shots``-shot prompts are left out and counted.

    Demonstrations for a test item come from ``demo_pool`` minus the item itself.
    """
    rng = random.Random(seed)
    clean = icl_prompts(tokenizer, template, prefix, demo_pool, test, rng, shots)
    clean_ranks = ranks_of_answers(adapter, tokenizer, clean, run=run)
    kept = [index for index, rank in enumerate(clean_ranks.tolist()) if rank == 0]
    kept_pairs = [test[index] for index in kept]
    shuffled = icl_prompts(tokenizer, template, prefix, demo_pool, kept_pairs, rng, shots, shuffle_labels=True)
    zero = zero_shot_prompts(tokenizer, template, prefix, kept_pairs)
    return Evaluation(
        zero_shot=_scores(ranks_of_answers(adapter, tokenizer, zero, run=run)),
        zero_shot_fv=_scores(ranks_of_answers(adapter, tokenizer, zero, vector, run=run)),
        icl=_scores(clean_ranks),
        icl_shuffled=_scores(ranks_of_answers(adapter, tokenizer, shuffled, run=run)),
        icl_shuffled_fv=_scores(ranks_of_answers(adapter, tokenizer, shuffled, vector, run=run)),
        n=len(kept),
        n_dropped=len(test) - len(kept),
    )
