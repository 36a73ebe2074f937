"""Named steering presets ("steered models"): relation weights, scale, layer and positions saved under a name, so a
client can ask for ``model: "<preset>"`` instead of spelling the steering out.

Presets live beside the vectors of the model (``<vectors_dir>/<model-slug>/presets.json``; the registry reads only
``*.safetensors`` there). A preset names vectors but owns none: deleting a vector leaves its presets ``broken``
(listed with what is missing, refused when served) until a vector of that name is saved again.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.engine.requests import MAX_ABS_WEIGHT, MAX_RELATIONS, BankSteering
from app.errors import InvalidInput, MissingBank, NotFound
from app.registry.names import check_name
from app.registry.registry import VectorRegistry

log = logging.getLogger(__name__)

FILE_NAME = "presets.json"
FORMAT = "fvsteer-presets/1"
RESERVED = "+"  # model ids "<base>+<vector>" use it, so no preset name may
MAX_SCALE = 100.0
MAX_DESCRIPTION_CHARS = 500

Weight = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_WEIGHT, le=MAX_ABS_WEIGHT)]


class PresetSpec(BaseModel):
    """What an admin sends to save a preset: the steering of a completion request, minus the prompt."""

    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types exactly: no "1" for 1, no false for 0.0

    relations: dict[str, Weight] = Field(
        min_length=1, max_length=MAX_RELATIONS,
        description=f"Vector name → weight (1–{MAX_RELATIONS} entries, each within ±{MAX_ABS_WEIGHT:g}); every "
                    "vector must exist when the preset is saved.",
    )
    scale: float = Field(1.0, allow_inf_nan=False, ge=-MAX_SCALE, le=MAX_SCALE,
                         description="Multiplies the composite.")
    layer: int | None = Field(None, ge=0, description="Put every vector at this layer instead of its own.")
    positions: Literal["fv", "all"] = Field(
        "fv", description="'fv': last prompt token and every generated token; 'all': also every prompt token."
    )
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARS,
                                    description="Free text for people choosing a preset.")


class Preset(PresetSpec):
    """A saved preset."""

    name: str = Field(description="The preset's name, usable as a model id.")
    created: datetime = Field(description="When the name was first saved (UTC).")
    updated: datetime = Field(description="When it was last saved (UTC).")


class PresetView(Preset):
    """A preset and whether it can be served now."""

    status: Literal["ok", "broken"] = Field(
        description="'broken': some of its vectors are gone from the registry; it is refused until they are back."
    )
    missing: list[str] = Field(description="The vectors it names that the registry no longer holds.")


class PresetFile(BaseModel):
    """The document on disk."""

    format: Literal["fvsteer-presets/1"]
    presets: list[Preset]


class PresetStore:
    """Thread-safe name → :class:`Preset` map, written through to ``presets.json`` atomically on every change."""

    def __init__(self, registry: VectorRegistry, n_layers: int, base_model: str) -> None:
        self.registry = registry
        self.n_layers = n_layers
        self.base_model = base_model
        self.path = registry.folder / FILE_NAME
        self._lock = threading.Lock()
        self._presets = self._load()

    def put(self, name: str, spec: PresetSpec) -> tuple[Preset, bool]:
        """Save ``spec`` as ``name``; a replacement keeps its creation time. Returns the preset and whether it is
        new."""
        self._check_name(name)
        self._check_spec(spec)
        now = datetime.now(UTC)
        with self._lock:
            previous = self._presets.get(name)
            preset = Preset(**spec.model_dump(), name=name, created=previous.created if previous else now, updated=now)
            self._commit({**self._presets, name: preset})
        log.info("%s preset %s", "replaced" if previous else "created", name)
        return preset, previous is None

    def get(self, name: str, param: str = "name") -> PresetView:
        with self._lock:
            preset = self._presets.get(name)
        if preset is None:
            raise NotFound(f"no preset named {name[:80]!r}", param=param)
        return self.view(preset)

    def delete(self, name: str) -> None:
        with self._lock:
            if name not in self._presets:
                raise NotFound(f"no preset named {name[:80]!r}", param="name")
            self._commit({key: value for key, value in self._presets.items() if key != name})
        log.info("deleted preset %s", name)

    def steering(self, name: str, param: str = "model") -> BankSteering:
        """The preset as a request's steering; a broken preset is refused (409), never served unsteered."""
        view = self.get(name, param=param)
        if view.missing:
            raise MissingBank(
                f"preset {name!r} needs vectors the registry no longer holds: {', '.join(map(repr, view.missing))}; "
                "save them again or replace the preset", param=param,
            )
        return BankSteering.checked(view.relations, scale=view.scale, layer=view.layer, positions=view.positions)

    def view(self, preset: Preset) -> PresetView:
        """``preset`` with its status against the registry as it is now."""
        held = {stored.name for stored in self.registry.list()}
        missing = [vector for vector in preset.relations if vector not in held]
        return PresetView(**preset.model_dump(), status="broken" if missing else "ok", missing=missing)

    def list(self) -> list[PresetView]:
        """Every preset, by name."""
        with self._lock:
            presets = [self._presets[name] for name in sorted(self._presets)]
        return [self.view(preset) for preset in presets]

    def _check_name(self, name: str) -> None:
        if RESERVED in name:
            raise InvalidInput(f"a preset name cannot contain {RESERVED!r}: model ids '<base>{RESERVED}<vector>' "
                               "use it", param="name")
        check_name(name)
        if name == self.base_model:
            raise InvalidInput(f"{name!r} is the base model's id; choose another preset name", param="name")

    def _check_spec(self, spec: PresetSpec) -> None:
        if spec.layer is not None and spec.layer >= self.n_layers:
            raise InvalidInput(f"layer {spec.layer} is outside the model's 0..{self.n_layers - 1}", param="layer")
        for vector in spec.relations:
            self.registry.get(vector, param=f"relations.{vector}")

    def _commit(self, presets: dict[str, Preset]) -> None:
        """Write ``presets`` to disk, then hold them: a failed write changes nothing (caller holds the lock)."""
        document = PresetFile(format=FORMAT, presets=[presets[name] for name in sorted(presets)])
        write_atomically(self.path, document.model_dump_json(indent=2))
        self._presets = presets

    def _load(self) -> dict[str, Preset]:
        """The presets on disk; an unreadable file is set aside (``presets.json.corrupt-<time>``) and the server
        starts with none rather than not at all."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            return self._set_aside(exc)
        try:
            presets = PresetFile.model_validate_json(text).presets
            for preset in presets:
                check_name(preset.name)
        except (ValueError, InvalidInput) as exc:  # pydantic's ValidationError is a ValueError
            return self._set_aside(exc)
        log.info("presets %s: %d loaded", self.path, len(presets))
        return {preset.name: preset for preset in presets}

    def _set_aside(self, reason: Exception) -> dict[str, Preset]:
        aside = self.path.with_name(f"{FILE_NAME}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
        try:
            self.path.rename(aside)
        except OSError:
            log.exception("presets file %s is unreadable (%s) and could not be set aside", self.path, reason)
            return {}
        log.error("presets file %s is unreadable (%s): kept as %s; starting with no presets", self.path, reason, aside)
        return {}


def write_atomically(path: Path, text: str) -> None:
    """A reader never sees half a file, a crash never leaves one: a temporary file beside it, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
