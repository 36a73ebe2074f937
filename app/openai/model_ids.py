"""What the ``model`` of an OpenAI request names, and the list ``GET /v1/models`` answers.

The grammar (README, "OpenAI-compatible API"):

- ``<base>`` — the base model, unsteered (or steered by the request's ``steering`` field);
- ``<preset>`` — a stored preset (``/admin/presets``): its relations, scale, layer and positions;
- ``<base>+<vector>[*<weight>]{+<vector>[*<weight>]}`` — those vectors at those weights (default 1), scale 1,
  each at its own layer, FV positions. ``+`` and ``*`` cannot occur in vector or preset names.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from app.engine.requests import BankSteering
from app.errors import FvsteerError, InvalidInput, ModelNotFound, NotFound
from app.openai.protocol import ModelCard, ModelList, PresetSteering
from app.registry.names import NAME_PATTERN
from app.registry.registry import VectorRegistry
from app.services.presets import PresetStore


@dataclass(frozen=True)
class ModelChoice:
    """``steering`` None: the base model unsteered."""

    model: str
    steering: BankSteering | None
    kind: str


class ModelIds:
    def __init__(self, base: str, registry: VectorRegistry, presets: PresetStore) -> None:
        self.base = base
        self.registry = registry
        self.presets = presets
        self.created = int(time.time())

    def resolve(self, model: str) -> ModelChoice:
        """The steering ``model`` names; 404 (``model_not_found``) for a name that is none of the three kinds, 409
        for a preset whose vectors are gone (never served unsteered)."""
        if model == self.base:
            return ModelChoice(model, None, "base")
        if model.startswith(self.base + "+"):
            return ModelChoice(model, self._vector_steering(model[len(self.base) + 1 :]), "vector")
        try:
            return ModelChoice(model, self.presets.steering(model, param="model"), "preset")
        except NotFound as exc:
            if isinstance(exc, ModelNotFound):
                raise
            raise ModelNotFound(f"no model named {model[:120]!r}: use {self.base!r}, a preset, or "
                                f"'{self.base}+<vector>' (GET /v1/models lists them)", param="model") from None

    def _vector_steering(self, terms: str) -> BankSteering:
        weights: dict[str, float] = {}
        for term in terms.split("+"):
            name, _, weight_text = term.partition("*")
            weight = 1.0
            if weight_text:
                try:
                    weight = float(weight_text)
                except ValueError:
                    weight = math.nan
            if not NAME_PATTERN.fullmatch(name) or not math.isfinite(weight) or name in weights:
                raise InvalidInput(f"model {self.base}+{terms[:120]!r} does not parse: write "
                                   f"'{self.base}+<vector>[*<weight>]+…', each vector once", param="model")
            try:
                self.registry.get(name)
            except NotFound:
                raise ModelNotFound(f"no vector named {name!r} for model {self.base} (in model id "
                                    f"'{self.base}+{terms[:120]}')", param="model") from None
            weights[name] = weight
        try:
            return BankSteering.checked(weights)
        except FvsteerError as exc:
            raise InvalidInput(f"model id: {exc.message}", param="model") from None

    def cards(self) -> ModelList:
        """The base model, every preset (with its status), and ``<base>+<vector>`` for every vector."""
        cards = [ModelCard(id=self.base, created=self.created, root=self.base, parent=None, kind="base",
                           steering=None)]
        for preset in self.presets.list():
            cards.append(ModelCard(
                id=preset.name, created=int(preset.created.timestamp()), root=self.base, parent=self.base,
                kind="preset", steering=PresetSteering(
                    relations=preset.relations, scale=preset.scale, layer=preset.layer, positions=preset.positions,
                    status=preset.status, missing=preset.missing),
            ))
        for stored in self.registry.list():
            cards.append(ModelCard(
                id=f"{self.base}+{stored.name}", created=self.created, root=self.base, parent=self.base,
                kind="vector", steering=PresetSteering(relations={stored.name: 1.0}, scale=1.0, layer=None,
                                                       positions="fv", status="ok", missing=[]),
            ))
        return ModelList(data=cards)

    def card(self, model: str) -> ModelCard:
        for card in self.cards().data:
            if card.id == model:
                return card
        self.resolve(model)  # raises the precise error (a vector id that does not parse, an unknown name)
        raise ModelNotFound(f"no model named {model[:120]!r}", param="model")
