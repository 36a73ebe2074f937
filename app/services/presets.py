"""Named steering presets ("steered models"): relation weights, scale, layer and positions saved under a name, so a
client can ask for ``model: "<preset>"`` instead of spelling the steering out.

Presets live beside the vectors of the model (``<vectors_dir>/<model-slug>/presets.json``; the registry reads only
``*.safetensors`` there). A preset names vectors but owns none: deleting a vector leaves its presets ``broken``
(listed with what is missing, refused when served) until a vector of that name is saved again.

Processes sharing the folder (replicas, job workers) share ``presets.json``: a change is made to the file as it is
then, never to a stale copy, under a file lock (``<vectors_dir>/.<model-slug>.presets.lock``, beside the model's
folder rather than in it), and the other processes re-read it when told (``VectorRegistry.watch_presets``: a peer's
notice, a rescan). On NFS the lock needs working NFS locks (NFSv4, or NFSv3 with lockd; not a ``nolock`` mount).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.engine.requests import MAX_ABS_WEIGHT, MAX_RELATIONS, BankSteering
from app.errors import InvalidInput, MissingBank, NotFound
from app.registry.names import check_name
from app.registry.registry import Notice, VectorRegistry
from app.registry.vector_file import FileId, file_id

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
        self.lock_path = registry.folder.parent / f".{registry.folder.name}.presets.lock"
        self._lock = threading.Lock()
        self._presets: dict[str, Preset] = {}
        self._read: FileId | None = None  # the version of presets.json that ``_presets`` holds
        self._refresh()
        registry.watch_presets(self.reload)

    def reload(self) -> None:
        """Re-read ``presets.json`` if another process changed it since it was last read."""
        with self._lock:
            if self._refresh():
                log.info("presets %s: %d after a change by another process", self.path, len(self._presets))

    def put(self, name: str, spec: PresetSpec) -> tuple[Preset, bool]:
        """Save ``spec`` as ``name``; a replacement keeps its creation time. Returns the preset and whether it is
        new."""
        self._check_name(name)
        self._check_spec(spec)
        now = datetime.now(UTC)
        with self._changing():
            previous = self._presets.get(name)
            preset = Preset(**spec.model_dump(), name=name, created=previous.created if previous else now, updated=now)
            self._commit({**self._presets, name: preset})
        self.registry.notify_peers(Notice("preset", "saved", name))
        log.info("%s preset %s", "replaced" if previous else "created", name)
        return preset, previous is None

    def get(self, name: str, param: str = "name") -> PresetView:
        with self._lock:
            preset = self._presets.get(name)
        if preset is None:
            raise NotFound(f"no preset named {name[:80]!r}", param=param)
        return self.view(preset)

    def delete(self, name: str) -> None:
        with self._changing():
            if name not in self._presets:
                raise NotFound(f"no preset named {name[:80]!r}", param="name")
            self._commit({key: value for key, value in self._presets.items() if key != name})
        self.registry.notify_peers(Notice("preset", "deleted", name))
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
        if name.casefold() == self.base_model.casefold():  # a client that lower-cases model ids must not get steering
            raise InvalidInput(f"{name!r} is the base model's id ({self.base_model!r}, case aside); choose another "
                               "preset name", param="name")

    def _check_spec(self, spec: PresetSpec) -> None:
        if spec.layer is not None and spec.layer >= self.n_layers:
            raise InvalidInput(f"layer {spec.layer} is outside the model's 0..{self.n_layers - 1}", param="layer")
        for vector in spec.relations:
            self.registry.get(vector, param=f"relations.{vector}")

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """This process's lock, then the folder's (every process sharing ``presets.json``), then the file as it is
        now: a change is made to the latest presets, so that no process's change overwrites another's."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            self._refresh()
            yield

    def _refresh(self) -> bool:
        """Read ``presets.json`` again when the version on disk is not the one held; returns whether it was (caller
        holds the lock, or is the constructor)."""
        try:
            found: FileId | None = file_id(self.path)
        except FileNotFoundError:
            found = None
        if found == self._read:
            return False
        self._presets, self._read = self._load(), found
        return True

    def _commit(self, presets: dict[str, Preset]) -> None:
        """Write ``presets`` to disk, then hold them: a failed write changes nothing (caller is in ``_changing``)."""
        document = PresetFile(format=FORMAT, presets=[presets[name] for name in sorted(presets)])
        write_atomically(self.path, document.model_dump_json(indent=2))
        self._presets, self._read = presets, file_id(self.path)

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
