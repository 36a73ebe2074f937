"""Relation-inference choices measured on the fitted combiner's own validation analogies (issue 16, deliverable 3):
what the validation says about each, so that none is adopted or rejected on the evaluation sets.

Each validation analogy A:B :: C:D (two test-split pairs of one shipped relation) becomes a multiple-choice problem
with four candidate pairs: the true C:D, a pair of another shipped relation, two inputs of the analogy's relation
and two of its outputs (seeded; the kinds of distractor in Ushio et al.'s multiple-choice sets). Three answers:

- *composite*: the fitted combiner's weights from A:B;
- *composite without its relation*: the same with the analogy's own relation taken out of the bank (its score
  masked before the combiner, its weight zeroed after) — the case the unsteered fallback is for, a relation the
  bank lacks;
- *unsteered*: ``"A : B :: C :"``, as in the evaluation.

Choices measured:

1. **unsteered fallback**: answer unsteered when the largest weight is below τ, with τ the best on the two cases
   above taken together (chosen and reported on the same analogies, so the gain is an upper bound);
2. **product of experts**: rank candidates by composite log p + α · unsteered log p;
3. **source-pair templates**: how often the largest raw relation score is the analogy's own relation when the
   source pair is scored with other templates than the one the vectors were trained on, alone or averaged with it.

Run by ``benchmarks/finetune_report.py --parts choices``, which writes the figures into ``docs/results.md``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from app.analogy.basis import SourceFacts, relation_scores, source_facts
from app.analogy.combiner import Combiner, bank_in_force
from app.analogy.problems import AnalogyProblem
from app.analogy.solver import candidate_scores
from app.bundle import ModelBundle
from app.fv.pairs import relation_pairs
from app.fv.prompts import bos_prefix
from fvsteer_lab.fitting import FitOptions, TrainingAnalogy, split_analogies

# Other source-pair templates (the vectors were trained on Template().query, "Q: {a}\nA:", named TRAINED).
TRAINED = "trained query"
TEMPLATES = {"input/output": "input: {}\noutput:", "colon": "{} :", "arrow": "{} ->"}
ALPHAS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
DISTRACTOR_SEED = 1


def multiple_choice(items: list[TrainingAnalogy], relations: list[str]) -> list[AnalogyProblem]:
    """Four candidate pairs per analogy: the true one, another relation's pair, two inputs, two outputs."""
    rng = random.Random(DISTRACTOR_SEED)
    pairs = {name: [(p.input, p.output) for p in relation_pairs(name)] for name in relations}
    problems = []
    for item in items:
        other = rng.choice([name for name in relations if name != item.relation])
        (input_1, output_1), (input_2, output_2) = rng.sample([p for p in pairs[item.relation] if p != item.target], 2)
        candidates = [item.target, rng.choice(pairs[other]), (input_1, input_2), (output_1, output_2)]
        rng.shuffle(candidates)
        problems.append(AnalogyProblem(item.relation, item.source, candidates, candidates.index(item.target)))
    return problems


def without_own(combiner: Combiner, scores: Tensor, own: Tensor, facts: SourceFacts | None = None) -> Tensor:
    """The combiner's weights when each problem's own relation is not in the bank."""
    rows = torch.arange(len(own))
    masked = scores.clone()
    masked[rows, own] = -1e4
    weights = combiner.weights(masked, facts)
    weights[rows, own] = 0.0
    return weights


def best_fallback(largest: tuple[Tensor, Tensor], steered: tuple[Tensor, Tensor], unsteered: Tensor) -> dict[str, Any]:
    """The threshold on the largest weight that maximises the mean accuracy of the two cases (no fallback is
    τ = −∞); ``largest``/``steered`` are (in bank, without its relation)."""
    candidates = [float("-inf"), *sorted(set(torch.cat(largest).tolist()))]
    best: dict[str, Any] | None = None
    for tau in candidates:
        accuracy = [float(torch.where(weight < tau, unsteered, right).float().mean())
                    for weight, right in zip(largest, steered, strict=True)]
        if best is None or sum(accuracy) > best["in_bank"] + best["without_own"] + 1e-9:
            best = {"tau": tau, "in_bank": accuracy[0], "without_own": accuracy[1],
                    "fired_in_bank": float((largest[0] < tau).float().mean()),
                    "fired_without_own": float((largest[1] < tau).float().mean())}
    assert best is not None
    return best


def measure(local: ModelBundle, say: Callable[[str], None]) -> dict[str, Any]:
    model = local.model
    bank, combiner = bank_in_force(local.registry, model.fingerprint)
    options = FitOptions(**{key: value for key, value in combiner.metrics.get("options", {}).items()
                            if key in ("per_relation", "seed")})
    valid = split_analogies(bank.names, options.per_relation, options.seed).valid
    problems = multiple_choice(valid, bank.names)
    answers = torch.tensor([problem.answer for problem in problems])
    own = torch.tensor([bank.names.index(problem.relation or "") for problem in problems])
    say(f"choices: {len(problems)} validation analogies over {len(bank)} relations ({combiner.kind} combiner)")
    sources = [problem.source for problem in problems]
    scores = relation_scores(model, bank, sources)
    facts = source_facts(model, sources) if combiner.needs_facts else None
    weights = {"in_bank": combiner.weights(scores, facts), "without_own": without_own(combiner, scores, own, facts)}
    conditions: dict[str, list[dict[int, Tensor] | None]] = {"unsteered": [None] * len(problems)}
    conditions.update({name: list(bank.composites(value)) for name, value in weights.items()})
    answered = {name: torch.stack(candidate_scores(model, problems, vectors)) for name, vectors in conditions.items()}
    right = {name: value.argmax(dim=-1) == answers for name, value in answered.items()}
    say("choices: multiple choice scored")
    ensemble = [{"alpha": alpha, **{name: float(((answered[name] + alpha * answered["unsteered"])
                                                  .argmax(dim=-1) == answers).float().mean())
                                     for name in weights}} for alpha in ALPHAS]
    fallback = best_fallback((weights["in_bank"].max(dim=-1).values, weights["without_own"].max(dim=-1).values),
                             (right["in_bank"], right["without_own"]), right["unsteered"])
    prefix = bos_prefix(model.tokenizer, model.adapter.adds_bos)
    by_template = {TRAINED: scores}
    for name, template in TEMPLATES.items():
        by_template[name] = relation_scores(model, bank, [problem.source for problem in problems],
                                            prompt=templated(prefix, template))
        say(f"choices: template {name} scored")
    trained = by_template[TRAINED]
    variants = dict(by_template)
    variants.update({f"{TRAINED} + {name}": (trained + by_template[name]) / 2 for name in TEMPLATES})
    variants["all four"] = torch.stack(list(by_template.values())).mean(dim=0)
    return {
        "n": len(problems), "relations": len(bank), "combiner": combiner.kind,
        "accuracy": {name: float(value.float().mean()) for name, value in right.items()},
        "oracle_per_item": {name: float((right[name] | right["unsteered"]).float().mean()) for name in weights},
        "fallback": fallback, "ensemble": ensemble,
        "templates": {name: float((value.argmax(dim=-1) == own).float().mean()) for name, value in variants.items()},
        "combiner_oracle_first": float((weights["in_bank"].argmax(dim=-1) == own).float().mean()),
    }


def templated(prefix: str, template: str) -> Callable[[str], str]:
    return lambda a: prefix + template.format(a)

