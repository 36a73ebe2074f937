"""Readers for the public analogy and relational-similarity evaluation sets.

These sets (UCLA VAT, the BATS and Google multiple-choice files of Ushio et al. 2021, SemEval-2012 Task 2)
are public benchmarks with their own licences and terms. fvsteer never copies or ships them: the relation
datasets in ``app/fv/relations`` were written for this project and must stay independent of them. So the
evaluation sets are read here from a path the user gives (for example a checkout's ``shared/data`` folder),
and every reader checks the file's layout and fails with :class:`~app.errors.InvalidInput` naming the file,
the line and what is wrong, rather than guessing.

Formats read:

- UCLA VAT, ``.csv`` with the header ``relation,A,B,C,D,D_foil``: ``A : B :: C : D`` is right, ``C : D_foil`` wrong.
- Multiple choice, ``.jsonl`` with one ``{"stem": [a, b], "choice": [[c, d], ...], "answer": i, "prefix": ...}``
  per line (the BATS and Google files of Ushio et al., ACL 2021).
- SemEval-2012 Task 2 gold ratings: ``GoldRatings-<id>.txt`` under ``Training/`` and ``Testing/`` with lines
  ``<score> "<x>:<y>"``, and ``subcategories-list.txt`` with lines ``<n>, <letter>, <CATEGORY>, <name>``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from app.analogy.problems import AnalogyProblem
from app.errors import InvalidInput

__all__ = [
    "SEMEVAL_RELATIONS",
    "AnalogyProblem",
    "SemEvalSubcategory",
    "read_analogies",
    "read_multiple_choice_jsonl",
    "read_semeval",
    "read_ucla_vat",
    "spearman",
]


@dataclass(frozen=True)
class SemEvalSubcategory:
    """One SemEval-2012 Task 2 subcategory with its gold prototypicality rating per pair (same order as ``pairs``)."""

    id: str
    category: str
    name: str
    pairs: list[tuple[str, str]]
    ratings: list[float]


# ---------------------------------------------------------------------------------------------------------------
# UCLA VAT (.csv) and multiple choice (.jsonl)
# ---------------------------------------------------------------------------------------------------------------

_DATASET_PARAM = "dataset"
_UCLA_COLUMNS = ("relation", "A", "B", "C", "D", "D_foil")


def _bad(path: Path, line: int | None, what: str, param: str = _DATASET_PARAM) -> InvalidInput:
    where = f"{path}, line {line}" if line is not None else str(path)
    return InvalidInput(f"{where}: {what}", param=param)


def _read_text(path: Path, param: str = _DATASET_PARAM) -> str:
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file", param=param)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", param=param) from exc
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot be read ({exc.strerror or exc})", param=param) from exc


def _term(value: object, path: Path, line: int, field: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, line, f"{field} must be a string, got {type(value).__name__}")
    term = value.strip()
    if not term:
        raise _bad(path, line, f"{field} is empty")
    return term


def read_ucla_vat(path: Path) -> list[AnalogyProblem]:
    """Read the UCLA Verbal Analogy Test CSV: each row gives candidates ``[(C, D), (C, D_foil)]``, answer 0."""
    path = Path(path)
    text = _read_text(path)
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None:
        raise _bad(path, None, "the file is empty")
    columns = tuple(cell.strip() for cell in header)
    if columns != _UCLA_COLUMNS:
        missing = [c for c in _UCLA_COLUMNS if c not in columns]
        detail = f"missing column(s) {', '.join(missing)}" if missing else "columns in the wrong order or extra"
        raise _bad(path, 1, f"header must be {','.join(_UCLA_COLUMNS)!r}, got {','.join(header)!r} ({detail})")
    problems: list[AnalogyProblem] = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(_UCLA_COLUMNS):
            raise _bad(path, line, f"expected {len(_UCLA_COLUMNS)} columns, got {len(row)}")
        relation, a, b, c, d, foil = (
            _term(cell, path, line, name) for cell, name in zip(row, _UCLA_COLUMNS, strict=True)
        )
        problems.append(AnalogyProblem(relation=relation, source=(a, b), candidates=[(c, d), (c, foil)], answer=0))
    if not problems:
        raise _bad(path, None, "no analogy problems after the header")
    return problems


def _pair(value: object, path: Path, line: int, field: str) -> tuple[str, str]:
    if not isinstance(value, list) or len(value) != 2:
        raise _bad(path, line, f"{field} must be a list of two strings")
    return _term(value[0], path, line, f"{field}[0]"), _term(value[1], path, line, f"{field}[1]")


def _relation_label(prefix: object, path: Path, line: int) -> str | None:
    """A short label from the ``prefix`` field: the file stem for a BATS path, the string itself otherwise."""
    if prefix is None:
        return None
    if not isinstance(prefix, str):
        raise _bad(path, line, f"prefix must be a string, got {type(prefix).__name__}")
    label = prefix.strip()
    if "/" in label or "\\" in label or label.endswith(".txt"):
        # "./cache/BATS_3.0/3_Encyclopedic_semantics/E05 [name - occupation].txt" -> "E05 [name - occupation]"
        name = PurePosixPath(label.replace("\\", "/")).name
        label = name[: -len(".txt")] if name.endswith(".txt") else name
    return label.strip() or None


def read_multiple_choice_jsonl(path: Path) -> list[AnalogyProblem]:
    """Read ``{"stem": [a, b], "choice": [[c, d], ...], "answer": i, "prefix": ...}`` lines (blank lines skipped)."""
    path = Path(path)
    problems: list[AnalogyProblem] = []
    for line, raw in enumerate(_read_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record: Any = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _bad(path, line, f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(record, dict):
            raise _bad(path, line, f"expected a JSON object, got {type(record).__name__}")
        for key in ("stem", "choice", "answer"):
            if key not in record:
                raise _bad(path, line, f"missing key {key!r}")
        source = _pair(record["stem"], path, line, "stem")
        choices = record["choice"]
        if not isinstance(choices, list):
            raise _bad(path, line, "choice must be a list of [c, d] pairs")
        if len(choices) < 2:
            raise _bad(path, line, f"choice needs at least 2 candidates, got {len(choices)}")
        candidates = [_pair(choice, path, line, f"choice[{j}]") for j, choice in enumerate(choices)]
        answer = record["answer"]
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise _bad(path, line, f"answer must be an integer, got {answer!r}")
        if not 0 <= answer < len(candidates):
            raise _bad(path, line, f"answer {answer} is out of range for {len(candidates)} candidates")
        relation = _relation_label(record.get("prefix"), path, line)
        problems.append(AnalogyProblem(relation=relation, source=source, candidates=candidates, answer=answer))
    if not problems:
        raise _bad(path, None, "no analogy problems in the file")
    return problems


def read_analogies(path: Path) -> list[AnalogyProblem]:
    """Read an analogy set by its suffix: ``.csv`` in the UCLA VAT form, ``.jsonl`` in the multiple-choice form."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_ucla_vat(path)
    if suffix == ".jsonl":
        return read_multiple_choice_jsonl(path)
    raise _bad(path, None, f"unknown analogy file type {suffix or '(no suffix)'!r}; expected .csv (UCLA VAT) or .jsonl")


# ---------------------------------------------------------------------------------------------------------------
# SemEval-2012 Task 2
# ---------------------------------------------------------------------------------------------------------------

_SEMEVAL_PARAM = "semeval"
_GOLD_DIR = "SemEval-2012-Gold-Ratings"
_SPLITS = ("Training", "Testing")
_RATING_LINE = re.compile(r'^\s*(?P<score>[-+]?\d+(?:\.\d+)?)\s+"(?P<pair>[^"]*)"\s*$')
_UNIQUE_PAIRS = re.compile(r"^#\s*Number of Unique Pairs:\s*(\d+)\s*$")
_SUBCATEGORY_ID = re.compile(r"^\d+[a-z]$")

# SemEval subcategory id -> shipped relation in app/fv/relations/<name>.json, chosen from the subcategory's
# definition (subcategories-definitions.txt) and paradigm pairs, never from scores. Only where the meaning and the
# pair order X:Y both agree; subcategories whose direction is reversed or whose meaning is only loosely related
# are left out (e.g. 3e Conversion is young -> adult, the reverse of animal-young; 9c Location:Activity is
# place -> action, the reverse of action-place; 3g Coordinates is any two co-hyponyms, not male -> female;
# 4e/4f/4g are incompatible, asymmetric or pseudo opposites, not the one standard antonym; 5a ItemAttribute is
# any attribute, far wider than object-color). The antonym kinds go to the relation of the same kind: 4a
# (complementary) to antonym-binary, 4c (reversing acts) and 4d to antonym-directional, 4b to antonym.
SEMEVAL_RELATIONS: dict[str, str] = {
    "1a": "category-member",  # Taxonomic, "Y is a kind of X": flower:tulip, bird:robin.
    "1b": "category-member",  # Functional, "Y functions as an X": tool:hammer, vehicle:car.
    "1c": "category-member",  # Singular Collective: fruit:apple, furniture:chair — category first, member second.
    "1d": "category-member",  # Plural Collective: snacks:chips, fruit:apples — same relation, plural forms.
    "1e": "category-member",  # ClassIndividual, "Y is a specific X": planet:Earth, ocean:Pacific.
    "2a": "whole-part",  # Object:Component, "a Y is a part of an X": hand:finger, egg:yolk.
    "2b": "collection-member",  # Collection:Member, "X is made from a collection of Y": army:soldier, flock:sheep.
    "2c": "whole-part",  # Mass:Portion, "X may be divided into Y": week:day, hour:seconds.
    "2f": "whole-part",  # Item:Topological Part, "Y is one of the areas of X": house:bedroom, airplane:cockpit.
    "2g": "thing-material",  # Object:Stuff, "X is made of Y": bread:flour, table:wood.
    "3a": "synonym",  # Synonymity: kid:child, big:large.
    "3b": "mild-extreme",  # Dimensional Similarity, weaker -> stronger kind: pain:agony, stream:river, jog:run.
    "3c": "mild-extreme",  # Dimensional Excessive, "Y is an excessive form of X": tired:exhausted, angry:enraged.
    "4a": "antonym-binary",  # Contradictory, "cannot be X and Y at the same time": alive:dead, on:off.
    "4b": "antonym",  # Contrary, gradable opposites: old:young, happy:sad.
    "4c": "antonym-directional",  # Reverse, "X may be undone by Y": buy:sell, tie:untie (reversing verbs).
    "4d": "antonym-directional",  # Directional: up:down, north:south, top:bottom.
    "5d": "adjective-noun",  # Agent Attribute:State, "a person who is X is in a state of Y": tired:exhaustion.
    "5e": "agent-action",  # Object:Typical Action, "an X will typically Y": dog:bark, heart:beat.
    "7a": "profession-product",  # Agent:Object, "an X makes Y": baker:bread, weaver:cloth.
    "7c": "profession-tool",  # Agent:Instrument, "an X uses Y to perform their role": barber:scissors.
    "8a": "cause-effect",  # Cause:Effect, "an X causes Y": injury:pain, joke:laughter.
    "8g": "tool-function",  # Instrument:Intended Action: broom:sweep, knife:cut.
    "9a": "container-content",  # Item:Location, "an X is a place where Y is found": arsenal:weapon, bookshelf:books.
    "9h": "next-item",  # Sequence, "Y follows X in sequence": beginning:middle, pregnancy:birth.
}


def _gold_root(directory: Path) -> Path:
    """The SemEval-2012-Gold-Ratings folder, given it or the semeval2012_task2 folder above it."""
    directory = Path(directory)
    for candidate in (directory, directory / _GOLD_DIR):
        if (candidate / "subcategories-list.txt").is_file() and any((candidate / s).is_dir() for s in _SPLITS):
            return candidate
    raise InvalidInput(
        f"{directory}: not a SemEval-2012 Task 2 folder; expected {_GOLD_DIR}/ (or that folder itself) holding "
        f"subcategories-list.txt and {'/ and '.join(_SPLITS)}/ with GoldRatings-<id>.txt files",
        param=_SEMEVAL_PARAM,
    )


def _read_subcategory_list(path: Path) -> list[tuple[str, str, str]]:
    """``(id, category, name)`` per line of subcategories-list.txt: ``("2a", "PART-WHOLE", "Object:Component")``."""
    entries: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for line, raw in enumerate(_read_text(path, _SEMEVAL_PARAM).splitlines(), start=1):
        if not raw.strip():
            continue
        fields = [field.strip() for field in raw.split(",", 3)]
        if len(fields) != 4 or not all(fields):
            raise _bad(path, line, "expected '<number>, <letter>, <CATEGORY>, <name>'", _SEMEVAL_PARAM)
        sub_id = fields[0] + fields[1]
        if not _SUBCATEGORY_ID.match(sub_id):
            raise _bad(path, line, f"bad subcategory id {sub_id!r}", _SEMEVAL_PARAM)
        if sub_id in seen:
            raise _bad(path, line, f"subcategory {sub_id} listed twice", _SEMEVAL_PARAM)
        seen.add(sub_id)
        entries.append((sub_id, fields[2], fields[3]))
    if not entries:
        raise _bad(path, None, "no subcategories listed", _SEMEVAL_PARAM)
    return entries


def _read_gold_ratings(path: Path) -> tuple[list[tuple[str, str]], list[float]]:
    pairs: list[tuple[str, str]] = []
    ratings: list[float] = []
    declared: int | None = None
    for line, raw in enumerate(_read_text(path, _SEMEVAL_PARAM).splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            count = _UNIQUE_PAIRS.match(stripped)
            if count:
                declared = int(count.group(1))
            continue
        match = _RATING_LINE.match(raw)
        if not match:
            raise _bad(path, line, "expected '<score> \"<x>:<y>\"'", _SEMEVAL_PARAM)
        terms = match.group("pair").split(":")
        if len(terms) != 2 or not all(t.strip() for t in terms):
            raise _bad(path, line, f"pair {match.group('pair')!r} is not of the form x:y", _SEMEVAL_PARAM)
        pairs.append((terms[0].strip(), terms[1].strip()))
        ratings.append(float(match.group("score")))
    if not pairs:
        raise _bad(path, None, "no rated pairs", _SEMEVAL_PARAM)
    if declared is not None and declared != len(pairs):
        raise _bad(path, None, f"header declares {declared} unique pairs but {len(pairs)} were read", _SEMEVAL_PARAM)
    return pairs, ratings


def read_semeval(directory: Path) -> list[SemEvalSubcategory]:
    """Read the 79 SemEval-2012 Task 2 subcategories with gold ratings from Training/ and Testing/, in list order."""
    root = _gold_root(directory)
    subcategories: list[SemEvalSubcategory] = []
    for sub_id, category, name in _read_subcategory_list(root / "subcategories-list.txt"):
        files = [root / split / f"GoldRatings-{sub_id}.txt" for split in _SPLITS]
        found = [f for f in files if f.is_file()]
        if not found:
            raise InvalidInput(
                f"{root}: no GoldRatings-{sub_id}.txt under {' or '.join(_SPLITS)}/", param=_SEMEVAL_PARAM
            )
        if len(found) > 1:
            raise InvalidInput(
                f"{root}: GoldRatings-{sub_id}.txt is in both {' and '.join(_SPLITS)}/", param=_SEMEVAL_PARAM
            )
        pairs, ratings = _read_gold_ratings(found[0])
        subcategories.append(SemEvalSubcategory(id=sub_id, category=category, name=name, pairs=pairs, ratings=ratings))
    return subcategories


# ---------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        mean_rank = (start + end) / 2 + 1
        for k in range(start, end + 1):
            ranks[order[k]] = mean_rank
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson on average ranks, so ties count); nan if < 2 items or a side is constant."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs sequences of equal length, got {len(x)} and {len(y)}")
    if any(math.isnan(v) for v in (*x, *y)):
        raise ValueError("spearman is undefined for nan values")
    n = len(x)
    if n < 2:
        return math.nan
    rx, ry = _average_ranks(x), _average_ranks(y)
    mean = (n + 1) / 2  # the mean of average ranks is always (n + 1) / 2
    dx = [r - mean for r in rx]
    dy = [r - mean for r in ry]
    sxx = sum(d * d for d in dx)
    syy = sum(d * d for d in dy)
    if sxx == 0 or syy == 0:
        return math.nan
    rho = sum(a * b for a, b in zip(dx, dy, strict=True)) / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, rho))
