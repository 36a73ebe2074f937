"""The resident bank: the registry's vectors of the served model in one fixed tensor on the model's device.

The folder is fvsteer's registry folder for this model (``FVSTEER_BANK_DIR``: ``<vectors_dir>/<model-slug>``), on
storage shared with fvsteer's API. Each vector takes a row of ``table`` (``[capacity, d_model]``, float32, allocated
once: its address never changes, so compiled graphs and CUDA graphs that read it stay valid). The folder is re-read
when it changes (at most every ``RESCAN_S``, and at once when a request names a key not yet seen).

A vector deleted or replaced after a request was admitted is still served to that request: admission (vLLM's front
process) pins each key it admits with a hard link ``.pinned/<key>.safetensors``, which outlives the registry's file
(kept ``PIN_TTL_S`` after its last admission), and the worker loads a key it cannot find in the folder from there.
A row is reused only when its vector is gone from the folder and no request in the batch holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

log = logging.getLogger("vllm.fvsteer")  # under vLLM's logger: its handlers and format

RESCAN_S = 0.5
SUFFIX = ".safetensors"
PINNED = ".pinned"
PIN_TTL_S = 3600.0  # far longer than a request waits between admission and its first forward
SWEEP_EVERY_S = 60.0


class BankError(RuntimeError):
    """A key the worker cannot give a row: its vector is gone everywhere, or every row is held."""


def vector_digest(vector: torch.Tensor) -> str:
    """What pins a vector's content: the first 16 hex digits of the SHA-256 of its float32 values."""
    data = vector.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def vector_key(name: str, vector: torch.Tensor) -> str:
    return f"{name}@{vector_digest(vector)}"


def read_vector(path: Path) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as handle:
        vector: torch.Tensor = handle.get_tensor("vector").to(torch.float32)
    return vector


@dataclass
class _File:
    stamp: tuple[float, int]  # mtime, size
    key: str


def pinned_path(folder: Path, key: str) -> Path:
    return folder / PINNED / f"{key}{SUFFIX}"


class BankFolder:
    """The keys the folder holds now (what a request may name), without loading anything onto a device.

    Used by vLLM's front process to refuse steering that names a vector the bank cannot have, and to pin what it
    admits."""

    def __init__(self, folder: Path, d_model: int | None = None) -> None:
        self.folder = folder
        self.d_model = d_model
        self._files: dict[str, _File] = {}
        self._scanned = 0.0
        self._swept = 0.0
        self._touched: dict[str, float] = {}  # key → when this process last renewed its pin
        self._lock = threading.Lock()

    def pin(self, key: str, path: Path) -> None:
        """Keep ``key``'s vector readable for ``PIN_TTL_S`` whatever happens to ``path`` (a hard link, checked
        against the key's digest: the file may have been replaced since the folder was read)."""
        pinned = pinned_path(self.folder, key)
        now = time.time()
        if now - self._touched.get(key, float("-inf")) < SWEEP_EVERY_S:
            return  # renewed within the minute: far from expiring, and admission stays free of file calls
        if pinned.exists():
            os.utime(pinned, (now, now))
        else:
            pinned.parent.mkdir(exist_ok=True)
            staging = pinned.with_name(f"{pinned.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                os.link(path, staging)
                if vector_key(key.rsplit("@", 1)[0], read_vector(staging)) != key:
                    raise FileNotFoundError(f"{path} no longer holds {key}")
                os.replace(staging, pinned)
            finally:
                staging.unlink(missing_ok=True)
        self._touched[key] = now
        if now - self._swept >= SWEEP_EVERY_S:
            self._swept = now
            self._touched = {k: t for k, t in self._touched.items() if now - t < SWEEP_EVERY_S}
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.folder / PINNED):
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat().st_mtime > PIN_TTL_S:
                        os.unlink(entry.path)

    def holding(self, force: bool = False) -> dict[str, Path]:
        """key → file; re-read if the folder may have changed (or ``force``)."""
        with self._lock:
            if force or time.monotonic() - self._scanned >= RESCAN_S:
                self._scan()
            return {entry.key: self.folder / name for name, entry in self._files.items()}

    def _scan(self) -> None:
        self._scanned = time.monotonic()
        seen: dict[str, _File] = {}
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if not entry.name.endswith(SUFFIX) or not entry.is_file():
                continue
            stat = entry.stat()
            stamp = (stat.st_mtime, stat.st_size)
            known = self._files.get(entry.name)
            if known is not None and known.stamp == stamp:
                seen[entry.name] = known
                continue
            try:
                vector = read_vector(Path(entry.path))
            except Exception as exc:  # a file being written, or not a vector: skipped until it changes
                log.warning("fvsteer: skipping %s: %s", entry.path, exc)
                continue
            if vector.dim() != 1 or (self.d_model is not None and vector.shape[0] != self.d_model):
                log.warning("fvsteer: skipping %s: shape %s does not fit d_model %s", entry.path,
                            list(vector.shape), self.d_model)
                continue
            seen[entry.name] = _File(stamp, vector_key(entry.name[: -len(SUFFIX)], vector))
        self._files = seen


class ResidentBank:
    """``table[row]`` holds the vector of a key; rows are handed out once and reused only when the table is full,
    the row's vector is gone from the folder and no request holds it. Used from vLLM's model-runner thread only."""

    def __init__(self, folder: Path, capacity: int, d_model: int, device: torch.device) -> None:
        self.folder = BankFolder(folder, d_model)
        self.capacity = capacity
        self.d_model = d_model
        self.table = torch.zeros(capacity, d_model, dtype=torch.float32, device=device)
        self._rows: dict[str, int] = {}
        self._users: dict[str, int] = {}  # key → requests in the batch that hold its row
        self._gone: list[str] = []  # keys whose files were deleted, oldest first: their rows go first

    def acquire(self, key: str) -> int:
        """The row holding ``key`` for one more request (release it when the request leaves), loading the vector
        from the folder or, if it was deleted since admission, from its pin; :class:`BankError` if neither has it
        or every row is held."""
        row = self._rows.get(key)
        if row is None:
            files = self.folder.holding(force=True)
            self._sync(files)
            row = self._rows.get(key)
            if row is None:
                row = self._load(key, files.get(key))
        self._users[key] = self._users.get(key, 0) + 1
        return row

    def release(self, key: str) -> None:
        users = self._users.get(key, 0) - 1
        if users > 0:
            self._users[key] = users
        else:
            self._users.pop(key, None)

    def refresh(self) -> None:
        """Take in new vectors (cheap when nothing changed: one directory listing every ``RESCAN_S``)."""
        self._sync(self.folder.holding())

    def _load(self, key: str, path: Path | None) -> int:
        """Place ``key`` from its file in the folder (the table was full when the folder was read) or its pin."""
        pinned = path is None
        path = pinned_path(self.folder.folder, key) if path is None else path
        try:
            vector = read_vector(path)
        except Exception as exc:  # gone, or not a safetensors file
            raise BankError(f"fvsteer: the bank has no vector {key!r} (folder {self.folder.folder}; "
                            f"not pinned either: {exc})") from exc
        if vector.shape != (self.d_model,) or vector_key(key.rsplit("@", 1)[0], vector) != key:
            raise BankError(f"fvsteer: {path} does not hold the vector {key!r}")
        row = self._place(key, vector)
        if pinned:
            self._gone.append(key)  # not in the folder: its row may go once no request holds it
        return row

    def _sync(self, files: dict[str, Path]) -> None:
        for key in list(self._rows):
            if key not in files and key not in self._gone:
                self._gone.append(key)
        for key, path in files.items():
            if key in self._rows:
                if key in self._gone:
                    self._gone.remove(key)
                continue
            try:
                self._place(key, read_vector(path))
            except BankError:  # full now: loaded when a request names it, if a row is free then
                log.warning("fvsteer: the bank is full (%d rows, FVSTEER_BANK_CAPACITY); %s waits for a free row",
                            self.capacity, key)
                break
            except Exception as exc:  # deleted or rewritten since the listing: the next scan sees it
                log.warning("fvsteer: cannot read %s: %s", path, exc)

    def _place(self, key: str, vector: torch.Tensor) -> int:
        row = self._free_row()
        if row is None:
            raise BankError(f"fvsteer: every one of the bank's {self.capacity} rows holds a vector in use "
                            f"(FVSTEER_BANK_CAPACITY); {key!r} cannot be loaded")
        self.table[row] = vector.to(self.table.device)
        self._rows[key] = row
        log.info("fvsteer: bank row %d ← %s", row, key)
        return row

    def _free_row(self) -> int | None:
        used = set(self._rows.values())
        for row in range(self.capacity):
            if row not in used:
                return row
        for key in self._gone:
            if key not in self._users:
                self._gone.remove(key)
                return self._rows.pop(key)
        return None
