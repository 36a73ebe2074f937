"""The resident bank: the registry's vectors of the served model in one fixed tensor on the model's device.

The folder is fvsteer's registry folder for this model (``FVSTEER_BANK_DIR``: ``<vectors_dir>/<model-slug>``), on
storage shared with fvsteer's API. Each vector takes a row of ``table`` (``[capacity, d_model]``, float32, allocated
once: its address never changes, so compiled graphs and CUDA graphs that read it stay valid). The folder is re-read
when it changes (at most every ``RESCAN_S``, and at once when a request names a key not yet seen). A vector whose
file is gone keeps its row until the row is needed (requests admitted earlier may still use it).
"""

from __future__ import annotations

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


class BankFolder:
    """The keys the folder holds now (what a request may name), without loading anything onto a device.

    Used by vLLM's front process to refuse steering that names a vector the bank cannot have."""

    def __init__(self, folder: Path, d_model: int | None = None) -> None:
        self.folder = folder
        self.d_model = d_model
        self._files: dict[str, _File] = {}
        self._scanned = 0.0
        self._lock = threading.Lock()

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
    """``table[row]`` holds the vector of a key; rows are handed out once and reused only when the table is full
    and the row's file is gone. Used from vLLM's model-runner thread only."""

    def __init__(self, folder: Path, capacity: int, d_model: int, device: torch.device) -> None:
        self.folder = BankFolder(folder, d_model)
        self.capacity = capacity
        self.table = torch.zeros(capacity, d_model, dtype=torch.float32, device=device)
        self._rows: dict[str, int] = {}
        self._gone: list[str] = []  # keys whose files were deleted, oldest first: their rows go first

    def row(self, key: str) -> int:
        """The row holding ``key``, loading it (and re-reading the folder) when needed."""
        row = self._rows.get(key)
        if row is not None:
            return row
        files = self.folder.holding(force=True)
        self._sync(files)
        row = self._rows.get(key)
        if row is None:
            raise KeyError(f"fvsteer: the bank has no vector {key!r} (folder {self.folder.folder})")
        return row

    def refresh(self) -> None:
        """Take in new vectors (cheap when nothing changed: one directory listing every ``RESCAN_S``)."""
        self._sync(self.folder.holding())

    def _sync(self, files: dict[str, Path]) -> None:
        for key in list(self._rows):
            if key not in files and key not in self._gone:
                self._gone.append(key)
        for key, path in files.items():
            if key in self._rows:
                if key in self._gone:
                    self._gone.remove(key)
                continue
            row = self._free_row()
            if row is None:
                log.error("fvsteer: the bank is full (%d vectors, FVSTEER_BANK_CAPACITY); %s is not served",
                          self.capacity, key)
                continue
            self.table[row] = read_vector(path).to(self.table.device)
            self._rows[key] = row
            log.info("fvsteer: bank row %d ← %s", row, key)

    def _free_row(self) -> int | None:
        used = set(self._rows.values())
        for row in range(self.capacity):
            if row not in used:
                return row
        if self._gone:
            return self._rows.pop(self._gone.pop(0))
        return None
