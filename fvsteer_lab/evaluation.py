"""Measuring the solver on analogy datasets: baseline, softmax and fitted composite, the oracle relation and three
controls per problem, with how well the weights identify the relation (``fvsteer analogies``, the report).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from app.analogy.basis import Bank
from app.analogy.combiner import Combiner
from app.analogy.problems import AnalogyProblem
from app.analogy.solver import candidate_scores, infer_weights
from app.model.handle import ModelHandle
from app.model.runner import Runner, run_here

# Dataset relation labels → the bank relation that expresses the same relation in the same direction (checked
# against each label's pairs: Ushio et al.'s BATS E01 and Google's capital sets go capital → country, so they map to
# `city-country`; BATS D02/D06 and Google gram2 go base → prefixed word, the reverse of `un-`/`re-`/`in-adjective-base`,
# so they have none). Labels with no such relation are left out and get no oracle condition.
ORACLE_RELATIONS: dict[str, str] = {
    # UCLA VAT ("Function" pairs an action with an agent, object or product: no one bank relation matches)
    "Synonym": "synonym",
    "Opposite": "antonym",
    "Category Members": "category-member",
    # BATS (Ushio et al.'s multiple-choice form)
    "I01 [noun - plural_reg]": "singular-plural",
    "I02 [noun - plural_irreg]": "singular-plural",
    "I03 [adj - comparative]": "comparative",
    "I04 [adj - superlative]": "adjective-superlative",
    "I05 [verb_inf - 3pSg]": "verb-third-person",
    "I06 [verb_inf - Ving]": "verb-present-participle",
    "I07 [verb_inf - Ved]": "present-past",
    "D01 [noun+less_reg]": "noun-less-adjective",
    "D03 [adj+ly_reg]": "adjective-adverb",
    "D05 [adj+ness_reg]": "adjective-ness-noun",
    "D07 [verb+able_reg]": "verb-able-adjective",
    "D08 [verb+er_irreg]": "verb-agent",
    "D09 [verb+tion_irreg]": "verb-tion-noun",
    "D10 [verb+ment_irreg]": "verb-ment-noun",
    "E01 [country - capital]": "city-country",
    "E02 [country - language]": "country-language",
    "E06 [animal - young]": "animal-young",
    "E08 [animal - shelter]": "animal-habitat",
    "E09 [things - color]": "object-color",
    "E10 [male - female]": "male-female",
    "L01 [hypernyms - animals]": "member-category",
    "L02 [hypernyms - misc]": "member-category",
    "L03 [hyponyms - misc]": "category-member",
    "L04 [meronyms - substance]": "thing-material",
    "L05 [meronyms - member]": "animal-collective",
    "L06 [meronyms - part]": "whole-part",
    "L07 [synonyms - intensity]": "mild-extreme",
    "L08 [synonyms - exact]": "synonym",
    "L09 [antonyms - gradable]": "antonym",
    "L10 [antonyms - binary]": "antonym-binary",
    # Google
    "capital-common-countries": "city-country",
    "capital-world": "city-country",
    "city-in-state": "us-city-state",
    "currency": "country-currency",
    "family": "male-female",
    "gram1-adjective-to-adverb": "adjective-adverb",
    "gram3-comparative": "comparative",
    "gram4-superlative": "adjective-superlative",
    "gram5-present-participle": "verb-present-participle",
    "gram6-nationality-adjective": "country-adjective",
    "gram8-plural": "singular-plural",
    "gram9-plural-verbs": "verb-third-person",
}



@dataclass
class ConditionCounts:
    correct: int = 0
    n: int = 0

    def add(self, right: bool) -> None:
        self.correct += int(right)
        self.n += 1

    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None


# Controls: how much of the composite's gain needs the source pair's relation at all. ``uniform``: every bank vector
# at weight 1/K; ``bias_only``: the combiner's bias alone (what it adds whatever the source); ``shuffled_source``: the
# weights another problem's source pair implies (a seeded derangement over the whole set).
CONTROLS = ("uniform", "bias_only", "shuffled_source")


@dataclass
class AnalogyReport:
    """Accuracy per condition (baseline, softmax, composite, oracle, the controls), overall and per relation type.

    Per type, ``oracle_first`` is how often the largest weight is on the oracle relation, ``family_first`` how often
    it is on a relation of the oracle's family (:mod:`fvsteer_lab.families`), ``oracle_rr`` the reciprocal rank of
    the oracle relation among the weights, and ``first_relations`` names the relations the largest weight falls on
    most often. ``outcomes`` keeps every problem's right (1) or wrong (0) per condition, in problem order (None where a
    condition does not apply), so paired intervals and the regret can be computed from the figures file."""

    overall: dict[str, ConditionCounts] = field(default_factory=lambda: defaultdict(ConditionCounts))
    by_relation: dict[str, dict[str, ConditionCounts]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(ConditionCounts)))
    picked_oracle: ConditionCounts = field(default_factory=ConditionCounts)
    picked_family: ConditionCounts = field(default_factory=ConditionCounts)
    reciprocal_ranks: list[float] = field(default_factory=list)
    # Per relation type, which bank relation the largest weight fell on, and how often.
    first: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    outcomes: dict[str, list[int | None]] = field(default_factory=lambda: defaultdict(list))

    def add(self, relation: str, condition: str, right: bool) -> None:
        self.overall[condition].add(right)
        self.by_relation[relation][condition].add(right)

    def regret(self) -> float | None:
        """Oracle minus composite accuracy, on the problems that have an oracle relation."""
        pairs = [(oracle, composite) for oracle, composite in zip(self.outcomes["oracle"], self.outcomes["composite"],
                                                                  strict=True) if oracle is not None]
        return sum(o - (c or 0) for o, c in pairs) / len(pairs) if pairs else None

    def as_dict(self) -> dict[str, object]:
        def table(counts: dict[str, ConditionCounts]) -> dict[str, object]:
            out: dict[str, object] = {condition: item.accuracy() for condition, item in counts.items()}
            out["n"] = max((item.n for item in counts.values()), default=0)
            return out

        overall = table(self.overall)
        return {"baseline": overall.get("baseline"), "composite": overall.get("composite"),
                "softmax": overall.get("softmax"), "oracle": overall.get("oracle"),
                "controls": {name: overall.get(name) for name in CONTROLS},
                "n": overall["n"], "n_oracle": self.overall["oracle"].n if "oracle" in self.overall else 0,
                "weights_pick_oracle": self.picked_oracle.accuracy(),
                "weights_pick_family": self.picked_family.accuracy(),
                "oracle_mrr": (sum(self.reciprocal_ranks) / len(self.reciprocal_ranks)
                               if self.reciprocal_ranks else None),
                "regret": self.regret(),
                "outcomes": dict(self.outcomes),
                "by_relation": {relation: table(counts) for relation, counts in sorted(self.by_relation.items())},
                "first_relations": {relation: dict(counts.most_common(3))
                                    for relation, counts in sorted(self.first.items())}}


def _derangement(n: int, seed: int = 0) -> list[int]:
    """A seeded permutation of ``range(n)`` that moves every index (the identity when ``n < 2``)."""
    if n < 2:
        return list(range(n))
    order = list(range(n))
    rng = random.Random(seed)
    while any(i == j for i, j in enumerate(order)):
        rng.shuffle(order)
    return order


def evaluate_analogies(
    model: ModelHandle, bank: Bank, combiner: Combiner, problems: list[AnalogyProblem], *,
    batch: int = 64, run: Runner[Tensor] = run_here, progress: Callable[[int, int], None] = lambda done, total: None,
    families: dict[str, list[str]] | None = None,
) -> AnalogyReport:
    """Baseline, plain-softmax composite, fitted composite, oracle and control accuracy of multiple-choice problems.
    ``families`` default to the ones stored with the combiner (each relation alone when there are none)."""
    families = families if families is not None else combiner.metrics.get("families", {})
    softmax = Combiner.softmax(combiner.relations)  # raw scores, T = 1: the unfitted start
    report = AnalogyReport()
    all_scores, all_weights = infer_weights(model, bank, combiner, [p.source for p in problems], run=run)
    shuffled = all_weights[_derangement(len(problems))]
    k = len(bank.names)
    for start in range(0, len(problems), batch):
        chunk = problems[start : start + batch]
        scores, weights = all_scores[start : start + batch], all_weights[start : start + batch]
        plain = softmax.weights(scores)
        oracles = [ORACLE_RELATIONS.get(p.relation or "") for p in chunk]
        oracles = [name if name in bank.names else None for name in oracles]
        conditions: dict[str, list[dict[int, Tensor] | None]] = {
            "baseline": [None] * len(chunk),
            "composite": list(bank.composites(weights)),
            "softmax": list(bank.composites(plain)),
            "uniform": list(bank.composites(torch.full((len(chunk), k), 1.0 / k))),
            "bias_only": list(bank.composites(combiner.bias.expand(len(chunk), k))),
            "shuffled_source": list(bank.composites(shuffled[start : start + batch])),
        }
        results = {name: candidate_scores(model, chunk, vectors, run=run) for name, vectors in conditions.items()}
        with_oracle = [i for i, name in enumerate(oracles) if name is not None]
        oracle_scores = candidate_scores(model, [chunk[i] for i in with_oracle],
                                         [bank.one(oracles[i] or "") for i in with_oracle], run=run)
        oracle_right: dict[int, bool] = {i: int(oracle_scores[j].argmax()) == chunk[i].answer
                                         for j, i in enumerate(with_oracle)}
        firsts = [bank.names[int(index)] for index in weights.argmax(dim=1)]
        for i, problem in enumerate(chunk):
            relation = problem.relation or "unlabelled"
            report.first[relation][firsts[i]] += 1
            for name, per_problem in results.items():
                right = int(per_problem[i].argmax()) == problem.answer
                report.add(relation, name, right)
                report.outcomes[name].append(int(right))
            report.outcomes["oracle"].append(int(oracle_right[i]) if i in oracle_right else None)
        for i in with_oracle:
            oracle = oracles[i] or ""
            relation = chunk[i].relation or "unlabelled"
            report.add(relation, "oracle", oracle_right[i])
            picked = firsts[i] == oracle
            in_family = firsts[i] in families.get(oracle, [oracle])
            report.picked_oracle.add(picked)
            report.picked_family.add(in_family)
            report.by_relation[relation]["oracle_first"].add(picked)
            report.by_relation[relation]["family_first"].add(in_family)
            rank = int((weights[i] > weights[i, bank.names.index(oracle)]).sum()) + 1
            report.reciprocal_ranks.append(1.0 / rank)
        progress(min(start + batch, len(problems)), len(problems))
    return report
