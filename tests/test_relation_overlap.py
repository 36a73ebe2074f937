"""The shipped relation datasets stay independent of the public evaluation sets: at most 1 % of the shipped pairs
may occur, as an ordered pair (case-folded, stripped), in any of them (Todd et al., UCLA VAT, BATS and Google
multiple choice, Google analogy, SemEval-2012 Task 2), read from ``../shared/data`` as the other tests read it.
No model; a few seconds."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.fv.pairs import relation_pairs, shipped_relations

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MAX_OVERLAP = 0.01
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
    "todd": _todd,
    "ucla_vat": _ucla,
    "bats_ushio2021_mc": _multiple_choice,
    "google_analogy": _google,
    "semeval2012_task2": _semeval,
}


def evaluation_pairs() -> dict[str, set[tuple[str, str]]]:
    """``set name → its ordered pairs``, for every set whose folder is present."""
    return {name: read(DATA / name) for name, read in READERS.items() if (DATA / name).is_dir()}


# The 27 relations of the first release were written before this check and overlap where the sets enumerate the
# same facts (country → capital, translations of common words, antonyms, weekdays…). Their counts here are a
# ceiling that may only go down as those files are rewritten or retired (issue 16); the committed starter bank was
# built from them as they are. Every other relation is held to the 1 % budget on its own.
LEGACY_OVERLAP = {
    "adjective-noun": 4,
    "agent-action": 17,
    "animal-habitat": 14,
    "animal-young": 19,
    "antonym": 85,
    "capitalize": 37,
    "category-member": 34,
    "cause-effect": 8,
    "comparative": 42,
    "country-capital": 102,
    "country-language": 40,
    "english-french": 92,
    "english-german": 94,
    "english-spanish": 92,
    "male-female": 41,
    "member-category": 11,
    "mild-extreme": 25,
    "next-item": 64,
    "object-color": 28,
    "part-whole": 20,
    "present-past": 46,
    "singular-plural": 40,
    "synonym": 63,
    "thing-material": 11,
    "tool-function": 14,
    "verb-agent": 15,
    "whole-part": 31,
}
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not here")


@dataclass(frozen=True)
class Overlap:
    pairs: dict[str, int]  # relation → its number of pairs
    found: dict[str, list[str]]  # relation → its pairs that occur in a set, "x→y (set,…)"

    def count(self, relations: Iterable[str]) -> int:
        return sum(len(self.found.get(name, [])) for name in relations)

    def detail(self, relations: Iterable[str]) -> str:
        hits = sorted(((len(self.found[n]), n) for n in relations if self.found.get(n)), reverse=True)
        return "; ".join(f"{name}: {n} [{', '.join(self.found[name][:8])}]" for n, name in hits)


@pytest.fixture(scope="module")
def overlap() -> Overlap:
    sets = evaluation_pairs()
    assert sets, f"no evaluation set found under {DATA}"
    for name, members in sets.items():
        assert len(members) >= 40, f"{name}: only {len(members)} pairs read; has the format changed?"
    every = set().union(*sets.values())
    sizes: dict[str, int] = {}
    found: dict[str, list[str]] = {}
    for relation in shipped_relations():
        pairs = relation_pairs(relation)
        sizes[relation] = len(pairs)
        for pair in pairs:
            key = _key(pair.input, pair.output)
            if key in every:
                where = ",".join(name for name, members in sets.items() if key in members)
                found.setdefault(relation, []).append(f"{pair.input}→{pair.output} ({where})")
    return Overlap(sizes, found)


@needs_data
def test_relations_outside_the_legacy_ones_stay_within_one_percent(overlap: Overlap) -> None:
    names = [name for name in overlap.pairs if name not in LEGACY_OVERLAP]
    total = sum(overlap.pairs[name] for name in names)
    count = overlap.count(names)
    assert count <= MAX_OVERLAP * total, f"{count} of {total} pairs are in the evaluation sets: {overlap.detail(names)}"


@needs_data
def test_legacy_overlap_only_goes_down(overlap: Overlap) -> None:
    grown = {name: (len(overlap.found.get(name, [])), ceiling) for name, ceiling in LEGACY_OVERLAP.items()
             if name in overlap.pairs and len(overlap.found.get(name, [])) > ceiling}
    assert not grown, f"more overlap than recorded (now, ceiling): {grown}; {overlap.detail(grown)}"


@needs_data
@pytest.mark.xfail(strict=True, reason="the 27 legacy relations still overlap the evaluation sets (issue 16)")
def test_shipped_pairs_are_not_taken_from_the_evaluation_sets(overlap: Overlap) -> None:
    total = sum(overlap.pairs.values())
    count = overlap.count(overlap.pairs)
    assert count <= MAX_OVERLAP * total, (
        f"{count} of {total} shipped pairs occur in the evaluation sets: {overlap.detail(overlap.pairs)}")
