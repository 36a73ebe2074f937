"""``GET /vectors/{name}/export``, the SDK's ``export_vector`` and ``fvsteer vectors export``: a registry vector as a
GGUF control vector that the ``gguf`` package's reader (llama.cpp's layout) reads back bit for bit, with fvsteer's
metadata as provenance, or as fvsteer's safetensors file; the admin upload takes either back with the same digest,
and refuses a control vector that does not fit the served model, naming the parameter."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fvsteer_client import Client
from gguf import GGUFReader
from safetensors.torch import load

from app.registry.control_vector import ControlVector, write_control_vector
from fvsteer_cli.main import main
from tests.conftest import LiveServer
from tests.test_api import upload, vector_bytes


@pytest.fixture
def exported(live_server: LiveServer) -> tuple[str, torch.Tensor]:
    name = f"exp-{secrets.token_hex(4)}"
    data = vector_bytes(live_server.d_model, seed=7, scale=3.0)
    assert upload(live_server, name, data, layer=2).status_code == 201
    return name, load(data)["vector"]


def export(server: LiveServer, name: str, fmt: str) -> httpx.Response:
    return httpx.get(f"{server.url}/vectors/{name}/export", params={"format": fmt}, timeout=30)


def test_gguf_export_is_a_control_vector_llama_cpp_reads(live_server: LiveServer, exported: tuple[str, torch.Tensor],
                                                         tmp_path: Path) -> None:
    name, vector = exported
    response = export(live_server, name, "gguf")
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == f'attachment; filename="{name}.gguf"'
    path = tmp_path / "v.gguf"
    path.write_bytes(response.content)
    reader = GGUFReader(path)
    fields = {key: field.contents() for key, field in reader.fields.items()}
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama" and fields["controlvector.layer_count"] == 1
    assert fields["fvsteer.name"] == name and fields["fvsteer.layer"] == "2"
    ((tensor),) = reader.tensors
    assert tensor.name == "direction.2" and tensor.tensor_type.name == "F32"
    assert np.array_equal(np.asarray(tensor.data, dtype=np.float32), vector.numpy())  # bit for bit


def test_safetensors_export_goes_back_in_unchanged(live_server: LiveServer, exported: tuple[str, torch.Tensor]
                                                   ) -> None:
    name, vector = exported
    response = export(live_server, name, "safetensors")
    assert response.status_code == 200, response.text
    assert torch.equal(load(response.content)["vector"], vector)
    copy = f"{name}-copy"
    assert upload(live_server, copy, response.content, layer=2).status_code == 201
    original, again = (httpx.get(f"{live_server.url}/vectors/{n}").json() for n in (name, copy))
    assert again["digest"] == original["digest"] and again["norm"] == original["norm"]


def test_refusals_name_the_parameter(live_server: LiveServer, exported: tuple[str, torch.Tensor]) -> None:
    name, _ = exported
    at_zero = f"exp0-{secrets.token_hex(4)}"
    assert upload(live_server, at_zero, vector_bytes(live_server.d_model), layer=0).status_code == 201
    refused = export(live_server, at_zero, "gguf")
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "format"
    assert "layer 1" in refused.json()["error"]["message"]
    assert export(live_server, at_zero, "safetensors").status_code == 200  # fvsteer's own file has no such limit
    assert export(live_server, name, "onnx").status_code == 422
    missing = export(live_server, "no-such-vector", "gguf")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "name"


def test_sdk_and_cli_write_the_same_file(live_server: LiveServer, exported: tuple[str, torch.Tensor],
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name, _ = exported
    with Client(live_server.url) as client:
        data = client.export_vector(name)
        file = client.export_vector(name, "safetensors")
        assert torch.equal(load(file)["vector"], load(export(live_server, name, "safetensors").content)["vector"])
    target = tmp_path / "out.gguf"
    assert main(["--url", live_server.url, "vectors", "export", name, "-o", str(target)]) == 0
    assert target.read_bytes() == data == export(live_server, name, "gguf").content
    assert f"wrote {name} as gguf" in capsys.readouterr().err
    assert GGUFReader(target).tensors[0].name == "direction.2"


def test_a_gguf_export_imports_back_bit_for_bit_with_its_provenance(live_server: LiveServer,
                                                                    exported: tuple[str, torch.Tensor]) -> None:
    name, vector = exported
    data = export(live_server, name, "gguf").content
    copy = f"{name}-gguf"
    with Client(live_server.url, admin_token=live_server.admin_token) as client:
        meta = client.admin.upload_vector(data, name=copy)  # no layer: the file's direction.2 says it
        original, again = client.get_vector(name), client.get_vector(copy)
    assert (meta.layer, meta.method, meta.relation) == (2, "gguf-control-vector", original.relation)
    assert meta.provenance["fvsteer.name"] == name and meta.provenance["fvsteer.layer"] == "2"
    assert again.digest == original.digest and again.norm == original.norm  # the same float32 values
    assert load(export(live_server, copy, "safetensors").content)["vector"].equal(vector)


def test_gguf_imports_that_do_not_fit_are_refused_by_name(live_server: LiveServer, tmp_path: Path,
                                                          exported: tuple[str, torch.Tensor]) -> None:
    name, _ = exported
    data = export(live_server, name, "gguf").content

    def post(content: bytes, **form: str) -> httpx.Response:
        return httpx.post(f"{live_server.url}/admin/vectors", files={"file": ("v.gguf", content)},
                          data={"name": f"bad-{secrets.token_hex(3)}", **form},
                          headers={"Authorization": f"Bearer {live_server.admin_token}"}, timeout=30)

    def control(directions: dict[int, np.ndarray]) -> bytes:
        path = tmp_path / f"cv-{secrets.token_hex(3)}.gguf"
        write_control_vector(ControlVector(directions, "llama"), path)
        return path.read_bytes()

    d = live_server.d_model
    cases = [
        (post(data, layer="3"), "layer", "steers layer 2"),
        (post(control({1: np.ones(d + 1, np.float32)})), "file", f"hidden size is {d}"),
        (post(control({live_server.n_layers: np.ones(d, np.float32)})), "file", "past the served model's last"),
        (post(control({1: np.ones(d, np.float32), 2: np.ones(d, np.float32)})), "file", "one file per layer"),
        (post(b"GGUF" + b"\0" * 20), "file", "GGUF"),
        (post(vector_bytes(d)), "layer", "required for a safetensors file"),
    ]
    for response, param, words in cases:
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == param and words in error["message"], error
