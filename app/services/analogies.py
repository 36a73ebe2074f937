"""``POST /analogies``: A:B :: C:? answered with the composite the source pair implies.

The bank is the fitted combiner's relations when ``vectors/<model>/combiner.json`` is there and all of them are
loaded; otherwise every fine-tuned vector in the registry with plain softmax weights (the answer says which).
The relation scores and a multiple-choice pick run on the HF model (the science seam) and stop when the client
leaves; a generated answer goes through the ordinary completion path with the composite as relation weights, so
it is batched with other requests on whichever generation backend serves.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.analogy.basis import Bank, query
from app.analogy.combiner import Combiner, bank_in_force
from app.analogy.problems import AnalogyProblem
from app.analogy.solver import candidate_scores, infer_weights
from app.errors import InvalidInput
from app.model.runner import ModelRunner, offload
from app.registry.registry import VectorRegistry
from app.services.completions import CompletionInput, CompletionService
from app.services.inputs import AnalogyInput
from app.services.results import AnalogyResponse


@dataclass
class AnalogyService:
    runner: ModelRunner
    registry: VectorRegistry
    completions: CompletionService

    def bank(self) -> tuple[Bank, Combiner]:
        """The bank and combiner in force now (vectors may have been added or deleted since start)."""
        return bank_in_force(self.registry, self.runner.handle.fingerprint)

    async def solve(self, problem: AnalogyInput) -> AnalogyResponse:
        choices = problem.choices
        terms = (("a", problem.a), ("b", problem.b), ("c", problem.c),
                 *((f"choices[{i}]", x) for i, x in enumerate(choices or [])))
        for param, term in terms:
            if not term.strip():
                raise InvalidInput(f"{param} is empty; every term of an analogy needs text", param=param)
        a, b, c = problem.a.strip(), problem.b.strip(), problem.c.strip()
        bank, combiner = self.bank()
        model = self.runner.handle
        scores, weights = await offload(self.runner, lambda run: infer_weights(model, bank, combiner, [(a, b)],
                                                                                run=run))
        by_relation = {name: float(weight) for name, weight in zip(bank.names, weights[0].tolist(), strict=True)}
        choice_scores: list[float] | None = None
        if choices:
            source = AnalogyProblem(None, (a, b), [(c, choice.strip()) for choice in choices], 0)
            (vector,) = bank.composites(weights)
            (per_choice,) = await offload(self.runner, lambda run: candidate_scores(model, [source], [vector],
                                                                                     run=run))
            choice_scores = [float(x) for x in per_choice.tolist()]
            answer = choices[int(per_choice.argmax())].strip()
        else:
            completion = await self.completions.complete(CompletionInput(
                prompt=query(model, c), relations=by_relation, max_new_tokens=problem.max_new_tokens, stop=("\n",)))
            answer = completion.text.strip()
        return AnalogyResponse(
            a=a, b=b, c=c, answer=answer, choice_scores=choice_scores, weights=by_relation,
            scores={name: float(score) for name, score in zip(bank.names, scores[0].tolist(), strict=True)},
            combiner=combiner.kind,
        )
