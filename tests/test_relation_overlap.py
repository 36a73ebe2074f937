"""The shipped relation datasets stay independent of the public evaluation sets: no shipped pair, with any of its
accepted answers and in either order (case-folded, stripped), occurs in UCLA VAT, BATS or Google multiple choice,
Google's analogy file or SemEval-2012 Task 2, read from ``../shared/data`` as the other tests read it. A pair found
in reverse order (a converse: ``France → Paris`` against Google's ``Paris France``) counts like a forward one, and
the failure message says which it was. Todd et al.'s relation sets may overlap (they are the function-vector
literature's standard sets); every figure measured on them leaves the shipped inputs out
(``tests/test_todd_leave_out.py``). No model; a few seconds."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

from app.fv.pairs import Pair, relation_pairs, shipped_relations

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_SEMEVAL_PAIR = re.compile(r"([A-Za-z][A-Za-z'-]*):([A-Za-z][A-Za-z'-]*)")


def _key(x: str, y: str) -> tuple[str, str]:
    return x.strip().casefold(), y.strip().casefold()


def _todd(folder: Path) -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for path in sorted(folder.glob("*.json")):
        for item in json.loads(path.read_text(encoding="utf-8")):
            if isinstance(item.get("input"), str) and isinstance(item.get("output"), str):
                pairs.add(_key(item["input"], item["output"]))
    return pairs


def _ucla(folder: Path) -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for path in sorted(folder.glob("*.csv")):
        for row in csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines()):
            pairs |= {_key(row["A"], row["B"]), _key(row["C"], row["D"]), _key(row["C"], row["D_foil"])}
    return pairs


def _multiple_choice(folder: Path) -> set[tuple[str, str]]:
    """The stem and every choice of each BATS and Google question (Ushio et al.'s jsonl files)."""
    pairs: set[tuple[str, str]] = set()
    for path in sorted(folder.rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                for x, y in [record["stem"], *record["choice"]]:
                    pairs.add(_key(x, y))
    return pairs


def _google(folder: Path) -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for path in sorted(folder.glob("*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            words = line.split()
            if len(words) == 4 and not line.startswith(":"):
                pairs |= {_key(words[0], words[1]), _key(words[2], words[3])}
    return pairs


def _semeval(folder: Path) -> set[tuple[str, str]]:
    """Every ``x:y`` in the package's questions, answers, paradigms and gold ratings (quoted or not)."""
    pairs: set[tuple[str, str]] = set()
    for path in sorted(folder.rglob("*.txt")):
        for x, y in _SEMEVAL_PAIR.findall(path.read_text(encoding="utf-8", errors="replace")):
            pairs.add(_key(x, y))
    return pairs


READERS = {
    "ucla_vat": _ucla,
    "bats_ushio2021_mc": _multiple_choice,
    "google_analogy": _google,
    "semeval2012_task2": _semeval,
}


def evaluation_pairs() -> dict[str, set[tuple[str, str]]]:
    """``set name → its ordered pairs``, for every set that must stay disjoint from the shipped data and is present."""
    return {name: read(DATA / name) for name, read in READERS.items() if (DATA / name).is_dir()}


def todd_pairs() -> set[tuple[str, str]]:
    return _todd(DATA / "todd")


def shipped_overlap(sets: dict[str, set[tuple[str, str]]]) -> dict[str, list[str]]:
    """``set name → "relation: input→answer (forward|converse)"`` for every shipped pair found in that set."""
    found: dict[str, list[str]] = {name: [] for name in sets}
    for relation in shipped_relations():
        for pair in relation_pairs(relation):
            for answer in pair.answers:
                key = _key(pair.input, answer)
                for name, members in sets.items():
                    if key in members:
                        found[name].append(f"{relation}: {pair.input}→{answer} (forward)")
                    elif key[::-1] in members:
                        found[name].append(f"{relation}: {pair.input}→{answer} (converse)")
    return found


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not here")
def test_shipped_pairs_share_nothing_with_the_evaluation_sets_in_either_order() -> None:
    sets = evaluation_pairs()
    assert sorted(sets) == sorted(READERS), f"missing evaluation sets under {DATA}: {sorted(set(READERS) - set(sets))}"
    for name, members in sets.items():
        assert len(members) >= 40, f"{name}: only {len(members)} pairs read; has the format changed?"
    found = shipped_overlap(sets)
    detail = "; ".join(f"{name}: {len(hits)} [{', '.join(hits[:12])}]" for name, hits in found.items() if hits)
    assert not detail, f"shipped pairs found in the evaluation sets: {detail}"


def test_the_overlap_check_counts_both_orders_and_every_accepted_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself, on a made-up relation and set: a converse and a second accepted answer are both found."""
    monkeypatch.setattr(sys.modules[__name__], "shipped_relations", lambda: ["made-up"])
    monkeypatch.setattr(sys.modules[__name__], "relation_pairs",
                        lambda name: [Pair("Hot", "cold", ("cool",)), Pair("up", "down")])
    made_up = {"set": {("cold", "hot"), ("up", "sideways")}, "other": {("hot", "cool")}, "none": {("a", "b")}}
    found = shipped_overlap(made_up)
    assert found == {"set": ["made-up: Hot→cold (converse)"], "other": ["made-up: Hot→cool (forward)"], "none": []}


if __name__ == "__main__":  # every hit, not only the first dozen per set: python tests/test_relation_overlap.py
    for set_name, hits in shipped_overlap(evaluation_pairs()).items():
        print(f"{set_name}: {len(hits)}")
        for hit in hits:
            print(f"  {hit}")
