"""The HTTP contract against a real uvicorn server on a tiny random model: envelope, limits, auth, registry."""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save

from app.api.app import create_app
from app.settings import Settings
from tests.conftest import LiveServer, start_server, stop_server

PUBLIC_ROUTES = {
    "/complete", "/analogies", "/vectors", "/vectors/{name}", "/vectors/extract", "/vectors/finetune",
    "/vectors/contrast", "/vectors/{name}/evaluate", "/vectors/{name}/export",
    "/vectors/{name}/decode", "/jobs/{job_id}", "/jobs/{job_id}/events", "/healthz", "/readyz", "/metrics",
    "/openapi.json", "/docs", "/redoc",
    "/score", "/v1/models", "/v1/models/{model_id}", "/v1/completions", "/v1/chat/completions", "/tokenize",
    "/detokenize", "/tokenizer_info", "/playground", "/playground/", "/playground/{asset}",
}


def vector_bytes(d_model: int, seed: int = 0, scale: float = 1.0, name: str = "vector") -> bytes:
    generator = torch.Generator().manual_seed(seed)
    return save({name: torch.randn(d_model, generator=generator) * scale})


def upload(server: LiveServer, name: str, data: bytes, layer: int = 1, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.admin_token if token is None else token}"}
    files = {"file": (f"{name}.safetensors", io.BytesIO(data), "application/octet-stream")}
    return httpx.post(f"{server.url}/admin/vectors", headers=headers, files=files,
                      data={"name": name, "layer": str(layer)}, timeout=30)


def complete(server: LiveServer, **body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/complete", json=body, timeout=60)


def assert_envelope(response: httpx.Response, status: int, param: str | None = None) -> dict[str, str]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error  # type: ignore[no-any-return]


@pytest.fixture
def steer_vector(live_server: LiveServer) -> Iterator[str]:
    name = f"v-{secrets.token_hex(4)}"
    assert upload(live_server, name, vector_bytes(live_server.d_model, scale=8.0)).status_code == 201
    yield name
    httpx.delete(f"{live_server.url}/admin/vectors/{name}",
                 headers={"Authorization": f"Bearer {live_server.admin_token}"})


def test_unsteered_completion_has_no_steering(live_server: LiveServer) -> None:
    response = complete(live_server, prompt="Q: hot\nA:", max_new_tokens=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["steering"] is None and body["baseline"] is None
    assert body["usage"]["prompt_tokens"] == len("Q: hot\nA:")
    assert body["usage"]["completion_tokens"] <= 5
    assert body["id"].startswith("cmpl-")


def test_steered_completion_differs_from_its_baseline_and_reports_the_norm(
    live_server: LiveServer, steer_vector: str
) -> None:
    response = complete(live_server, prompt="Q: hot\nA:", max_new_tokens=12, relations={steer_vector: 2.0},
                        scale=1.5, return_baseline=True)
    assert response.status_code == 200, response.text
    body = response.json()
    plain = complete(live_server, prompt="Q: hot\nA:", max_new_tokens=12).json()
    assert body["baseline"]["text"] == plain["text"]
    assert body["text"] != body["baseline"]["text"]
    stored = httpx.get(f"{live_server.url}/vectors/{steer_vector}").json()
    assert body["steering"]["relations"] == {steer_vector: 2.0}
    assert math.isclose(body["steering"]["layers"]["1"]["norm"], 3.0 * stored["norm"], rel_tol=1e-4)


def test_layer_override_moves_the_vector(live_server: LiveServer, steer_vector: str) -> None:
    body = complete(live_server, prompt="Q: a\nA:", max_new_tokens=4, relations={steer_vector: 1.0}, layer=3).json()
    assert list(body["steering"]["layers"]) == ["3"]


def test_zero_weights_are_dropped(live_server: LiveServer, steer_vector: str) -> None:
    body = complete(live_server, prompt="Q: a\nA:", max_new_tokens=4, relations={steer_vector: 0.0}).json()
    plain = complete(live_server, prompt="Q: a\nA:", max_new_tokens=4).json()
    assert body["text"] == plain["text"]
    assert body["steering"] == {"relations": {}, "scale": 1.0, "positions": "fv", "layers": {}}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "x", "relations": {"no-such-vector": 1.0}}, 404, "relations.no-such-vector"),
        ({"prompt": "x", "relations": {"UPPER": 1.0}}, 404, "relations.UPPER"),
        ({"prompt": ""}, 422, "prompt"),
        ({"prompt": "x", "max_new_tokens": 0}, 422, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": 65}, 422, "max_new_tokens"),
        ({"prompt": "x" * 513}, 422, "prompt"),
        ({"prompt": "x", "bogus": 1}, 422, "bogus"),
        ({"prompt": "x", "temperature": -1}, 422, "temperature"),
        ({"prompt": "x", "top_p": 0}, 422, "top_p"),
        ({"prompt": "x", "layer": 99, "relations": {}}, 422, "layer"),
        ({"prompt": "x", "stop": [""]}, 422, "stop.0"),
        ({"prompt": "x", "positions": "some"}, 422, "positions"),
        ({"prompt": 5}, 422, "prompt"),
        ({}, 422, "prompt"),  # one of prompt and messages
        ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, 422, "prompt"),
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 422, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x"}]}, 422, "messages"),  # the tiny tokenizer has no template
    ],
)
def test_bad_completion_input_gets_an_envelope(live_server: LiveServer, body: dict[str, object], status: int,
                                               param: str) -> None:
    assert_envelope(complete(live_server, **body), status, param)


def test_a_vanishing_top_p_samples_the_top_token_over_http(live_server: LiveServer) -> None:
    """top_p = 1e-300 (and OpenAI's 1e-46) is 0 in float32: sampled, it must act greedy, never 500 its batch."""
    greedy = complete(live_server, prompt="Q: a\nA:", max_new_tokens=4).json()
    for top_p in (1e-300, 1e-46):
        sampled = complete(live_server, prompt="Q: a\nA:", max_new_tokens=4, temperature=1.0, top_p=top_p, seed=3)
        assert sampled.status_code == 200, sampled.text
        assert sampled.json()["text"] == greedy["text"]
    openai = httpx.post(f"{live_server.url}/v1/completions", json={
        "model": httpx.get(f"{live_server.url}/readyz").json()["model"], "prompt": "Q: a\nA:", "max_tokens": 4,
        "temperature": 1.0, "top_p": 1e-46, "seed": 3}, timeout=30)
    assert openai.status_code == 200 and openai.json()["choices"][0]["text"] == greedy["text"], openai.text


def test_messages_name_the_limit(live_server: LiveServer) -> None:
    error = assert_envelope(complete(live_server, prompt="x" * 513), 422, "prompt")
    assert "513" in error["message"] and "512" in error["message"]
    error = assert_envelope(complete(live_server, prompt="x", max_new_tokens=65), 422, "max_new_tokens")
    assert "64" in error["message"]


@pytest.mark.parametrize("weight", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_weights_are_refused(live_server: LiveServer, steer_vector: str, weight: str) -> None:
    raw = f'{{"prompt": "x", "relations": {{"{steer_vector}": {weight}}}}}'
    response = httpx.post(f"{live_server.url}/complete", content=raw, headers={"content-type": "application/json"})
    assert_envelope(response, 422, f"relations.{steer_vector}")


def test_malformed_json_and_oversized_body(live_server: LiveServer) -> None:
    response = httpx.post(f"{live_server.url}/complete", content=b'{"prompt": "x",',
                          headers={"content-type": "application/json"})
    assert_envelope(response, 422, "body")
    huge = b'{"prompt": "' + b"a" * 1_100_000 + b'"}'
    assert_envelope(httpx.post(f"{live_server.url}/complete", content=huge,
                               headers={"content-type": "application/json"}), 413, "body")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must still hold
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"a" * 50_000
        yield b'"}'

    streamed = httpx.post(f"{live_server.url}/complete", content=chunks(),
                          headers={"content-type": "application/json"})
    assert_envelope(streamed, 413, "body")
    assert complete(live_server, prompt="still serving", max_new_tokens=2).status_code == 200


def test_unknown_route_and_method_use_the_envelope(live_server: LiveServer) -> None:
    assert_envelope(httpx.get(f"{live_server.url}/nowhere"), 404)
    assert_envelope(httpx.put(f"{live_server.url}/complete"), 405)


def test_upload_list_show_delete_roundtrip(live_server: LiveServer) -> None:
    name = f"up-{secrets.token_hex(4)}"
    created = upload(live_server, name, vector_bytes(live_server.d_model, seed=3), layer=2)
    assert created.status_code == 201, created.text
    meta = created.json()
    assert meta["method"] == "imported" and meta["layer"] == 2 and meta["d_model"] == live_server.d_model
    assert meta["format"] == "fvsteer/1" and meta["model_fingerprint"]
    assert (live_server.vectors_dir / "tiny-llama" / f"{name}.safetensors").is_file()
    public = httpx.get(f"{live_server.url}/vectors").json()["vectors"]
    assert any(item["name"] == name for item in public)
    admin = httpx.get(f"{live_server.url}/admin/vectors",
                      headers={"Authorization": f"Bearer {live_server.admin_token}"}).json()
    assert any(item["name"] == name and "model_fingerprint" in item for item in admin["vectors"])
    assert_envelope(upload(live_server, name, vector_bytes(live_server.d_model)), 409, "name")
    deleted = httpx.delete(f"{live_server.url}/admin/vectors/{name}",
                           headers={"Authorization": f"Bearer {live_server.admin_token}"})
    assert deleted.json() == {"deleted": name}
    assert not (live_server.vectors_dir / "tiny-llama" / f"{name}.safetensors").exists()
    assert_envelope(httpx.get(f"{live_server.url}/vectors/{name}"), 404, "name")


@pytest.mark.parametrize(
    ("data", "name", "layer", "param"),
    [
        (b"not a safetensors file at all", "bad-file", 1, "file"),
        (save({"vector": torch.randn(7)}), "bad-dim", 1, "file"),
        (save({"other": torch.randn(32)}), "bad-key", 1, "file"),
        (save({"vector": torch.tensor([float("nan")] * 32)}), "bad-nan", 1, "file"),
        (save({"vector": torch.arange(32)}), "bad-dtype", 1, "file"),
        (save({"vector": torch.randn(32)}), "../escape", 1, "name"),
        (save({"vector": torch.randn(32)}), "Bad Name", 1, "name"),
        (save({"vector": torch.randn(32)}), "bad-layer", 4, "layer"),
    ],
)
def test_bad_uploads_are_refused(live_server: LiveServer, data: bytes, name: str, layer: int, param: str) -> None:
    assert_envelope(upload(live_server, name, data, layer=layer), 422, param)
    assert not list(live_server.vectors_dir.rglob("*escape*"))


def test_upload_over_the_size_limit(tmp_path: Path, tiny_llama_dir: Path) -> None:
    server = start_server(tmp_path, str(tiny_llama_dir), admin_token="t0ken", d_model=32, n_layers=4,
                          extra_env={"FVSTEER_MAX_UPLOAD_BYTES": "2048"})
    try:
        response = upload(server, "big", save({"vector": torch.randn(32), "pad": torch.randn(2000)}))
        assert_envelope(response, 413)
    finally:
        stop_server(server)


def _all_routes(routes: list[object], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Every (method, path) of the app, walking FastAPI's lazily included routers."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context_prefix = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            yield from _all_routes(list(included.routes), prefix + context_prefix)
            continue
        for method in sorted(getattr(route, "methods", None) or ()):
            yield method, prefix + str(getattr(route, "path", ""))


def _non_public_routes() -> list[tuple[str, str]]:
    app = create_app(Settings(admin_token="x"))
    return [
        (method, path.replace("{name}", "some-vector"))
        for method, path in _all_routes(list(app.routes))
        if path not in PUBLIC_ROUTES and method != "HEAD"
    ]


def test_route_enumeration_finds_the_admin_routes() -> None:
    routes = _non_public_routes()
    assert ("POST", "/admin/vectors") in routes and ("GET", "/admin/vectors") in routes
    assert ("DELETE", "/admin/vectors/some-vector") in routes


@pytest.mark.parametrize(("method", "path"), _non_public_routes())
def test_every_non_public_route_refuses_without_the_token(live_server: LiveServer, method: str, path: str) -> None:
    assert_envelope(httpx.request(method, live_server.url + path), 401)
    wrong = httpx.request(method, live_server.url + path, headers={"Authorization": "Bearer wrong"})
    assert_envelope(wrong, 401)


def test_no_configured_token_means_admin_routes_are_forbidden(tmp_path: Path, tiny_llama_dir: Path) -> None:
    server = start_server(tmp_path, str(tiny_llama_dir), admin_token=None, d_model=32, n_layers=4)
    try:
        for method, path in _non_public_routes():
            response = httpx.request(method, server.url + path, headers={"Authorization": "Bearer anything"})
            assert_envelope(response, 403)
    finally:
        stop_server(server)


def test_health_readiness_and_metrics(live_server: LiveServer) -> None:
    assert httpx.get(f"{live_server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{live_server.url}/readyz").json() == {"status": "ready", "model": "tiny-llama",
                                                             "cache": "memory", "registry": "local"}
    complete(live_server, prompt="count me", max_new_tokens=3)
    metrics = httpx.get(f"{live_server.url}/metrics").text
    assert "fvsteer_ready 1" in metrics and "fvsteer_tokens_generated_total" in metrics


def test_the_docs_pages_load_nothing_from_elsewhere_under_a_csp(live_server: LiveServer) -> None:
    """/docs loaded Swagger UI from a CDN with no Content-Security-Policy."""
    for page in ("/docs", "/redoc"):
        response = httpx.get(f"{live_server.url}{page}", timeout=30)
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        script_src = policy.split("script-src", 1)[1].split(";", 1)[0]
        assert "default-src 'none'" in policy and "unsafe-inline" not in script_src
        assert not re.findall(r"(?:src|href)=[\"']https?://", response.text), response.text  # every asset is ours
        for asset in re.findall(r"(?:src|href)=[\"'](/docs-assets/[^\"']+)", response.text):
            assert httpx.get(f"{live_server.url}{asset}", timeout=30).status_code == 200, asset
        for script in re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL):
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in policy  # the page's own inline script is allowed by its hash alone
