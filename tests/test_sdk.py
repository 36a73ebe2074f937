"""The Python SDK against a real server (tiny random llama): every call goes over HTTP, nothing is mocked.

Vectors get unique names so that tests share the session server without depending on each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fvsteer_client as fv
import pytest
import torch
from safetensors.torch import save, save_file

from tests.conftest import LiveServer, free_port

PROMPT = "Q: hot\nA:"


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def vector_bytes(d_model: int, *, seed: int, scale: float = 4.0) -> tuple[bytes, torch.Tensor]:
    """A random vector, big enough against the tiny model's activations to change what it says."""
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(d_model, generator=generator) * scale
    return save({"vector": vector}), vector


def vector_file(path: Path, d_model: int, *, seed: int = 0, scale: float = 4.0) -> tuple[Path, torch.Tensor]:
    vector = torch.randn(d_model, generator=torch.Generator().manual_seed(seed)) * scale
    save_file({"vector": vector}, str(path))
    return path, vector


@dataclass(frozen=True)
class Uploaded:
    name: str
    layer: int
    vector: torch.Tensor


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[fv.Client]:
    with fv.Client(live_server.url, admin_token=live_server.admin_token, timeout=60) as c:
        yield c


@pytest.fixture
def uploaded(live_server: LiveServer, client: fv.Client, tmp_path: Path) -> Iterator[Uploaded]:
    """A fresh vector in the registry, removed again afterwards."""
    name, layer = unique("up"), live_server.n_layers // 2
    path, vector = vector_file(tmp_path / f"{name}.safetensors", live_server.d_model, seed=1)
    client.admin.upload_vector(path, name=name, layer=layer, relation="antonym")
    yield Uploaded(name, layer, vector)
    with contextlib.suppress(fv.NotFoundError):
        client.admin.delete_vector(name)


def test_health_and_ready(client: fv.Client) -> None:
    assert client.health().status == "ok"
    ready = client.ready()
    assert ready.status == "ready"
    assert ready.model


def test_complete_unsteered(client: fv.Client) -> None:
    out = client.complete(PROMPT, max_new_tokens=8)
    assert out.id.startswith("cmpl-")
    assert out.steering is None
    assert out.baseline is None
    assert out.finish_reason in {"stop", "length"}
    assert out.usage.prompt_tokens > 0
    assert 0 <= out.usage.completion_tokens <= 8
    # greedy decoding is deterministic, and explicit None options are simply not sent
    again = client.complete(PROMPT, max_new_tokens=8, relations=None, seed=None, stop=None)
    assert again.text == out.text


def test_complete_steered(client: fv.Client, uploaded: Uploaded) -> None:
    out = client.complete(PROMPT, relations={uploaded.name: 1.0}, max_new_tokens=8)
    assert out.steering is not None
    assert out.steering.relations == {uploaded.name: 1.0}
    assert set(out.steering.layers) == {uploaded.layer}
    assert out.steering.layers[uploaded.layer].norm == pytest.approx(float(uploaded.vector.norm()), rel=1e-3)


def test_complete_layer_override_and_scale(live_server: LiveServer, client: fv.Client, uploaded: Uploaded) -> None:
    layer = (uploaded.layer + 1) % live_server.n_layers
    out = client.complete(PROMPT, relations={uploaded.name: -0.5}, layer=layer, scale=2.0, max_new_tokens=4)
    assert out.steering is not None
    assert set(out.steering.layers) == {layer}
    assert out.steering.layers[layer].norm == pytest.approx(float(uploaded.vector.norm()), rel=1e-3)


def test_complete_with_baseline_matches_unsteered(client: fv.Client, uploaded: Uploaded) -> None:
    steered = client.complete(
        PROMPT, relations={uploaded.name: 1.0}, return_baseline=True, max_new_tokens=8, stop="\n\n", positions="all"
    )
    plain = client.complete(PROMPT, max_new_tokens=8, stop=["\n\n"], positions="all")
    assert steered.steering is not None
    assert steered.baseline is not None
    assert steered.baseline.text == plain.text
    assert steered.baseline.finish_reason == plain.finish_reason


def test_complete_sampling_is_reproducible_with_seed(client: fv.Client) -> None:
    first = client.complete(PROMPT, temperature=1.0, top_p=0.9, seed=7, max_new_tokens=8)
    second = client.complete(PROMPT, temperature=1.0, top_p=0.9, seed=7, max_new_tokens=8)
    assert first.text == second.text


def test_complete_sends_messages_instead_of_a_prompt(client: fv.Client) -> None:
    with pytest.raises(fv.InvalidRequestError) as caught:  # the tiny tokenizer has no chat template: it got there
        client.complete(messages=[{"role": "user", "content": "hi"}], max_new_tokens=4)
    assert caught.value.param == "messages" and "chat template" in caught.value.message
    with pytest.raises(fv.InvalidRequestError) as caught:
        client.complete(max_new_tokens=4)
    assert caught.value.param == "prompt"


def test_complete_rejects_unknown_keyword_locally(client: fv.Client) -> None:
    with pytest.raises(TypeError, match="streaming"):
        client.complete(PROMPT, streaming=True)  # type: ignore[call-overload]


def test_list_and_get_vector(live_server: LiveServer, client: fv.Client, uploaded: Uploaded) -> None:
    listed = {v.name: v for v in client.list_vectors()}
    assert uploaded.name in listed
    summary = listed[uploaded.name]
    assert summary.layer == uploaded.layer
    assert summary.relation == "antonym"
    assert summary.method == "imported"
    assert summary.norm == pytest.approx(float(uploaded.vector.norm()), rel=1e-4)

    info = client.get_vector(uploaded.name)
    assert info.name == uploaded.name
    assert info.d_model == live_server.d_model
    assert info.created
    assert info.model == summary.model


def test_admin_upload_list_delete(live_server: LiveServer, client: fv.Client) -> None:
    name = unique("adm")
    content, vector = vector_bytes(live_server.d_model, seed=2)
    meta = client.admin.upload_vector(content, name=name, layer=1)
    assert meta.name == name
    assert meta.layer == 1
    assert meta.d_model == live_server.d_model
    assert meta.method == "imported"
    assert meta.norm == pytest.approx(float(vector.norm()), rel=1e-4)

    listing = client.admin.list_vectors()
    by_name = {v.name: v for v in listing.vectors}
    assert by_name[name].model_fingerprint
    assert isinstance(listing.refused, list)

    assert client.admin.delete_vector(name).deleted == name
    assert name not in {v.name for v in client.list_vectors()}
    with pytest.raises(fv.NotFoundError):
        client.get_vector(name)


def test_not_found(client: fv.Client) -> None:
    missing = unique("missing")
    with pytest.raises(fv.NotFoundError) as caught:
        client.get_vector(missing)
    err = caught.value
    assert err.status_code == 404
    assert err.type == "not_found"
    assert err.message
    assert err.envelope["error"]["type"] == "not_found"
    with pytest.raises(fv.NotFoundError):
        client.admin.delete_vector(missing)
    with pytest.raises(fv.NotFoundError):
        client.complete(PROMPT, relations={missing: 1.0})


def test_invalid_request(live_server: LiveServer, client: fv.Client) -> None:
    with pytest.raises(fv.InvalidRequestError) as caught:
        client.complete(PROMPT, max_new_tokens=0)
    err = caught.value
    assert err.status_code == 422
    assert err.type == "invalid_request"
    assert "max_new_tokens" in f"{err.param} {err.message}"

    with pytest.raises(fv.InvalidRequestError):
        client.complete(PROMPT, positions="sideways")  # type: ignore[arg-type]
    with pytest.raises(fv.InvalidRequestError):
        client.complete("x" * 1000)  # over the server's FVSTEER_MAX_PROMPT_TOKENS
    wrong_width, _ = vector_bytes(live_server.d_model + 1, seed=3)
    with pytest.raises(fv.InvalidRequestError):
        client.admin.upload_vector(wrong_width, name=unique("wide"), layer=0)
    with pytest.raises(fv.InvalidRequestError):
        client.admin.upload_vector(b"not safetensors", name=unique("junk"), layer=0)


def test_payload_too_large(client: fv.Client) -> None:
    with pytest.raises(fv.PayloadTooLargeError) as caught:
        client.complete("x" * 1_100_000)  # over the server's default FVSTEER_MAX_BODY_BYTES
    assert caught.value.status_code == 413
    assert caught.value.type == "payload_too_large"


def test_admin_needs_token(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FVSTEER_ADMIN_TOKEN", raising=False)
    with fv.Client(live_server.url) as anonymous:
        assert anonymous.admin_token is None
        with pytest.raises(fv.AuthenticationError) as caught:
            anonymous.admin.list_vectors()
    assert caught.value.status_code == 401
    assert caught.value.type == "unauthorized"
    with fv.Client(live_server.url, admin_token="wrong-" + live_server.admin_token) as wrong, pytest.raises(
        fv.AuthenticationError
    ):
        wrong.admin.delete_vector(unique())


def test_conflict_on_duplicate_name(live_server: LiveServer, client: fv.Client) -> None:
    name = unique("dup")
    content, _ = vector_bytes(live_server.d_model, seed=4)
    client.admin.upload_vector(content, name=name, layer=0)
    try:
        with pytest.raises(fv.ConflictError) as caught:
            client.admin.upload_vector(content, name=name, layer=0)
        assert caught.value.status_code == 409
        assert caught.value.type == "conflict"
    finally:
        client.admin.delete_vector(name)


def test_env_defaults(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FVSTEER_URL", live_server.url + "/")
    monkeypatch.setenv("FVSTEER_ADMIN_TOKEN", live_server.admin_token)
    with fv.Client() as c:
        assert c.base_url == live_server.url
        assert isinstance(c.admin.list_vectors().vectors, list)


def test_connection_error() -> None:
    with fv.Client(f"http://127.0.0.1:{free_port()}", timeout=5) as c, pytest.raises(fv.APIConnectionError):
        c.health()


def test_async_client(live_server: LiveServer) -> None:
    async def scenario() -> None:
        async with fv.AsyncClient(live_server.url, admin_token=live_server.admin_token, timeout=60) as c:
            assert (await c.health()).status == "ok"
            assert (await c.ready()).status == "ready"
            name = unique("async")
            content, vector = vector_bytes(live_server.d_model, seed=5)
            meta = await c.admin.upload_vector(content, name=name, layer=2, relation="synonym")
            assert meta.relation == "synonym"
            try:
                assert name in {v.name for v in await c.list_vectors()}
                assert (await c.get_vector(name)).layer == 2
                assert name in {v.name for v in (await c.admin.list_vectors()).vectors}

                plain = await c.complete(PROMPT, max_new_tokens=6)
                steered = await c.complete(PROMPT, relations={name: 1.0}, max_new_tokens=6, return_baseline=True)
                assert plain.steering is None
                assert steered.steering is not None
                assert steered.steering.layers[2].norm == pytest.approx(float(vector.norm()), rel=1e-3)
                assert steered.baseline is not None and steered.baseline.text == plain.text

                # concurrent requests share a batch; each must come out as it would alone
                together = await asyncio.gather(
                    *[c.complete(PROMPT, relations={name: 1.0} if i % 2 else None, max_new_tokens=6) for i in range(4)]
                )
                assert [t.text for t in together] == [plain.text, steered.text] * 2

                with pytest.raises(fv.ConflictError):
                    await c.admin.upload_vector(content, name=name, layer=2)
                with pytest.raises(fv.InvalidRequestError):
                    await c.complete(PROMPT, temperature=-1.0)
            finally:
                assert (await c.admin.delete_vector(name)).deleted == name
            with pytest.raises(fv.NotFoundError):
                await c.get_vector(name)
        async with fv.AsyncClient(live_server.url, admin_token="") as anonymous:
            with pytest.raises(fv.AuthenticationError):
                await anonymous.admin.list_vectors()

    asyncio.run(scenario())


# --- responses the fvsteer server never sends itself, but a proxy or load balancer in front of it can -------------


def _envelope(type_: str, message: str) -> bytes:
    return json.dumps({"error": {"type": type_, "message": message, "param": None}}).encode()


_JSON = {"Content-Type": "application/json"}
_PROXY_ROUTES: dict[str, tuple[int, dict[str, str], bytes]] = {
    "/healthz": (502, {"Content-Type": "text/html"}, b"<html>Bad Gateway</html>"),
    "/readyz": (503, _JSON, _envelope("not_ready", "model loading")),
    "/complete": (429, {**_JSON, "Retry-After": "7"}, _envelope("queue_full", "queue is full")),
    "/vectors": (200, _JSON, b'{"items": []}'),
    "/vectors/slow": (504, {"Content-Type": "text/plain"}, b"upstream timed out"),
    "/vectors/gone": (404, _JSON, b'{"detail": "Not Found"}'),
    "/admin/vectors": (413, {}, b""),
}


class _ProxyHandler(BaseHTTPRequestHandler):
    """A stand-in for a proxy in front of the server: answers each path with a fixed status, headers and body."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status, headers, body = _PROXY_ROUTES[self.path]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # silence the default stderr access log
        pass


@pytest.fixture(scope="module")
def proxy_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_errors_without_envelope_are_still_typed(proxy_url: str) -> None:
    with fv.Client(proxy_url, admin_token="x") as c:
        with pytest.raises(fv.InternalServerError) as bad_gateway:
            c.health()
        assert bad_gateway.value.status_code == 502
        assert "Bad Gateway" in bad_gateway.value.message
        assert bad_gateway.value.envelope == {}

        with pytest.raises(fv.ServiceUnavailableError) as loading:
            c.ready()
        assert loading.value.type == "not_ready"
        assert loading.value.message == "model loading"

        with pytest.raises(fv.RateLimitError) as full:
            c.complete(PROMPT)
        assert full.value.retry_after == 7.0
        assert full.value.type == "queue_full"

        with pytest.raises(fv.GatewayTimeoutError) as slow:
            c.get_vector("slow")
        assert slow.value.message == "upstream timed out"
        assert slow.value.type == "timeout"

        with pytest.raises(fv.NotFoundError) as gone:
            c.get_vector("gone")
        assert gone.value.type == "not_found"
        assert "Not Found" in gone.value.message

        with pytest.raises(fv.PayloadTooLargeError) as too_large:
            c.admin.upload_vector(b"\0" * 64, name="big", layer=0)
        assert too_large.value.type == "payload_too_large"

        with pytest.raises(fv.APIResponseValidationError):
            c.list_vectors()


def test_sdk_does_not_import_torch() -> None:
    code = "import sys, fvsteer_client; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
