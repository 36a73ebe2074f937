"""``POST /analogies``: A:B :: C:? answered with the composite the source pair implies.

The bank is the fitted combiner's relations when ``vectors/<model>/combiner.json`` is there and all of them are
loaded; otherwise every fine-tuned vector in the registry with plain softmax weights (the answer says which).
The relation scores and a multiple-choice pick run on the engine thread and stop when the client leaves; a
generated answer goes through the ordinary completion path with the composite as relation weights, so it is
batched with other requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.analogy.bank import Bank, query
from app.analogy.combiner import Combiner, bank_in_force
from app.analogy.datasets import AnalogyProblem
from app.analogy.solver import candidate_scores, infer_weights
from app.completions import CompletionInput, CompletionService
from app.engine.engine import Engine
from app.engine.offload import on_engine
from app.errors import InvalidInput
from app.fv.extraction import ModelHandle
from app.registry.registry import VectorRegistry

MAX_CHOICES = 32
MAX_TERM_CHARS = 200


@dataclass
class AnalogyService:
    model: ModelHandle
    engine: Engine
    registry: VectorRegistry
    completions: CompletionService

    def bank(self) -> tuple[Bank, Combiner]:
        """The bank and combiner in force now (vectors may have been added or deleted since start)."""
        return bank_in_force(self.registry, self.model.fingerprint)

    async def solve(self, a: str, b: str, c: str, choices: list[str] | None, max_new_tokens: int) -> dict[str, Any]:
        for param, term in (("a", a), ("b", b), ("c", c), *((f"choices[{i}]", x) for i, x in enumerate(choices or []))):
            if not term.strip():
                raise InvalidInput(f"{param} is empty; every term of an analogy needs text", param=param)
        a, b, c = a.strip(), b.strip(), c.strip()
        bank, combiner = self.bank()
        scores, weights = await on_engine(
            self.engine, lambda run: infer_weights(self.model, bank, combiner, [(a, b)], run=run))
        by_relation = {name: float(weight) for name, weight in zip(bank.names, weights[0].tolist(), strict=True)}
        answer: dict[str, Any]
        if choices:
            problem = AnalogyProblem(None, (a, b), [(c, choice.strip()) for choice in choices], 0)
            vector = {layer: block[0] for layer, block in bank.composite(weights).items()}
            (per_choice,) = await on_engine(
                self.engine, lambda run: candidate_scores(self.model, [problem], [vector], run=run))
            best = int(per_choice.argmax())
            answer = {"answer": choices[best].strip(), "choice_scores": [float(x) for x in per_choice.tolist()]}
        else:
            completion = await self.completions.complete(CompletionInput(
                prompt=query(self.model, c), relations=by_relation, max_new_tokens=max_new_tokens, stop=("\n",)))
            answer = {"answer": completion["text"].strip(), "choice_scores": None}
        return {
            "a": a, "b": b, "c": c, **answer,
            "weights": by_relation,
            "scores": {name: float(score) for name, score in zip(bank.names, scores[0].tolist(), strict=True)},
            "combiner": combiner.kind,
        }
