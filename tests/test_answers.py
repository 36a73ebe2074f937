"""Accepted answers: a pair may list several right answers; training minimises −log Σ p over their first tokens,
and a prediction is right when its top token is any of them. With one answer everything is the usual cross-entropy
and top-1. Files and request bodies carry them as ``"output": [primary, …]``; refusals name the item."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from app.errors import InvalidInput
from app.fv.answers import AnswerSets
from app.fv.pairs import MAX_ANSWERS, Pair, dataset_sha256, validate_pairs
from app.fv.prompts import Template, answer_token, zero_shot_prompts
from tests.tiny_models import tiny_tokenizer

LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 1.0, 2.5]])


def test_one_answer_is_plain_cross_entropy_and_top1() -> None:
    answers = AnswerSets.of([(0,), (3,)], "cpu")
    assert torch.allclose(answers.loss(LOGITS), F.cross_entropy(LOGITS, torch.tensor([0, 3]), reduction="none"))
    assert answers.correct(LOGITS).tolist() == [True, False]
    assert answers.rank(LOGITS).tolist() == [0, 1]


def test_ties_and_broken_logits_never_count_as_right() -> None:
    """A vector of 3e38s made every logit NaN and evaluation scored it 1.0 (nothing ranked above the answer)."""
    answers = AnswerSets.of([(0,), (1,), (2, 1)], "cpu")
    tied = torch.tensor([[1.0, 1.0, 0.0], [float("nan")] * 3, [0.0, 2.0, 2.0]])
    assert answers.rank(tied).tolist() == [1, 3, 0]  # a tie with another token counts against; NaN ranks last
    assert answers.correct(tied).tolist() == [False, False, True]  # tied accepted answers are still right
    assert answers.correct(torch.tensor([[float("inf"), 0.0, 0.0]] * 3)).tolist() == [False] * 3


def test_several_answers_pool_their_probability() -> None:
    answers = AnswerSets.of([(2, 1), (0, 3, 2)], "cpu")  # rows of different widths are padded
    p = torch.softmax(LOGITS, dim=-1)
    expected = -torch.log(torch.stack([p[0, 2] + p[0, 1], p[1, 0] + p[1, 3] + p[1, 2]]))
    assert torch.allclose(answers.loss(LOGITS), expected)
    assert torch.allclose(answers.log_prob(LOGITS), -expected)
    assert answers.correct(LOGITS).tolist() == [False, False]  # row 0's top is token 0; row 1's is token 1
    assert answers.rank(LOGITS).tolist() == [1, 1]  # the best accepted token is second in both rows
    assert answers.take(torch.tensor([1, 1, 0])).rank(LOGITS[[1, 1, 0]]).tolist() == [1, 1, 1]


def test_prompts_carry_every_distinct_first_token_primary_first() -> None:
    tokenizer = tiny_tokenizer()
    items = zero_shot_prompts(tokenizer, Template(), "", [Pair("hot", "cold", ("cool", "chilly"))])
    # The character tokenizer starts every " " + answer with " ": one distinct first token.
    assert items[0].answer_tokens == (answer_token(tokenizer, "cold"),)
    assert items[0].answer_token == answer_token(tokenizer, "cold")


def test_files_and_bodies_give_lists_of_accepted_answers() -> None:
    raw = [{"input": f"w{index}", "output": f"v{index}"} for index in range(12)]
    raw[0] = {"input": " hot ", "output": [" cold", "cool "]}
    pairs = validate_pairs(raw)
    assert pairs[0] == Pair("hot", "cold", ("cool",)) and pairs[0].answers == ("cold", "cool")
    assert pairs[1].answers == ("v1",)
    # One answer hashes as before (vectors built from unchanged files stay up to date); a list changes the hash.
    single = validate_pairs([{**item, "output": "cold"} if index == 0 else item for index, item in enumerate(raw)])
    assert dataset_sha256(single) == dataset_sha256([Pair("hot", "cold"), *pairs[1:]])
    assert dataset_sha256(single) != dataset_sha256(pairs)


@pytest.mark.parametrize(("output", "param", "says"), [
    ([], "pairs[0].output", "1 to 8"),
    (["a"] * (MAX_ANSWERS + 1), "pairs[0].output", "1 to 8"),
    (["a", " a"], "pairs[0].output", "repeats an answer"),
    (["a", ""], "pairs[0]", "empty"),
    (["a", 3], "pairs[0]", "non-string"),
    ({"a": 1}, "pairs[0]", "non-string"),
])
def test_bad_answer_lists_are_refused_naming_the_item(output: object, param: str, says: str) -> None:
    raw = [{"input": f"w{index}", "output": f"v{index}"} for index in range(12)]
    raw[0]["output"] = output  # type: ignore[assignment]
    with pytest.raises(InvalidInput, match=says) as caught:
        validate_pairs(raw)
    assert caught.value.param == param


def test_the_sdk_reads_answer_lists_from_json(tmp_path: Path) -> None:
    from fvsteer_client.errors import InvalidPairsError
    from fvsteer_client.pairs import load_pairs, normalize_pairs

    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"input": "hot", "output": ["cold", "cool"]}, ["up", "down"]]), encoding="utf-8")
    assert load_pairs(path) == [{"input": "hot", "output": ["cold", "cool"]}, {"input": "up", "output": "down"}]
    assert normalize_pairs([{"input": "a", "output": ("b", "c")}]) == [{"input": "a", "output": ["b", "c"]}]
    for bad in ([], ["b", 1]):
        with pytest.raises(InvalidPairsError, match="output"):
            normalize_pairs([{"input": "a", "output": bad}])
