"""How every command reports: results on stdout, progress and errors on stderr, and the exit status.

Tables are plain space-aligned columns so that people can read them and ``awk`` can split them; ``--json``
prints the SDK's models as they are, for scripts that want every field.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def out(text: str) -> None:
    """One line (or block) of the command's result on stdout."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def err(text: str) -> None:
    """Progress, warnings and errors on stderr, so that stdout stays the result alone."""
    sys.stderr.write(text if text.endswith("\n") else text + "\n")


def dump_json(value: BaseModel | Sequence[BaseModel]) -> None:
    """An SDK model (or a list of them) as indented JSON, with the API's own field names."""
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    else:
        data = [v.model_dump(mode="json") for v in value]
    out(json.dumps(data, indent=2, ensure_ascii=False))


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """``key  value`` lines with the keys aligned, as ``vectors show`` prints them."""
    width = max(len(key) for key, _ in pairs)
    return "\n".join(f"{key.ljust(width)}  {'' if value is None else value}" for key, value in pairs)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain space-aligned columns: readable by people and splittable by ``awk``."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def fmt_norm(norm: float) -> str:
    """Norms with four significant digits: enough to tell vectors apart, short enough for a table."""
    return f"{norm:.4g}"


def format_heads(heads: Sequence[Any]) -> str:
    """``[[layer, head, aie], …]`` as ``L14.H3 (0.0123), …``; entries of another shape are skipped."""
    parts = []
    for head in heads:
        if isinstance(head, list | tuple) and len(head) >= 2:
            aie = f" ({head[2]:.3g})" if len(head) > 2 and isinstance(head[2], int | float) else ""
            parts.append(f"L{head[0]}.H{head[1]}{aie}")
    return ", ".join(parts)


def format_metric(value: Any) -> str:
    """Scalars as they are; big structures (the AIE matrix, the layer sweep) in brief: ``--json`` has them all."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return " ".join(f"{key}:{format_metric(item)}" for key, item in value.items())
    if isinstance(value, list):
        if value and all(isinstance(row, list) for row in value):
            return f"[{len(value)}x{len(value[0])} matrix]"
        return f"[{len(value)} items]"
    return str(value)


def phase_times(seconds: Mapping[str, float], decimals: int) -> str:
    """``phase 1.23 s, …``: where a job spent its time, in the order the server ran the phases."""
    return ", ".join(f"{phase} {value:.{decimals}f} s" for phase, value in seconds.items())
