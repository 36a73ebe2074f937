"""Word-pair datasets: the shipped relations, validation of pairs as the API takes them, the dataset hash, splits.

A dataset is identified by the SHA-256 of its canonical JSON, which keys the head-mean cache and is
recorded in every vector's provenance.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import InvalidInput, NotFound

RELATIONS_DIR = Path(__file__).parent / "relations"
MIN_PAIRS = 12
MAX_PAIRS = 10_000
MAX_TEXT_CHARS = 200
MAX_ANSWERS = 8  # accepted answers per pair
SPLIT_FRACTIONS = (0.70, 0.09)  # train, valid; the rest (21 %) is test, as in Todd et al.


@dataclass(frozen=True)
class Pair:
    """One input and its answer; ``alternatives`` are other answers that count as right (``"output": ["cold",
    "cool"]`` in a file): relations such as antonyms of gradable adjectives have more than one."""

    input: str
    output: str
    alternatives: tuple[str, ...] = ()

    @property
    def answers(self) -> tuple[str, ...]:
        """Every accepted answer, the primary one (used in demonstrations) first."""
        return (self.output, *self.alternatives)


@dataclass(frozen=True)
class Split:
    train: list[Pair]
    valid: list[Pair]
    test: list[Pair]


def shipped_relations() -> list[str]:
    """Names of the relation datasets that ship with fvsteer."""
    return sorted(path.stem for path in RELATIONS_DIR.glob("*.json"))


def shipped_relation_types() -> dict[str, str]:
    """``relation → type`` (morphology-inflection, lexicography, …) from the table of the relations README."""
    text = (RELATIONS_DIR / "README.md").read_text(encoding="utf-8")
    return {match[1]: match[2].strip() for match in re.finditer(r"^\| `([a-z-]+)` \| ([^|]+) \|", text, re.M)}


def relation_pairs(name: str, param: str = "relation") -> list[Pair]:
    """The pairs of a shipped relation (404 naming the known ones when unknown)."""
    path = RELATIONS_DIR / f"{name}.json"
    if name not in shipped_relations():
        known = ", ".join(shipped_relations())
        raise NotFound(f"no relation named {name[:80]!r}; shipped relations: {known}", param=param)
    return validate_pairs(json.loads(path.read_text(encoding="utf-8")), param=param)


def validate_pairs(raw: Any, param: str = "pairs") -> list[Pair]:
    """Check shape, emptiness, duplicates and count; messages name the offending item and the limit."""
    if not isinstance(raw, list):
        raise InvalidInput("pairs must be a list of {\"input\", \"output\"} objects", param=param)
    pairs: list[Pair] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"{param}[{index}]"
        if not isinstance(item, dict) or set(item) != {"input", "output"}:
            raise InvalidInput(f"{where} must be an object with exactly 'input' and 'output'", param=where)
        x, y = item["input"], item["output"]
        outputs = y if isinstance(y, list) else [y]
        if not 1 <= len(outputs) <= MAX_ANSWERS:
            raise InvalidInput(f"{where}.output must be a string or a list of 1 to {MAX_ANSWERS} accepted answers",
                               param=f"{where}.output")
        texts = [x, *outputs]
        if not all(isinstance(text, str) and text.strip() for text in texts):
            raise InvalidInput(f"{where} has an empty or non-string input or output", param=where)
        x, *answers = (text.strip() for text in texts)
        if any(len(text) > MAX_TEXT_CHARS for text in (x, *answers)):
            raise InvalidInput(f"{where} is longer than {MAX_TEXT_CHARS} characters", param=where)
        if len(set(answers)) != len(answers):
            raise InvalidInput(f"{where}.output repeats an answer", param=f"{where}.output")
        if x in seen:
            raise InvalidInput(f"{where} repeats the input {x!r}", param=where)
        seen.add(x)
        pairs.append(Pair(x, answers[0], tuple(answers[1:])))
    if len(pairs) < MIN_PAIRS:
        raise InvalidInput(f"{len(pairs)} pairs given; at least {MIN_PAIRS} are needed", param=param)
    if len(pairs) > MAX_PAIRS:
        raise InvalidInput(f"{len(pairs)} pairs given; the limit is {MAX_PAIRS}", param=param)
    return pairs


def dataset_sha256(pairs: list[Pair]) -> str:
    """A pair with one answer hashes as ``[input, output]``, one with several as ``[input, [answers…]]``."""
    rows = [[pair.input, list(pair.answers) if pair.alternatives else pair.output] for pair in pairs]
    canonical = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def split_pairs(pairs: list[Pair], seed: int) -> Split:
    """Seeded 70/9/21 split; every part gets at least one pair."""
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    n_valid = max(1, round(n * SPLIT_FRACTIONS[1]))
    n_train = min(max(1, round(n * SPLIT_FRACTIONS[0])), n - n_valid - 1)
    return Split(shuffled[:n_train], shuffled[n_train : n_train + n_valid], shuffled[n_train + n_valid :])
