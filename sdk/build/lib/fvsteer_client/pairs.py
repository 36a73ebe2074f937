"""Word pairs as the API takes them (``[{"input": …, "output": …}, …]``), from files or Python values.

Files are read client-side: a JSON list of ``{"input", "output"}`` objects (or of two-item lists), where an
output may be a list of accepted answers (``"output": ["cold", "cool"]``, the primary one first), or a two-column
CSV whose header row ``input,output`` is optional (one answer per pair). Only the shape is checked here; the server
checks the rest (count, duplicates, lengths) and says which pair is wrong.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from fvsteer_client.errors import InvalidPairsError

__all__ = ["PairsSource", "load_pairs", "normalize_pairs"]

Pair: TypeAlias = dict[str, str | list[str]]
PairsSource: TypeAlias = (
    str | os.PathLike[str] | Sequence[Mapping[str, Any]] | Sequence[tuple[str, str]] | Sequence[Sequence[str]]
)
"""A path to a JSON/CSV pairs file, a list of ``{"input", "output"}`` dicts, or a list of ``(input, output)``."""

_HEADER = ["input", "output"]


def load_pairs(path: str | os.PathLike[str]) -> list[Pair]:
    """Read a pairs file: ``.csv`` is CSV, ``.json`` is JSON, any other name is tried as JSON, then as CSV.

    Raises ``InvalidPairsError`` (a ``ValueError``) naming the file and the row when the content is not pairs,
    and ``OSError`` when the file cannot be read.
    """
    file = Path(path)
    text = file.read_text(encoding="utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    suffix = file.suffix.lower()
    if suffix == ".csv":
        return _csv_pairs(text, file.name)
    if suffix == ".json":
        return _json_pairs(text, file.name)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        return _csv_pairs(text, file.name)
    return _from_items(raw, file.name)


def normalize_pairs(pairs: PairsSource) -> list[Pair]:
    """Any accepted form of pairs → the request body's list of ``{"input", "output"}`` dicts.

    A ``str`` is always taken for a path. Dicts are passed on with only their ``input`` and ``output``.
    """
    if isinstance(pairs, str | os.PathLike):
        return load_pairs(pairs)
    return _from_items(pairs, "pairs")


def _json_pairs(text: str, source: str) -> list[Pair]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidPairsError(f"{source} is not valid JSON: {exc}") from exc
    return _from_items(raw, source)


def _csv_pairs(text: str, source: str) -> list[Pair]:
    rows = [(number, row) for number, row in enumerate(csv.reader(io.StringIO(text)), start=1)
            if any(cell.strip() for cell in row)]
    if rows and [cell.strip().lower() for cell in rows[0][1]] == _HEADER:
        rows = rows[1:]
    pairs: list[Pair] = []
    for number, row in rows:
        if len(row) != 2:
            raise InvalidPairsError(f"{source}: row {number} has {len(row)} columns; pairs need exactly 2")
        pairs.append({"input": row[0], "output": row[1]})
    return pairs


def _from_items(raw: Any, source: str) -> list[Pair]:
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise InvalidPairsError(f"{source} must be a list of {{'input', 'output'}} objects or (input, output) pairs")
    return [_pair(item, f"{source}[{index}]") for index, item in enumerate(raw)]


def _pair(item: Any, where: str) -> Pair:
    if isinstance(item, Mapping):
        if "input" not in item or "output" not in item:
            raise InvalidPairsError(f"{where} needs both 'input' and 'output'; got keys {sorted(map(str, item))}")
        x, y = item["input"], item["output"]
    elif isinstance(item, Sequence) and not isinstance(item, str | bytes) and len(item) == 2:
        x, y = item
    else:
        raise InvalidPairsError(f"{where} must be an {{\"input\", \"output\"}} object or an (input, output) pair")
    if isinstance(y, Sequence) and not isinstance(y, str | bytes):
        if not y or not all(isinstance(answer, str) for answer in y):
            raise InvalidPairsError(f"{where}: output must be a string or a non-empty list of strings")
        y = list(y)
    if not isinstance(x, str) or not isinstance(y, str | list):
        raise InvalidPairsError(f"{where}: input must be a string, output a string or a list of strings")
    return {"input": x, "output": y}
