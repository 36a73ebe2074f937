"""The vectors of the loaded model: loaded from ``<vectors_dir>/<model-slug>/`` at start, then kept in memory.

A file made for another model (other ``d_model`` or fingerprint), or unreadable, is refused with a log
line and listed in :attr:`VectorRegistry.refused`; the rest load and the server starts. Every change (a save, a
deletion, a reload) is announced to the registry's listeners (the generation backend's vector bank).

Several processes may share the folder (API replicas, job workers): a name is created exclusively on disk, so it is
taken for all of them at once (409 everywhere), and :mod:`app.registry.sync` tells each process of the others'
changes (:meth:`VectorRegistry.refresh`) and has it rescan the folder as a safety net (:meth:`VectorRegistry.rescan`).
Both read the folder as the truth and announce to the listeners only what differs from what is held.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import torch

from app.errors import Conflict, InvalidInput, NotFound, QuotaExceeded
from app.registry.control_vector import GGUF_MAGIC, read_control_vector
from app.registry.names import check_name
from app.registry.vector_file import (
    FORMAT,
    FileId,
    StoredVector,
    check_values,
    create_vector_file,
    file_id,
    read_vector_file,
    read_vector_metadata,
    vector_from_bytes,
    vector_norm,
)
from app.staging import sweep_staging

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


@dataclass(frozen=True)
class Notice:
    """A change this process made to the shared folder, for the other processes sharing it (app/registry/sync.py)."""

    topic: Literal["vector", "preset"]
    kind: Literal["saved", "deleted"]
    name: str


NoticeSink = Callable[[Notice], None]


class VectorRegistry:
    """Thread-safe name → :class:`StoredVector` map backed by one folder of safetensors files.

    Two locks: ``_lock`` guards memory and is held only briefly (readers take it); ``_disk`` makes this process's
    changes and reads of the folder one at a time, so that what is held, ``_files`` and ``refused`` always describe
    one state of the folder. Both are taken to change them (``_disk`` first)."""

    def __init__(self, root: Path, model: ModelIdentity, max_vectors: int | None = None) -> None:
        self.model = model
        self.folder = root / model.slug
        self.max_vectors = max_vectors  # a quota on saves (None: none); files already there are all loaded
        self.refused: list[RefusedFile] = []
        self._vectors: dict[str, StoredVector] = {}
        self._files: dict[str, FileId] = {}  # name → the version of its file last read, held or refused
        self._listeners: list[Listener] = []
        self._peers: list[NoticeSink] = []
        self._preset_watchers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._disk = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with every later change, under the registry's lock (so changes arrive in order), and
        once now with everything held."""
        with self._lock:
            self._listeners.append(listener)
            listener(RegistryChange("reloaded", vectors=tuple(self._vectors[name] for name in sorted(self._vectors))))

    def _announce(self, change: RegistryChange) -> None:
        for listener in self._listeners:
            listener(change)

    def tell_peers(self, sink: NoticeSink) -> None:
        """``sink`` hears of every change this process makes to the folder (not of those it learns from others)."""
        self._peers.append(sink)

    def notify_peers(self, notice: Notice) -> None:
        """Tell the other processes sharing the folder of a change made here (a vector, or a preset beside them)."""
        for sink in self._peers:
            sink(notice)

    def watch_presets(self, reload: Callable[[], None]) -> None:
        """``reload`` is called when another process may have changed the presets beside the vectors."""
        self._preset_watchers.append(reload)

    def presets_changed(self) -> None:
        for reload in self._preset_watchers:
            reload()

    def load(self) -> None:
        """(Re)read every file of the model's folder (and remove staging files writers that died left there)."""
        vectors: dict[str, StoredVector] = {}
        files: dict[str, FileId] = {}
        refused: list[RefusedFile] = []
        with self._disk:
            sweep_staging(self.folder)
            for path in self._paths():
                try:
                    files[path.name[: -len(SUFFIX)]] = file_id(path)
                    stored = self._read(path)
                except Exception as exc:
                    log.warning("refused vector file %s: %s", path, exc)
                    refused.append(RefusedFile(str(path), str(exc)))
                    continue
                vectors[stored.name] = stored
            with self._lock:
                self._vectors, self._files, self.refused = vectors, files, refused
                self._announce(RegistryChange("reloaded", vectors=tuple(vectors[name] for name in sorted(vectors))))
        log.info("registry %s: %d vectors loaded, %d refused", self.folder, len(vectors), len(refused))

    def rescan(self) -> None:
        """Bring memory in step with the folder, for changes other processes made that this one did not hear of: a
        save or a deletion is announced for each file that differs from what is held, nothing when none does."""
        with self._disk:
            for name in sorted({path.name[: -len(SUFFIX)] for path in self._paths()} | set(self._files)):
                self._reconcile(name)
        self.presets_changed()

    def refresh(self, name: str) -> None:
        """Another process changed ``name``: read its file again, or drop it when it is gone."""
        check_name(name)
        with self._disk:
            self._reconcile(name)

    def _paths(self) -> list[Path]:
        return sorted(self.folder.glob(f"*{SUFFIX}")) if self.folder.is_dir() else []

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}{SUFFIX}"

    def _read(self, path: Path) -> StoredVector:
        stored = read_vector_file(path)
        self._check_compatible(stored, path)
        return stored

    def _reconcile(self, name: str) -> None:
        """Make memory say what the folder says of ``name``, reading its file only when it is a version not yet
        read (caller holds ``_disk``)."""
        path = self._path(name)
        try:
            found: FileId | None = file_id(path)
        except FileNotFoundError:
            found = None
        except OSError as exc:  # e.g. a stale NFS handle: left as it is, the next rescan looks again
            log.warning("cannot look at vector file %s (%s); left as it was", path, exc)
            return
        if found is not None and self._files.get(name) == found:
            return
        stored, refusal = None, None
        if found is not None:
            try:
                stored = self._read(path)
            except FileNotFoundError:
                found = None
            except Exception as exc:
                log.warning("refused vector file %s: %s", path, exc)
                refusal = str(exc)
        change = self._settle(name, found, stored, refusal)
        if change is not None:
            log.info("vector %s %s by another process", name, change)

    def _settle(
        self, name: str, found: FileId | None, stored: StoredVector | None, refusal: str | None = None
    ) -> Literal["saved", "deleted"] | None:
        """Hold ``stored`` (the file ``found``), or nothing: the file is refused (``refusal``) or gone (``found``
        None). The listeners hear of a save or a deletion only when what is held changes; returns which, if any
        (caller holds ``_disk``)."""
        path = str(self._path(name))
        with self._lock:
            if found is None:
                self._files.pop(name, None)
            else:
                self._files[name] = found
            kept = [item for item in self.refused if item.file != path]
            self.refused = kept if refusal is None else [*kept, RefusedFile(path, refusal)]
            previous = self._vectors.pop(name, None)
            if stored is not None:
                self._vectors[name] = stored
                if previous is None or not same_vector(previous, stored):
                    self._announce(RegistryChange("saved", name=name, stored=stored))
                    return "saved"
            elif previous is not None:
                self._announce(RegistryChange("deleted", name=name))
                return "deleted"
        return None

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
        """Save a new vector (409 if the name is taken, here or by another process sharing the folder) and make it
        usable at once."""
        name = check_name(metadata["name"])
        full = self._complete_metadata(vector, metadata)
        stored = StoredVector(vector.detach().to("cpu", torch.float32), full)
        taken = Conflict(f"a vector named {name!r} exists; delete it first", param="name")
        with self._disk:
            if name in self._vectors:
                raise taken
            self.check_room()
            try:
                found = create_vector_file(self._path(name), stored.vector, full)
            except FileExistsError:
                self._reconcile(name)  # made by another process a moment ago: hold it here too
                raise taken from None
            self._settle(name, found, stored)
            self.notify_peers(Notice("vector", "saved", name))
        log.info("saved vector %s (layer %s, norm %.3f)", name, full["layer"], float(full["norm"]))
        return stored

    def saved_by(self, name: str) -> str | None:
        """The job that saved the vector ``name`` ("" if none did), None when there is no such vector — read from the
        folder itself, which another process may have written a moment ago."""
        try:
            return read_vector_metadata(self._path(name)).get("job", "")
        except FileNotFoundError:
            return None
        except Exception:  # a file that cannot be read still takes the name
            return ""

    def check_room(self) -> None:
        """507 when one more vector would pass the quota (checked again at the save itself)."""
        if self.max_vectors is not None and len(self._vectors) >= self.max_vectors:
            raise QuotaExceeded(f"the registry holds {len(self._vectors)} vectors for {self.model.name}; the limit is "
                                f"{self.max_vectors} (FVSTEER_MAX_VECTORS, and with vLLM its bank): delete one first",
                                param="name")

    def import_bytes(self, data: bytes, name: str, layer: int | None, relation: str | None) -> StoredVector:
        """An uploaded file — fvsteer's safetensors or a GGUF control vector — validated against the loaded model."""
        check_name(name)
        if data[:4] == GGUF_MAGIC:
            return self._import_control_vector(data, name, layer, relation)
        if layer is None:
            raise InvalidInput("layer is required for a safetensors file (a GGUF control vector names its own)",
                               param="layer")
        self._check_layer(layer)
        vector = vector_from_bytes(data, self.model.d_model)
        metadata = {"name": name, "layer": str(layer), "relation": relation or name, "method": "imported"}
        return self.add(vector, metadata)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.model.n_layers:
            raise InvalidInput(f"layer {layer} is outside the model's 0..{self.model.n_layers - 1}", param="layer")

    def _import_control_vector(self, data: bytes, name: str, layer: int | None, relation: str | None) -> StoredVector:
        """A llama.cpp control vector (``direction.<layer>``): its values kept bit for bit (F16 widened to F32), its
        metadata kept as provenance; a file fvsteer exported gets its relation back."""
        with tempfile.TemporaryDirectory(prefix="fvsteer-import-") as folder:
            path = Path(folder) / "upload.gguf"
            path.write_bytes(data)
            control = read_control_vector(path)
        control.check_model(self.model.n_layers, self.model.d_model)
        if len(control.directions) != 1:
            raise InvalidInput(f"the control vector has directions at {len(control.directions)} layers "
                               f"({', '.join(map(str, control.layers[:8]))}…); a registry vector steers one layer: "
                               "split it into one file per layer", param="file")
        (found,) = control.layers
        if layer is not None and layer != found:
            raise InvalidInput(f"layer {layer} was given but the control vector steers layer {found}", param="layer")
        ours = control.provenance
        metadata = {"name": name, "layer": str(found), "method": "gguf-control-vector",
                    "relation": relation or ours.get("fvsteer.relation") or name,
                    "provenance": json.dumps(ours, sort_keys=True)}
        if control.model_hint:
            metadata["model_hint"] = control.model_hint
        return self.add(torch.from_numpy(control.directions[found].copy()), metadata)

    def delete(self, name: str) -> None:
        """Remove a vector from disk and memory; 404 when it is not there, also when another process has just
        deleted it (only one of two processes deleting a name at once succeeds)."""
        check_name(name)
        missing = NotFound(f"no vector named {name[:80]!r} for model {self.model.name}", param="name")
        with self._disk:
            if name not in self._vectors:
                self._reconcile(name)  # saved by another process a moment ago?
            if name not in self._vectors:
                raise missing
            try:
                self._path(name).unlink()
            except FileNotFoundError:
                self._settle(name, None, None)
                raise missing from None
            self._settle(name, None, None)
            self.notify_peers(Notice("vector", "deleted", name))
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
        check_values(vector, "vector")
        metadata["norm"] = f"{vector_norm(vector):.6g}"
        for key in ("heads", "metrics"):
            json.loads(metadata[key])  # refuse malformed JSON before it reaches disk
        return metadata


def same_vector(one: StoredVector, other: StoredVector) -> bool:
    """Whether two reads hold the same vector (the same values and metadata): a file read again without a change
    announces nothing."""
    return one.metadata == other.metadata and torch.equal(one.vector, other.vector)
