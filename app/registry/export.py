"""A registry vector as a file other tools read: a GGUF control vector (llama.cpp, repeng, EasySteer) or fvsteer's
own safetensors file.

A function vector is one direction at one layer; as a control vector it is ``direction.<layer>``, and its fvsteer
metadata (name, relation, method, the training data's digest, …) goes along as ``fvsteer.*`` strings. What cannot
go along: the FV position policy — llama.cpp adds a control vector at every token (fvsteer's ``positions: all``).
llama.cpp never steers block 0's output, so a vector at layer 0 cannot be exported as GGUF (422).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from safetensors.torch import save

from app.errors import InvalidInput
from app.registry.control_vector import ControlVector, write_control_vector
from app.registry.vector_file import StoredVector

ExportFormat = Literal["gguf", "safetensors"]
PROVENANCE_PREFIX = "fvsteer."


def as_control_vector(stored: StoredVector, model_hint: str) -> ControlVector:
    """``stored`` as a one-direction control vector; its metadata kept as ``fvsteer.<key>`` provenance."""
    if stored.layer < 1:
        raise InvalidInput(f"vector {stored.name!r} steers layer {stored.layer}; a GGUF control vector cannot "
                           "steer block 0's output (llama.cpp starts at layer 1)", param="format")
    direction = stored.vector.detach().to("cpu").float().numpy().astype(np.float32, copy=True)
    provenance = {f"{PROVENANCE_PREFIX}{key}": value for key, value in stored.metadata.items()}
    provenance[f"{PROVENANCE_PREFIX}positions"] = "fv (llama.cpp applies it at every position)"
    return ControlVector({stored.layer: direction}, model_hint, provenance)


def export_vector(stored: StoredVector, fmt: ExportFormat, model_hint: str) -> bytes:
    """The file's bytes (small: one direction per layer)."""
    if fmt == "safetensors":
        return save({"vector": stored.vector.detach().to("cpu").float().contiguous()}, metadata=stored.metadata)
    control = as_control_vector(stored, model_hint)
    with tempfile.TemporaryDirectory(prefix="fvsteer-export-") as folder:
        path = Path(folder) / "vector.gguf"
        write_control_vector(control, path)
        return path.read_bytes()
