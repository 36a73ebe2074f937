"""Solving A:B :: C:? with a composite function vector, and measuring it on analogy datasets.

The source pair's relation scores give the composite weights (through the combiner); the composite is added at
the last token of ``"Q: C\\nA:"``. A multiple-choice problem picks the candidate D with the highest
``log p(D | "Q: C\\nA:", composite)``; the unsteered baseline picks by ``log p(D | "A : B :: C :")``, and the
oracle uses the vector of the problem's known relation instead of the composite.
"""

from __future__ import annotations

import torch
from torch import Tensor

from app.analogy.basis import Bank, query, relation_scores, source_facts
from app.analogy.combiner import Combiner
from app.analogy.continuations import ScoreRow, score_rows
from app.analogy.problems import AnalogyProblem
from app.fv.prompts import bos_prefix
from app.model.handle import ModelHandle
from app.model.runner import Runner, run_here


def infer_weights(
    model: ModelHandle, bank: Bank, combiner: Combiner, sources: list[tuple[str, str]], *,
    run: Runner[Tensor] = run_here,
) -> tuple[Tensor, Tensor]:
    """(scores, weights), both ``[N, K]``, for each source pair A:B (the scores as measured, not normalised)."""
    scores = relation_scores(model, bank, sources, run=run)
    facts = source_facts(model, sources, run=run) if combiner.needs_facts else None
    return scores, combiner.weights(scores, facts)


def baseline_prompt(model: ModelHandle, source: tuple[str, str], c: str) -> str:
    return bos_prefix(model.tokenizer, model.adapter.adds_bos) + f"{source[0]} : {source[1]} :: {c} :"


def candidate_scores(
    model: ModelHandle, problems: list[AnalogyProblem], vectors: list[dict[int, Tensor] | None], *,
    run: Runner[Tensor] = run_here,
) -> list[Tensor]:
    """Per problem, the score of each candidate: steered ``"Q: C\\nA:"`` where the problem has a vector, else the
    unsteered ``"A : B :: C :"`` baseline."""
    rows: list[ScoreRow] = []
    for problem, vector in zip(problems, vectors, strict=True):
        for c, d in problem.candidates:
            prompt = baseline_prompt(model, problem.source, c) if vector is None else query(model, c)
            rows.append(ScoreRow(prompt, d, vector))
    flat = score_rows(model.adapter, model.tokenizer, rows, run=run).tolist()
    out, at = [], 0
    for problem in problems:
        out.append(torch.tensor(flat[at : at + len(problem.candidates)]))
        at += len(problem.candidates)
    return out
