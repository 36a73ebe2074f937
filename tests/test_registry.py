"""Vector files and the registry: metadata, atomic writes, refusal of foreign or corrupt files, names."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save, save_file

from app.errors import Conflict, InvalidInput, NotFound, QuotaExceeded
from app.registry.names import check_name
from app.registry.registry import ModelIdentity, VectorRegistry
from app.registry.vector_file import FORMAT, read_vector_file, vector_from_bytes
from app.settings import Settings, vector_quota
from tests.conftest import start_server, stop_server

MODEL = ModelIdentity(name="tiny", slug="tiny", fingerprint="abc123", d_model=8, n_layers=4)


def make_registry(root: Path) -> VectorRegistry:
    registry = VectorRegistry(root, MODEL)
    registry.load()
    return registry


def test_add_writes_full_metadata_and_reloads(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    vector = torch.arange(8, dtype=torch.float32)
    registry.add(vector, {"name": "ramp", "layer": "2", "relation": "ramp-rel", "method": "cma",
                          "heads": json.dumps([[1, 2, 0.5]]), "metrics": json.dumps({"acc": 0.9})})
    stored = read_vector_file(tmp_path / "tiny" / "ramp.safetensors")
    assert torch.equal(stored.vector, vector)
    meta = stored.metadata
    assert meta["format"] == FORMAT and meta["model_fingerprint"] == "abc123" and meta["d_model"] == "8"
    assert float(meta["norm"]) == pytest.approx(float(vector.norm()), rel=1e-5)
    described = stored.describe()
    assert described.heads == [[1, 2, 0.5]] and described.metrics == {"acc": 0.9} and described.layer == 2
    again = make_registry(tmp_path)
    assert [item.name for item in again.list()] == ["ramp"] and not again.refused
    assert not list((tmp_path / "tiny").glob("*.tmp"))


def test_duplicate_names_conflict_and_unknown_names_404(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    registry.add(torch.ones(8), {"name": "one", "layer": "0"})
    with pytest.raises(Conflict):
        registry.add(torch.ones(8), {"name": "one", "layer": "0"})
    with pytest.raises(NotFound):
        registry.get("two")
    with pytest.raises(NotFound):
        registry.delete("two")
    registry.delete("one")
    assert registry.list() == [] and not (tmp_path / "tiny" / "one.safetensors").exists()


def test_foreign_and_corrupt_files_are_refused_and_the_rest_load(tmp_path: Path) -> None:
    make_registry(tmp_path).add(torch.ones(8), {"name": "good", "layer": "1"})
    folder = tmp_path / "tiny"
    base = read_vector_file(folder / "good.safetensors").metadata
    save_file({"vector": torch.ones(8)}, folder / "other-model.safetensors",
              metadata={**base, "name": "other-model", "model_fingerprint": "fff"})
    save_file({"vector": torch.ones(16)}, folder / "wide.safetensors",
              metadata={**base, "name": "wide", "d_model": "16"})
    save_file({"vector": torch.ones(8)}, folder / "deep.safetensors", metadata={**base, "name": "deep", "layer": "9"})
    save_file({"vector": torch.ones(8)}, folder / "renamed.safetensors", metadata={**base, "name": "good"})
    (folder / "garbage.safetensors").write_bytes(b"\x00" * 40)
    registry = make_registry(tmp_path)
    assert [item.name for item in registry.list()] == ["good"]
    reasons = {Path(item.file).name: item.reason for item in registry.refused}
    assert set(reasons) == {"other-model.safetensors", "wide.safetensors", "deep.safetensors",
                            "renamed.safetensors", "garbage.safetensors"}
    assert "fingerprint" in reasons["other-model.safetensors"]
    assert "d_model 16" in reasons["wide.safetensors"]
    assert "layer 9" in reasons["deep.safetensors"]


@pytest.mark.parametrize("name", ["a", "antonym", "country-capital", "v1.2_x", "9" * 64])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "-x", ".x", "../x", "a/b", "a..b", "a b", "x" * 65, "é", "a\x00"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_name(name)
    assert caught.value.param == "name"


def test_vector_from_bytes_accepts_half_precision_and_refuses_the_rest() -> None:
    assert vector_from_bytes(save({"vector": torch.ones(8, dtype=torch.bfloat16)}), 8).dtype == torch.float32
    for data, expected in [
        (b"", "too short"),
        (b"\xff" * 16, "header length"),
        ((4).to_bytes(8, "little") + b"[1,2", "not JSON"),
        (save({"vector": torch.ones(2, 4)}), "shape"),
        (save({"vector": torch.tensor([1.0] * 7 + [float("inf")])}), "NaN or infinite"),
        (save({"vector": torch.full((8,), 3e38)}), "norm overflows"),  # finite values, an infinite norm
        (len(deep := b"[" * 200_000 + b"]" * 200_000).to_bytes(8, "little") + deep, "not JSON"),  # was a 500
    ]:
        with pytest.raises(InvalidInput, match=expected):
            vector_from_bytes(data, 8)


def test_server_starts_with_refused_files_and_lists_them(tmp_path: Path, tiny_llama_dir: Path) -> None:
    folder = tmp_path / "vectors" / "tiny-llama"
    folder.mkdir(parents=True)
    save_file({"vector": torch.ones(32)}, folder / "alien.safetensors",
              metadata={"format": FORMAT, "name": "alien", "d_model": "32", "layer": "1",
                        "model_fingerprint": "not-this-model", "model": "elsewhere"})
    (folder / "broken.safetensors").write_bytes(b"definitely not safetensors")
    server = start_server(tmp_path, str(tiny_llama_dir), admin_token="tok", d_model=32, n_layers=4)
    try:
        assert httpx.get(f"{server.url}/vectors").json() == {"vectors": []}
        refused = httpx.get(f"{server.url}/admin/vectors", headers={"Authorization": "Bearer tok"}).json()["refused"]
        assert {Path(item["file"]).name for item in refused} == {"alien.safetensors", "broken.safetensors"}
        log = server.log()
        assert "alien.safetensors" in log and "broken.safetensors" in log and "fingerprint" in log
    finally:
        stop_server(server)


def test_the_vector_quota_refuses_the_save_beyond_it(tmp_path: Path) -> None:
    """Public jobs wrote vectors without limit (17 in a minute); a full vLLM bank then served nothing new."""
    registry = VectorRegistry(tmp_path, MODEL, max_vectors=2)
    for index in range(2):
        registry.add(torch.ones(8) * (index + 1), {"name": f"v{index}", "layer": "1"})
    with pytest.raises(QuotaExceeded) as refused:
        registry.add(torch.ones(8), {"name": "third", "layer": "1"})
    assert refused.value.status == 507 and refused.value.param == "name" and "limit is 2" in refused.value.message
    assert sorted(path.name for path in registry.folder.glob("*.safetensors")) == ["v0.safetensors", "v1.safetensors"]
    registry.delete("v0")
    registry.add(torch.ones(8), {"name": "third", "layer": "1"})  # room again


def test_with_vllm_the_quota_keeps_bank_rows_free() -> None:
    assert vector_quota(Settings(max_vectors=1000)) == 1000
    assert vector_quota(Settings(backend="vllm", bank_capacity=128)) == 112  # one row in eight kept free
    assert vector_quota(Settings(backend="vllm", bank_capacity=128, max_vectors=50)) == 50
    assert vector_quota(Settings(backend="vllm", bank_capacity=1)) == 1
