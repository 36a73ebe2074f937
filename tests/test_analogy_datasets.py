"""Readers of the public analogy sets (read by path from shared/data, never shipped) and the Spearman helper."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from app.errors import InvalidInput
from fvsteer_lab.datasets import (
    SEMEVAL_RELATIONS,
    AnalogyProblem,
    read_analogies,
    read_multiple_choice_jsonl,
    read_semeval,
    read_ucla_vat,
    spearman,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RELATIONS = Path(__file__).resolve().parents[1] / "app" / "fv" / "relations"


def _data(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"public evaluation data not present at {path}")
    return path


# --- real files ---------------------------------------------------------------------------------------------------


def test_ucla_vat_real_file() -> None:
    problems = read_analogies(_data("ucla_vat", "UCLA_VAT.csv"))
    assert len(problems) == 80
    assert Counter(p.relation for p in problems) == {
        "Synonym": 20,
        "Opposite": 20,
        "Function": 20,
        "Category Members": 20,
    }
    assert all(p.answer == 0 and len(p.candidates) == 2 for p in problems)
    assert problems[0] == AnalogyProblem(
        relation="Synonym", source=("easy", "simple"), candidates=[("sad", "unhappy"), ("sad", "happy")], answer=0
    )
    # Both candidates share C; only D differs.
    assert all(p.candidates[0][0] == p.candidates[1][0] for p in problems)
    assert read_ucla_vat(_data("ucla_vat", "UCLA_VAT.csv")) == problems


@pytest.mark.parametrize(
    ("name", "count", "n_relations"),
    [("bats_test", 1799, 40), ("bats_valid", 199, 40), ("google_test", 500, 14), ("google_valid", 50, 14)],
)
def test_multiple_choice_real_files(name: str, count: int, n_relations: int) -> None:
    problems = read_analogies(_data("bats_ushio2021_mc", f"{name}.jsonl"))
    assert len(problems) == count
    assert all(len(p.candidates) == 4 and 0 <= p.answer < 4 for p in problems)
    assert all(all(term for pair in (p.source, *p.candidates) for term in pair) for p in problems)
    relations = {p.relation for p in problems}
    assert None not in relations
    assert len(relations) == n_relations
    if name.startswith("bats"):
        assert "E05 [name - occupation]" in relations
        assert all("/" not in r and not r.endswith(".txt") for r in relations if r)
    else:
        assert "gram3-comparative" in relations
        assert "capital-world" in relations


def test_semeval_real_folder() -> None:
    root = _data("semeval2012_task2")
    subcategories = read_semeval(root)
    assert len(subcategories) == 79
    assert len({s.id for s in subcategories}) == 79
    assert all(len(s.ratings) == len(s.pairs) > 0 for s in subcategories)
    by_id = {s.id: s for s in subcategories}
    assert by_id["2a"].category == "PART-WHOLE"
    assert by_id["2a"].name == "Object:Component"
    assert by_id["2a"].pairs[0] == ("hand", "finger")
    assert by_id["2a"].ratings[0] == pytest.approx(80.0)
    assert by_id["1a"].pairs[0] == ("weapon", "spear")  # a Training subcategory
    # Ratings come sorted from most to least prototypical in the gold files.
    assert all(s.ratings == sorted(s.ratings, reverse=True) for s in subcategories)
    # The Gold-Ratings subfolder itself is accepted too.
    assert read_semeval(root / "SemEval-2012-Gold-Ratings") == subcategories
    for sub_id in SEMEVAL_RELATIONS:
        assert sub_id in by_id, sub_id


def test_semeval_relations_map_to_shipped_files() -> None:
    assert SEMEVAL_RELATIONS
    for sub_id, relation in SEMEVAL_RELATIONS.items():
        assert sub_id[:-1].isdigit() and sub_id[-1].isalpha(), sub_id
        assert (RELATIONS / f"{relation}.json").is_file(), relation


def test_semeval_layout_not_found(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        read_semeval(tmp_path)
    assert err.value.param == "semeval"
    assert str(tmp_path) in err.value.message


def test_semeval_bad_rating_line(tmp_path: Path) -> None:
    gold = tmp_path / "SemEval-2012-Gold-Ratings"
    (gold / "Testing").mkdir(parents=True)
    (gold / "subcategories-list.txt").write_text("2, a, PART-WHOLE, Object:Component\n")
    (gold / "Testing" / "GoldRatings-2a.txt").write_text('# header\n 80.0 "hand:finger"\n oops\n')
    with pytest.raises(InvalidInput) as err:
        read_semeval(tmp_path)
    assert err.value.param == "semeval"
    assert "line 3" in err.value.message
    (gold / "Testing" / "GoldRatings-2a.txt").write_text(' 80.0 "hand:finger"\n-2.5 "egg:yolk"\n')
    [sub] = read_semeval(tmp_path)
    assert sub.pairs == [("hand", "finger"), ("egg", "yolk")]
    assert sub.ratings == [80.0, -2.5]


# --- malformed files ----------------------------------------------------------------------------------------------

_UCLA_HEADER = "relation,A,B,C,D,D_foil\n"
_GOOD_ROW = '{"stem": ["a", "b"], "choice": [["c", "d"], ["c", "e"]], "answer": 0}'


def _raises_at(path: Path, line: int | None, *words: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as err:
        read_analogies(path)
    assert err.value.param == "dataset"
    assert str(path) in err.value.message
    if line is not None:
        assert f"line {line}" in err.value.message, err.value.message
    for word in words:
        assert word in err.value.message, err.value.message
    return err.value


def test_ucla_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "vat.csv"
    path.write_text("relation,A,B,C,D,wrong\nSynonym,easy,simple,sad,unhappy,happy\n")
    _raises_at(path, 1, "header", "D_foil")


def test_ucla_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "vat.csv"
    path.write_text(_UCLA_HEADER + "Synonym,easy,simple,sad,unhappy,happy\nSynonym,hurry,rush,harm,injure\n")
    _raises_at(path, 3, "columns")


def test_ucla_empty_term(tmp_path: Path) -> None:
    path = tmp_path / "vat.csv"
    path.write_text(_UCLA_HEADER + "Synonym,easy, ,sad,unhappy,happy\n")
    _raises_at(path, 2, "empty")


def test_ucla_strips_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "vat.csv"
    path.write_text(_UCLA_HEADER + " Synonym , easy ,simple,sad, unhappy,happy \n")
    assert read_analogies(path) == [
        AnalogyProblem("Synonym", ("easy", "simple"), [("sad", "unhappy"), ("sad", "happy")], 0)
    ]


def test_jsonl_bad_json_line(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text(_GOOD_ROW + "\n" + '{"stem": ["a", "b"],\n')
    _raises_at(path, 2, "JSON")


def test_jsonl_answer_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text(_GOOD_ROW + "\n\n" + _GOOD_ROW.replace('"answer": 0', '"answer": 2') + "\n")
    _raises_at(path, 3, "answer", "out of range")


def test_jsonl_empty_term(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text(_GOOD_ROW.replace('["c", "e"]', '["c", ""]') + "\n")
    _raises_at(path, 1, "empty")


def test_jsonl_too_few_candidates(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text('{"stem": ["a", "b"], "choice": [["c", "d"]], "answer": 0}\n')
    _raises_at(path, 1, "at least 2")


def test_jsonl_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text('{"stem": ["a", "b"], "choice": [["c", "d"], ["e", "f"]]}\n')
    _raises_at(path, 1, "answer")


def test_jsonl_prefix_labels(tmp_path: Path) -> None:
    rows = [
        {**json.loads(_GOOD_ROW), "prefix": "./cache/BATS_3.0/4_Lexicographic_semantics/L08 [synonyms - exact].txt"},
        {**json.loads(_GOOD_ROW), "prefix": "gram3-comparative"},
        json.loads(_GOOD_ROW),
    ]
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    problems = read_multiple_choice_jsonl(path)
    assert [p.relation for p in problems] == ["L08 [synonyms - exact]", "gram3-comparative", None]
    assert problems[0].source == ("a", "b")
    assert problems[0].candidates == [("c", "d"), ("c", "e")]


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "analogies.txt"
    path.write_text("a b c d\n")
    _raises_at(path, None, ".txt")
    _raises_at(tmp_path / "absent.jsonl", None, "no such file")


def test_empty_files(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("")
    _raises_at(tmp_path / "e.csv", None, "empty")
    (tmp_path / "e.jsonl").write_text("\n")
    _raises_at(tmp_path / "e.jsonl", None, "no analogy problems")


# --- spearman -----------------------------------------------------------------------------------------------------


def test_spearman_perfect() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 7, 5, 1]) == pytest.approx(-1.0)
    # Monotone but not linear: still perfect.
    assert spearman([1, 2, 3, 4, 5], [1, 4, 9, 16, 100]) == pytest.approx(1.0)


def test_spearman_hand_computed() -> None:
    # Ranks x = 1..5, y = 2,1,4,3,5; d^2 sum = 4, rho = 1 - 6*4 / (5*24) = 0.8.
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # Ties: x ranks 1, 2.5, 2.5, 4 against 1, 2, 3, 4 -> 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    # Ties on both sides: x ranks 1.5, 1.5, 3; y ranks 1, 2.5, 2.5 -> 0.75 / sqrt(1.5 * 1.5) = 0.5.
    assert spearman([5, 5, 7], [1, 3, 3]) == pytest.approx(0.5)


def test_spearman_undefined() -> None:
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))
    assert math.isnan(spearman([1], [2]))
    assert math.isnan(spearman([], []))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])
