"""GGUF control vectors: the file llama.cpp (``--control-vector``), repeng and EasySteer read and write.

The layout llama.cpp's reader accepts: architecture ``controlvector``; per steered layer one F32 tensor
``direction.N`` of ``[n_embd]``, added to the output of the model's block N (0-based — the index fvsteer's ``layer``
uses); ``N = 0`` is refused by llama.cpp (it never steers block 0's output), so it is refused here in both
directions. Metadata: ``controlvector.model_hint`` (the model type, e.g. ``llama``) and ``controlvector.layer_count``
(how many directions). Other metadata a file carries is kept as strings, as provenance.

llama.cpp adds a control vector at every position of every pass; that is fvsteer's ``positions: all``. The ``fv``
policy (the last prompt token, then each generated token) has no equivalent there, so a function vector exported to
llama.cpp steers every token.

Only ``gguf`` and numpy: the HTTP layer may check an upload without loading torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from app.errors import InvalidInput

ARCHITECTURE = "controlvector"
GGUF_MAGIC = b"GGUF"  # a GGUF file's first four bytes
MODEL_HINT_KEY = "controlvector.model_hint"
LAYER_COUNT_KEY = "controlvector.layer_count"
DIRECTION = re.compile(r"^direction\.(\d+)$")
PARAM = "file"
# Fields the format itself defines (GGUF's header counts, the architecture): not provenance.
_STRUCTURAL = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture", MODEL_HINT_KEY,
               LAYER_COUNT_KEY}
_MAX_TEXT = 10_000  # characters kept of one metadata value


@dataclass(frozen=True)
class ControlVector:
    """``directions``: layer → ``[d_model]`` float32 direction, added to that block's output."""

    directions: dict[int, np.ndarray]
    model_hint: str = ""
    provenance: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise InvalidInput("a control vector needs at least one direction", param=PARAM)
        sizes = {int(array.size) for array in self.directions.values()}
        for layer, array in self.directions.items():
            if layer < 1:
                raise InvalidInput(f"direction.{layer}: llama.cpp control vectors start at layer 1 (block 0's "
                                   "output is never steered)", param=PARAM)
            if array.ndim != 1 or array.dtype != np.float32:
                raise InvalidInput(f"direction.{layer} must be a 1-D float32 array, got {array.ndim}-D "
                                   f"{array.dtype}", param=PARAM)
            if not np.isfinite(array).all():
                raise InvalidInput(f"direction.{layer} holds NaN or infinite values", param=PARAM)
        if len(sizes) != 1:
            raise InvalidInput(f"directions differ in size: {sorted(sizes)}", param=PARAM)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.directions.values())).size)

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    def check_model(self, n_layers: int, d_model: int) -> None:
        """Refuse a vector made for another model shape (422 naming the file and the model's limits)."""
        if self.d_model != d_model:
            raise InvalidInput(f"the control vector's directions have {self.d_model} values; the served model's "
                               f"hidden size is {d_model}", param=PARAM)
        beyond = [layer for layer in self.layers if layer >= n_layers]
        if beyond:
            raise InvalidInput(f"direction.{beyond[0]} is past the served model's last block "
                               f"({n_layers - 1})", param=PARAM)


def _text(value: object) -> str:
    """A metadata value as provenance text (arrays and numbers as written, long values cut)."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", errors="replace")
    return str(value)[:_MAX_TEXT]


def read_control_vector(path: Path) -> ControlVector:
    """Parse and check a GGUF control vector; anything else is a 422 that says what is wrong."""
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as exc:  # gguf raises these on a truncated or foreign file
        raise InvalidInput(f"not a readable GGUF file: {exc}", param=PARAM) from exc
    fields = {name: item.contents() for name, item in reader.fields.items()}
    architecture = fields.get("general.architecture")
    if architecture != ARCHITECTURE:
        raise InvalidInput(f"GGUF architecture is {architecture!r}; a control vector's is {ARCHITECTURE!r}",
                           param=PARAM)
    directions: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        match = DIRECTION.match(tensor.name)
        if match is None:
            raise InvalidInput(f"unexpected tensor {tensor.name!r}: a control vector holds direction.<layer> only",
                               param=PARAM)
        if tensor.tensor_type.name not in ("F32", "F16"):
            raise InvalidInput(f"{tensor.name} is {tensor.tensor_type.name}; F32 or F16 is needed", param=PARAM)
        if len(tensor.shape) != 1:
            raise InvalidInput(f"{tensor.name} has shape {list(tensor.shape)}; a direction is 1-D float32 [d_model]",
                               param=PARAM)
        directions[int(match.group(1))] = np.array(tensor.data, dtype=np.float32).reshape(-1)
    count = fields.get(LAYER_COUNT_KEY)
    if count is not None and int(count) != len(directions):
        raise InvalidInput(f"{LAYER_COUNT_KEY} says {count} layers; the file holds {len(directions)} directions",
                           param=PARAM)
    provenance = {name: _text(value) for name, value in fields.items() if name not in _STRUCTURAL}
    return ControlVector(directions, _text(fields.get(MODEL_HINT_KEY, "")), provenance)


def write_control_vector(vector: ControlVector, path: Path) -> None:
    """Write ``vector`` as llama.cpp reads it: F32 ``direction.N`` tensors in layer order, the two format keys, and
    its provenance as string metadata."""
    writer = GGUFWriter(path, arch=ARCHITECTURE)
    writer.add_string(MODEL_HINT_KEY, vector.model_hint)
    writer.add_int32(LAYER_COUNT_KEY, len(vector.directions))
    for key, value in sorted(vector.provenance.items()):
        if key not in _STRUCTURAL:
            writer.add_key_value(key, value, GGUFValueType.STRING)
    for layer in vector.layers:
        writer.add_tensor(f"direction.{layer}", vector.directions[layer])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
