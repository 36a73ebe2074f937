"""GGUF control vectors: written as llama.cpp reads them, read back bit for bit, and every malformed file refused with
a 422 that names the file (app/registry/control_vector.py; no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from app.errors import InvalidInput
from app.registry.control_vector import (
    LAYER_COUNT_KEY,
    MODEL_HINT_KEY,
    ControlVector,
    read_control_vector,
    write_control_vector,
)


def directions(layers: list[int], size: int = 16, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {layer: rng.standard_normal(size).astype(np.float32) for layer in layers}


def raw_file(path: Path, tensors: dict[str, np.ndarray], arch: str = "controlvector",
             count: int | None = None) -> Path:
    """A GGUF file written with the gguf package alone, as repeng and llama.cpp's cvector-generator write them."""
    writer = GGUFWriter(path, arch=arch)
    writer.add_string(MODEL_HINT_KEY, "llama")
    writer.add_int32(LAYER_COUNT_KEY, len(tensors) if count is None else count)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_written_vector_reads_back_bit_for_bit_with_its_provenance(tmp_path: Path) -> None:
    vector = ControlVector(directions([29, 1, 5]), "llama", {"fvsteer.name": "antonym", "fvsteer.method": "cma"})
    write_control_vector(vector, tmp_path / "v.gguf")
    again = read_control_vector(tmp_path / "v.gguf")
    assert again.layers == [1, 5, 29] and again.model_hint == "llama" and again.provenance == vector.provenance
    for layer in vector.layers:
        assert again.directions[layer].tobytes() == vector.directions[layer].tobytes()
    # What llama.cpp's loader looks at: F32 tensors named direction.<layer> of [n_embd], the layer count.
    reader = GGUFReader(tmp_path / "v.gguf")
    assert [(t.name, t.tensor_type.name, list(t.shape)) for t in reader.tensors] == [
        ("direction.1", "F32", [16]), ("direction.5", "F32", [16]), ("direction.29", "F32", [16])]
    assert reader.fields[LAYER_COUNT_KEY].contents() == 3
    assert reader.fields["general.architecture"].contents() == "controlvector"


def test_a_file_written_by_other_tools_reads_and_f16_is_widened(tmp_path: Path) -> None:
    half = np.linspace(-1, 1, 16, dtype=np.float16)
    path = raw_file(tmp_path / "repeng.gguf", {"direction.3": half, "direction.4": half * 2})
    vector = read_control_vector(path)
    assert vector.layers == [3, 4] and vector.d_model == 16 and vector.directions[3].dtype == np.float32
    assert np.array_equal(vector.directions[4], (half * 2).astype(np.float32))


@pytest.mark.parametrize(("tensors", "arch", "count", "message"), [
    ({"direction.1": np.ones(4, np.float32)}, "llama", None, "architecture is 'llama'"),
    ({"direction.0": np.ones(4, np.float32)}, "controlvector", None, "start at layer 1"),
    ({"direction.1": np.ones(4, np.float32), "direction.2": np.ones(5, np.float32)}, "controlvector", None,
     "differ in size"),
    ({"direction.1": np.ones(4, np.float32)}, "controlvector", 7, "says 7 layers"),
    ({"output.weight": np.ones(4, np.float32)}, "controlvector", None, "unexpected tensor 'output.weight'"),
    ({"direction.2": np.array([1.0, np.nan], np.float32)}, "controlvector", None, "NaN or infinite"),
    ({"direction.2": np.ones((2, 2), np.float32)}, "controlvector", None, "1-D float32"),
])
def test_malformed_files_are_refused_with_what_is_wrong(tmp_path: Path, tensors: dict[str, np.ndarray], arch: str,
                                                        count: int | None, message: str) -> None:
    path = raw_file(tmp_path / "bad.gguf", tensors, arch, count)
    with pytest.raises(InvalidInput, match=message) as refused:
        read_control_vector(path)
    assert refused.value.param == "file"


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all, just text")
    with pytest.raises(InvalidInput, match="not a readable GGUF file"):
        read_control_vector(tmp_path / "x.gguf")


def test_block_zero_cannot_be_written_for_llama_cpp(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="start at layer 1"):
        ControlVector(directions([0, 3]))


def test_the_served_models_shape_is_checked() -> None:
    vector = ControlVector(directions([2, 9], size=576))
    vector.check_model(n_layers=30, d_model=576)
    with pytest.raises(InvalidInput, match="hidden size is 64"):
        vector.check_model(n_layers=30, d_model=64)
    with pytest.raises(InvalidInput, match=r"direction.9 is past the served model's last block \(7\)"):
        vector.check_model(n_layers=8, d_model=576)
