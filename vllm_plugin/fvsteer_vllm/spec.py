"""The steering a request asks for, as it crosses from fvsteer's API to vLLM (``vllm_xargs["fvsteer"]``).

``{"v": [[key, weight, layer], ...], "positions": "fv" | "all", "id": "..."}``: ``key`` names a bank vector as
``<name>@<digest>`` (the digest pins the exact vector, so a name deleted and made again is never confused with
the old one); ``weight`` already includes the request's ``scale``; ``layer`` is the block it is added at (the
vector's own, or the request's override). ``"fv"`` steers the last prompt token and every generated token;
``"all"`` every token. ``id`` (optional, at most 64 letters, digits, ``-`` or ``_``) names the request to the
worker: if its steering cannot be applied, the worker ends it at once and leaves ``.failed/<id>`` in the bank folder
(a logits processor cannot fail one request, and the request must never run unsteered).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

XARG = "fvsteer"
MAX_ENTRIES = 64
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class SpecError(ValueError):
    """The steering cannot be applied as asked (vLLM answers 400 with this message)."""


@dataclass(frozen=True)
class Entry:
    key: str
    weight: float
    layer: int


@dataclass(frozen=True)
class SteeringSpec:
    entries: tuple[Entry, ...]
    positions: Literal["fv", "all"]
    request_id: str | None = None

    @classmethod
    def of(cls, extra_args: dict[str, Any] | None) -> SteeringSpec | None:
        """The request's steering, or None when it asks for none; :class:`SpecError` when malformed."""
        raw = (extra_args or {}).get(XARG)
        if raw is None:
            return None
        try:
            data = json.loads(raw) if isinstance(raw, str) else raw
            entries = tuple(Entry(str(key), float(weight), int(layer)) for key, weight, layer in data["v"])
            positions = data.get("positions", "fv")
            request_id = data.get("id")
        except (ValueError, TypeError, KeyError) as exc:
            raise SpecError(f"fvsteer: malformed steering {str(raw)[:200]!r}: {exc}") from exc
        if positions not in ("fv", "all"):
            raise SpecError(f"fvsteer: positions must be 'fv' or 'all', not {positions!r}")
        if not 0 < len(entries) <= MAX_ENTRIES:
            raise SpecError(f"fvsteer: steering names {len(entries)} vectors; 1 to {MAX_ENTRIES} are allowed")
        if request_id is not None and not (isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id)):
            raise SpecError(f"fvsteer: the steering id must match {REQUEST_ID.pattern}, not {str(request_id)[:80]!r}")
        for entry in entries:
            if not math.isfinite(entry.weight) or entry.layer < 0 or "@" not in entry.key:
                raise SpecError(f"fvsteer: bad steering entry {entry}")
        return cls(entries, positions, request_id)

    def dumps(self) -> str:
        data: dict[str, Any] = {"v": [[e.key, e.weight, e.layer] for e in self.entries], "positions": self.positions}
        if self.request_id is not None:
            data["id"] = self.request_id
        return json.dumps(data, separators=(",", ":"))

    def steering(self) -> SteeringSpec:
        """The same steering without the request's id: what two requests share when they steer alike."""
        return replace(self, request_id=None)
