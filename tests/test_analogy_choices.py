"""The validation measurements behind the relation-inference choices (fvsteer_lab/choices.py): the multiple-choice
form of a validation analogy, the bank without an analogy's own relation, and the fallback threshold."""

from __future__ import annotations

import math

import pytest
import torch

from app.analogy.combiner import Combiner
from app.fv.pairs import relation_pairs
from fvsteer_lab.choices import best_fallback, multiple_choice, without_own
from fvsteer_lab.fitting import split_analogies

RELATIONS = ["antonym", "synonym", "capitalize"]


def test_each_validation_analogy_becomes_four_candidates_with_one_right_pair() -> None:
    valid = split_analogies(RELATIONS, per_relation=10, seed=0).valid
    problems = multiple_choice(valid, RELATIONS)
    assert problems == multiple_choice(valid, RELATIONS)  # seeded
    assert len(problems) == len(valid) == 6
    for item, problem in zip(valid, problems, strict=True):
        own = {(p.input, p.output) for p in relation_pairs(item.relation)}
        inputs, outputs = {a for a, _ in own}, {b for _, b in own}
        assert problem.relation == item.relation and problem.source == item.source
        assert len(problem.candidates) == 4 and problem.candidates[problem.answer] == item.target
        distractors = [pair for i, pair in enumerate(problem.candidates) if i != problem.answer]
        assert item.target not in distractors
        assert sum(pair not in own for pair in distractors) == 3  # no distractor is a pair of the relation
        assert any(a in inputs and b in inputs for a, b in distractors)
        assert any(a in outputs and b in outputs for a, b in distractors)


def test_without_its_relation_the_other_weights_share_the_mass() -> None:
    combiner = Combiner.softmax(RELATIONS)
    scores = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -1.0, -2.0]])
    weights = without_own(combiner, scores, torch.tensor([0, 1]))
    assert weights[0, 0] == 0.0 and weights[1, 1] == 0.0
    assert torch.allclose(weights.sum(dim=-1), torch.ones(2))
    assert math.isclose(float(weights[0, 1] / weights[0, 2]), math.e, rel_tol=1e-5)  # softmax over the others


def test_the_fallback_threshold_is_chosen_on_both_cases_and_none_when_it_never_helps() -> None:
    largest = (torch.tensor([0.9, 0.2, 0.5]), torch.tensor([0.1, 0.8, 0.3]))
    steered = (torch.tensor([True, False, True]), torch.tensor([False, True, False]))
    unsteered = torch.tensor([False, True, True])
    best = best_fallback(largest, steered, unsteered)
    # Below 0.5: in bank problem 1 goes unsteered (right), without its relation problems 0 and 2 do (wrong, right).
    assert best["tau"] == 0.5
    figures = [best[key] for key in ("in_bank", "without_own", "fired_in_bank", "fired_without_own")]
    assert figures == pytest.approx([1, 2 / 3, 1 / 3, 2 / 3], rel=1e-6)
    never = best_fallback(largest, (torch.ones(3, dtype=torch.bool),) * 2, torch.zeros(3, dtype=torch.bool))
    assert never["tau"] == float("-inf") and never["in_bank"] == never["without_own"] == 1.0
    assert never["fired_in_bank"] == never["fired_without_own"] == 0.0
