"""The vectors of the loaded model: loaded from ``<vectors_dir>/<model-slug>/`` at start, then kept in memory.

A file made for another model (other ``d_model`` or fingerprint), or unreadable, is refused with a log
line and listed in :attr:`VectorRegistry.refused`; the rest load and the server starts. Every change (a save, a
deletion, a reload) is announced to the registry's listeners (the generation backend's vector bank).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import torch

from app.errors import Conflict, InvalidInput, NotFound
from app.registry.names import check_name
from app.registry.vector_file import (
    FORMAT,
    StoredVector,
    read_vector_file,
    vector_from_bytes,
    vector_norm,
    write_vector_file,
)

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"


@dataclass(frozen=True)
class ModelIdentity:
    """What a vector must match to be used with the loaded model."""

    name: str
    slug: str
    fingerprint: str
    d_model: int
    n_layers: int


@dataclass(frozen=True)
class RefusedFile:
    file: str
    reason: str


@dataclass(frozen=True)
class RegistryChange:
    """``saved`` (``stored`` set), ``deleted`` (``name`` set) or ``reloaded`` (``vectors``: everything now held)."""

    kind: Literal["saved", "deleted", "reloaded"]
    name: str | None = None
    stored: StoredVector | None = None
    vectors: tuple[StoredVector, ...] = field(default=())


Listener = Callable[[RegistryChange], None]


class VectorRegistry:
    """Thread-safe name → :class:`StoredVector` map backed by one folder of safetensors files."""

    def __init__(self, root: Path, model: ModelIdentity) -> None:
        self.model = model
        self.folder = root / model.slug
        self.refused: list[RefusedFile] = []
        self._vectors: dict[str, StoredVector] = {}
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with every later change, under the registry's lock (so changes arrive in order), and
        once now with everything held."""
        with self._lock:
            self._listeners.append(listener)
            listener(RegistryChange("reloaded", vectors=tuple(self._vectors[name] for name in sorted(self._vectors))))

    def _announce(self, change: RegistryChange) -> None:
        for listener in self._listeners:
            listener(change)

    def load(self) -> None:
        """(Re)read every file of the model's folder."""
        vectors: dict[str, StoredVector] = {}
        refused: list[RefusedFile] = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")) if self.folder.is_dir() else []:
            try:
                stored = read_vector_file(path)
                self._check_compatible(stored, path)
            except Exception as exc:
                log.warning("refused vector file %s: %s", path, exc)
                refused.append(RefusedFile(str(path), str(exc)))
                continue
            vectors[stored.name] = stored
        with self._lock:
            self._vectors, self.refused = vectors, refused
            self._announce(RegistryChange("reloaded", vectors=tuple(vectors[name] for name in sorted(vectors))))
        log.info("registry %s: %d vectors loaded, %d refused", self.folder, len(vectors), len(refused))

    def _check_compatible(self, stored: StoredVector, path: Path) -> None:
        meta = stored.metadata
        if meta.get("name") != path.name[: -len(SUFFIX)]:
            raise ValueError(f"metadata name {meta.get('name')!r} does not match the file name")
        check_name(meta["name"])
        if int(meta.get("d_model", -1)) != self.model.d_model or stored.vector.shape != (self.model.d_model,):
            raise ValueError(
                f"d_model {meta.get('d_model')} does not match the loaded model "
                f"({self.model.name}, d_model {self.model.d_model})"
            )
        if meta.get("model_fingerprint") != self.model.fingerprint:
            raise ValueError(
                f"made for model fingerprint {meta.get('model_fingerprint')!r} "
                f"({meta.get('model')!r}); the loaded model {self.model.name!r} is {self.model.fingerprint!r}"
            )
        if not 0 <= int(meta.get("layer", -1)) < self.model.n_layers:
            raise ValueError(f"layer {meta.get('layer')} is outside the model's 0..{self.model.n_layers - 1}")

    def list(self) -> list[StoredVector]:
        with self._lock:
            return [self._vectors[name] for name in sorted(self._vectors)]

    def get(self, name: str, param: str = "name") -> StoredVector:
        with self._lock:
            stored = self._vectors.get(name)
        if stored is None:
            raise NotFound(f"no vector named {name[:80]!r} for model {self.model.name}", param=param)
        return stored

    def refusal(self, name: str) -> str | None:
        """Why a vector named ``name`` is not usable here, when a file of that name exists: refused at load, or
        stored in another model's folder."""
        path = self.folder / f"{name}{SUFFIX}"
        with self._lock:
            refused = next((item.reason for item in self.refused if item.file == str(path)), None)
        if refused is not None:
            return refused
        others = sorted(other.parent.name for other in self.folder.parent.glob(f"*/{name}{SUFFIX}")
                        if other.parent != self.folder)
        if others:
            return f"it was made for model {others[0]!r}; this server runs {self.model.name!r} ({self.model.slug})"
        return None

    def add(self, vector: torch.Tensor, metadata: dict[str, str]) -> StoredVector:
        """Save a new vector (409 if the name is taken) and make it usable at once."""
        name = check_name(metadata["name"])
        path = self.folder / f"{name}{SUFFIX}"
        full = self._complete_metadata(vector, metadata)
        stored = StoredVector(vector.detach().to("cpu", torch.float32), full)
        with self._lock:
            if name in self._vectors or path.exists():
                raise Conflict(f"a vector named {name!r} exists; delete it first", param="name")
            write_vector_file(path, stored.vector, full)
            self._vectors[name] = stored
            self._announce(RegistryChange("saved", name=name, stored=stored))
        log.info("saved vector %s (layer %s, norm %.3f)", name, full["layer"], float(full["norm"]))
        return stored

    def import_bytes(self, data: bytes, name: str, layer: int, relation: str | None) -> StoredVector:
        """An uploaded safetensors file, validated against the loaded model."""
        check_name(name)
        if not 0 <= layer < self.model.n_layers:
            raise InvalidInput(f"layer {layer} is outside the model's 0..{self.model.n_layers - 1}", param="layer")
        vector = vector_from_bytes(data, self.model.d_model)
        metadata = {"name": name, "layer": str(layer), "relation": relation or name, "method": "imported"}
        return self.add(vector, metadata)

    def delete(self, name: str) -> None:
        with self._lock:
            if name not in self._vectors:
                raise NotFound(f"no vector named {name[:80]!r} for model {self.model.name}", param="name")
            (self.folder / f"{name}{SUFFIX}").unlink(missing_ok=True)
            del self._vectors[name]
            self._announce(RegistryChange("deleted", name=name))
        log.info("deleted vector %s", name)

    def _complete_metadata(self, vector: torch.Tensor, given: dict[str, str]) -> dict[str, str]:
        metadata = {
            "format": FORMAT,
            "relation": given.get("relation") or given["name"],
            "model": self.model.name,
            "model_fingerprint": self.model.fingerprint,
            "d_model": str(self.model.d_model),
            "method": "imported",
            "heads": "[]",
            "dataset_sha256": "",
            "n_pairs": "0",
            "template": "",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "metrics": "{}",
        }
        metadata.update(given)
        metadata["norm"] = f"{vector_norm(vector):.6g}"
        for key in ("heads", "metrics"):
            json.loads(metadata[key])  # refuse malformed JSON before it reaches disk
        return metadata
