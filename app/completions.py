"""Steered completions: resolve the composite, submit steered (and baseline) rows, await the engine.

This is the seam between the HTTP layer (plain Python values in and out) and the torch side.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from app.engine.engine import Engine
from app.engine.requests import GenerationRequest, GenerationResult, SamplingParams
from app.errors import InvalidInput
from app.fv.composite import build_composite
from app.registry.registry import VectorRegistry


@dataclass(frozen=True)
class CompletionInput:
    prompt: str
    relations: dict[str, float] = field(default_factory=dict)
    layer: int | None = None
    scale: float = 1.0
    positions: Literal["fv", "all"] = "fv"
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    return_baseline: bool = False


_ids = itertools.count()


class CompletionService:
    def __init__(self, engine: Engine, registry: VectorRegistry, *, max_new_tokens: int, timeout_s: float) -> None:
        self.engine = engine
        self.registry = registry
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s

    async def complete(self, spec: CompletionInput) -> dict[str, Any]:
        """Run one completion request; the answer has the shape of the ``POST /complete`` response."""
        if spec.max_new_tokens > self.max_new_tokens:
            raise InvalidInput(
                f"max_new_tokens is {spec.max_new_tokens}; the limit is {self.max_new_tokens}", param="max_new_tokens"
            )
        composite = build_composite(spec.relations, self.registry, layer=spec.layer, scale=spec.scale)
        steered = bool(spec.relations)
        prompt_ids = self.engine.encode(spec.prompt, spec.max_new_tokens)
        params = SamplingParams(spec.max_new_tokens, spec.temperature, spec.top_p, spec.seed, spec.stop)
        deadline = time.monotonic() + self.timeout_s
        main = GenerationRequest(
            prompt_ids, params, steering=composite.layers or None, all_positions=spec.positions == "all",
            deadline=deadline,
        )
        rows = [main]
        if spec.return_baseline:
            rows.append(GenerationRequest(prompt_ids, params, deadline=deadline))
        self.engine.submit(rows)
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(row.future) for row in rows))
        except asyncio.CancelledError:
            for row in rows:
                row.cancel()
            raise
        result: GenerationResult = results[0]
        response: dict[str, Any] = {
            "id": f"cmpl-{secrets.token_hex(6)}{next(_ids)}",
            "model": self.registry.model.name,
            "text": result.text,
            "finish_reason": result.finish_reason,
            "steering": None,
            "baseline": None,
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens},
        }
        if steered:
            response["steering"] = {
                "relations": composite.relations,
                "layers": {str(layer): {"norm": norm} for layer, norm in composite.norms().items()},
            }
        if spec.return_baseline:
            response["baseline"] = {"text": results[1].text, "finish_reason": results[1].finish_reason}
        return response
