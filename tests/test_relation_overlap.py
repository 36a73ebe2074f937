"""The shipped relation datasets stay independent of the public evaluation sets: at most 1 % of the shipped pairs
may occur, as an ordered pair (case-folded, stripped), in any of them (Todd et al., UCLA VAT, BATS and Google
multiple choice, Google analogy, SemEval-2012 Task 2), read from ``../shared/data`` as the other tests read it.
No model; a few seconds."""

from __future__ import annotations

import csv
import json
import re
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


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not here")
def test_shipped_pairs_are_not_taken_from_the_evaluation_sets() -> None:
    sets = evaluation_pairs()
    assert sets, f"no evaluation set found under {DATA}"
    for name, members in sets.items():
        assert len(members) >= 40, f"{name}: only {len(members)} pairs read; has the format changed?"
    every = set().union(*sets.values())
    total = 0
    found: dict[str, list[str]] = {}
    for relation in shipped_relations():
        pairs = relation_pairs(relation)
        total += len(pairs)
        for pair in pairs:
            key = _key(pair.input, pair.output)
            if key in every:
                where = ",".join(name for name, members in sets.items() if key in members)
                found.setdefault(relation, []).append(f"{pair.input}→{pair.output} ({where})")
    count = sum(len(hits) for hits in found.values())
    per_file = sorted(found.items(), key=lambda item: -len(item[1]))
    detail = "; ".join(f"{name}: {len(hits)} [{', '.join(hits[:8])}]" for name, hits in per_file)
    assert count <= MAX_OVERLAP * total, f"{count} of {total} shipped pairs occur in the evaluation sets: {detail}"
