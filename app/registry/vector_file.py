"""Reading, checking and writing one vector file (the format is in docs/architecture.md, "Vectors on disk").

The header of an untrusted file is parsed and checked by hand before any tensor is read: a file
that is not safetensors, holds no ``vector``, has the wrong shape or dtype, or non-finite values is
refused with a message that says which. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fvsteer_vllm.bank import vector_digest
from safetensors import safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from app.errors import InvalidInput
from app.registry.metadata import VectorInfo, VectorMetadata, VectorSummary

FORMAT = "fvsteer/1"
FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}
MAX_HEADER_BYTES = 1_000_000


@dataclass(frozen=True)
class StoredVector:
    """A vector, its metadata as stored in the file (strings), and that metadata parsed once (``meta``)."""

    vector: torch.Tensor
    metadata: dict[str, str]
    meta: VectorMetadata = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", VectorMetadata.from_strings(self.metadata,
                                                                           vector_digest(self.vector)))

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def layer(self) -> int:
        return self.meta.layer

    def summary(self) -> VectorSummary:
        """The public view: what a user needs to pick a vector."""
        return self.meta.summary()

    def info(self) -> VectorInfo:
        """One vector's public description."""
        return self.meta.info()

    def describe(self) -> VectorMetadata:
        """The full metadata (the admin view)."""
        return self.meta


def parse_header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors blob, or a 422 saying why the blob is not one."""
    if len(data) < 8:
        raise InvalidInput("file is not a safetensors file (too short)", param="file")
    (length,) = struct.unpack("<Q", data[:8])
    if length == 0 or length > MAX_HEADER_BYTES or 8 + length > len(data):
        raise InvalidInput("file is not a safetensors file (bad header length)", param="file")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # nested too deep: not a header
        raise InvalidInput("file is not a safetensors file (header is not JSON)", param="file") from exc
    if not isinstance(header, dict):
        raise InvalidInput("file is not a safetensors file (header is not an object)", param="file")
    return header


def vector_from_bytes(data: bytes, d_model: int) -> torch.Tensor:
    """Validate an uploaded safetensors blob and return its ``vector`` as float32 ``[d_model]``."""
    header = parse_header(data)
    entry = header.get("vector")
    if not isinstance(entry, dict):
        tensors = sorted(key for key in header if key != "__metadata__")
        raise InvalidInput(f"file holds no tensor named 'vector' (it holds {tensors[:5]})", param="file")
    if entry.get("dtype") not in FLOAT_DTYPES:
        raise InvalidInput(
            f"tensor 'vector' has dtype {entry.get('dtype')}; expected one of {sorted(FLOAT_DTYPES)}", param="file"
        )
    if entry.get("shape") != [d_model]:
        raise InvalidInput(
            f"tensor 'vector' has shape {entry.get('shape')}; the loaded model needs [{d_model}]", param="file"
        )
    try:
        vector = load_safetensors_bytes(data)["vector"]
    except Exception as exc:  # the library's own parse errors: malformed offsets, truncated data
        raise InvalidInput(f"file is not a valid safetensors file: {exc}", param="file") from exc
    vector = vector.to(torch.float32)
    check_values(vector, "file")
    return vector


def check_values(vector: torch.Tensor, param: str) -> None:
    """Refuse a vector no model can be steered with: NaN or infinite values, or values so large that its norm (and
    any hidden state it is added to) overflows float32."""
    if not torch.isfinite(vector).all():
        raise InvalidInput("tensor 'vector' holds NaN or infinite values", param=param)
    if not math.isfinite(float(vector.norm())):
        raise InvalidInput("tensor 'vector' is too large: its norm overflows float32", param=param)


def read_vector_metadata(path: Path) -> dict[str, str]:
    """A vector file's metadata from its header alone (the tensor is not read)."""
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def read_vector_file(path: Path) -> StoredVector:
    """Read a vector file written by :func:`create_vector_file` (raises ``ValueError`` on anything else)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        if "vector" not in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
            raise ValueError("no tensor named 'vector'")
        vector = handle.get_tensor("vector").to(torch.float32)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"format is {metadata.get('format')!r}, expected {FORMAT!r}")
    if vector.dim() != 1 or not torch.isfinite(vector).all():
        raise ValueError("tensor 'vector' is not a finite 1-D tensor")
    return StoredVector(vector, metadata)


FileId = tuple[int, int, int]


def file_id(path: Path) -> FileId:
    """Which version of a file is on disk, without reading it: inode, size and modification time (a new file under
    an old name has a new inode; this registry never rewrites a file in place)."""
    status = os.stat(path)
    return status.st_ino, status.st_size, status.st_mtime_ns


def create_vector_file(path: Path, vector: torch.Tensor, metadata: dict[str, str]) -> FileId:
    """Make ``path`` a new file, atomically and exclusively: ``FileExistsError`` when the name is taken, by this
    process or any other sharing the folder, even in a race. Returns the new file's :func:`file_id`.

    The file is written in full under a temporary name (``<name>.safetensors.<random>.tmp``, which readers globbing
    ``*.safetensors`` never pick up), then hard-linked to ``path``: ``link`` fails when ``path`` exists, atomically
    on POSIX filesystems and on NFS (v3 and later), so no reader sees half a file and no two writers both win."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file({"vector": vector.detach().to("cpu", torch.float32).contiguous()}, staging, metadata=metadata)
        with open(staging, "rb") as written:
            os.fsync(written.fileno())  # the data is on disk before the name is: a crash never leaves an empty file
        _link_exclusively(staging, path)
        return file_id(Path(staging))  # the same inode as ``path``, which another process may already be deleting
    finally:
        Path(staging).unlink(missing_ok=True)


def _link_exclusively(staging: str, path: Path) -> None:
    """``os.link``, robust to NFS retransmission: a LINK whose reply was lost and that the client sent again fails
    with EEXIST although the first one made the link; the temporary file then has two links and ``path`` is ours."""
    try:
        os.link(staging, path)
    except FileExistsError:
        if os.stat(staging).st_nlink < 2:
            raise


def vector_norm(vector: torch.Tensor) -> float:
    norm = float(vector.norm())
    return norm if math.isfinite(norm) else float("nan")
