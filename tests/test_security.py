"""Security on a real server: odd and path-traversing names are refused by every route that takes a name or an
id, without touching the disk; secrets (the admin token, a Redis password) never reach the log; the defaults bind
127.0.0.1 and send no CORS headers; the admin token is compared in constant time."""

from __future__ import annotations

import hmac
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.requests import Request

from app.api import auth
from app.errors import Unauthorized
from app.settings import Settings
from tests.conftest import LiveServer, free_port, start_server, stop_server
from tests.faults import wait_until
from tests.test_api import upload, vector_bytes
from tests.tiny_models import ARCH_CONFIGS

ODD_NAMES = ["../escape", "..", "a/../../b", "%2e%2e%2fescape", "UPPER", "with space", "x" * 65, "tab\tname",
             "nul\x00name", "é", ".hidden", "-dash"]
LLAMA: dict[str, Any] = ARCH_CONFIGS["llama"]


def files(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def admin(server: LiveServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_token}"}


def name_requests(server: LiveServer, name: str) -> list[httpx.Response]:
    pairs = [{"input": f"a{i}", "output": f"b{i}"} for i in range(12)]
    url, headers = server.url, admin(server)
    segment = quote(name, safe="")  # in a path, percent-encoded as a client would send it
    with httpx.Client(base_url=url, timeout=30) as client:
        return [
            client.get(f"/vectors/{segment}"),
            client.get(f"/vectors/{segment}/decode"),
            client.post(f"/vectors/{segment}/evaluate", json={"pairs": pairs}),
            client.delete(f"/admin/vectors/{segment}", headers=headers),
            client.get(f"/jobs/{segment}"),
            client.delete(f"/jobs/{segment}"),
            client.post("/complete", json={"prompt": "Q: a\nA:", "relations": {name: 1.0}, "max_new_tokens": 2}),
            client.post("/vectors/extract", json={"name": name, "pairs": pairs}),
            client.post("/vectors/finetune", json={"name": name, "pairs": pairs}),
            client.post("/vectors/finetune", json={"name": "fine", "pairs": pairs, "init": "vector",
                                                   "init_vector": name}),
            upload(server, name, vector_bytes(int(LLAMA["hidden_size"]))),
        ]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_names_are_refused_everywhere(live_server: LiveServer, name: str) -> None:
    before = files(live_server.vectors_dir.parent)
    for response in name_requests(live_server, name):
        assert response.status_code in (404, 405, 422), (response.request.method, response.request.url, response.text)
        assert set(response.json()["error"]) == {"type", "message", "param", "code"}
    assert files(live_server.vectors_dir.parent) == before  # nothing written, nothing deleted, nothing escaped


def test_no_secret_reaches_the_log(tmp_path: Path, tiny_llama_dir: Path) -> None:
    token, password = "admin-secret-3b9f1c", "redis-secret-77aa02"
    server = start_server(tmp_path, str(tiny_llama_dir), admin_token=token, d_model=int(LLAMA["hidden_size"]),
                          n_layers=int(LLAMA["num_hidden_layers"]),
                          extra_env={"FVSTEER_REDIS_URL": f"redis://:{password}@127.0.0.1:{free_port()}/0",
                                     "FVSTEER_LOG_LEVEL": "DEBUG"})
    try:
        assert httpx.get(f"{server.url}/readyz", timeout=30).json()["status"] == "degraded"  # Redis is not there
        assert httpx.get(f"{server.url}/admin/vectors", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        wrong = httpx.get(f"{server.url}/admin/vectors", headers={"Authorization": f"Bearer {token}x"})
        assert wrong.status_code == 401 and token not in wrong.text
        pairs = [{"input": f"a{i}", "output": f"b{i}"} for i in range(12)]
        job = httpx.post(f"{server.url}/vectors/extract", timeout=30,
                         json={"name": "v", "pairs": pairs, "n_prompts": 4, "n_trials": 2, "n_heads": 2})
        assert job.status_code == 202
        log = server.log()
        assert "degraded" in log  # the Redis failure was logged…
        assert token not in log and password not in log  # …without the secrets
    finally:
        stop_server(server)


def test_defaults_bind_localhost_without_cors(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("FVSTEER_HOST", "FVSTEER_CORS_ORIGINS", "FVSTEER_ADMIN_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    settings = Settings()
    assert settings.host == "127.0.0.1" and settings.cors_origins == [] and settings.admin_token is None


def test_admin_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)

    class State:
        settings = Settings(admin_token="right-token")

    class App:
        state = State()

    scope = {"type": "http", "app": App(), "headers": [(b"authorization", b"Bearer wrong-token")]}
    with pytest.raises(Unauthorized):
        auth.require_admin(Request(scope))
    assert compared == [(b"wrong-token", b"right-token")]


def raw_request(server: LiveServer, head: str, body_start: bytes) -> bytes:
    """Send the head and only the start of a body, then read what the server answers (it must not wait for the
    rest: a server that reads the body first times out here)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body_start)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def test_admin_checks_the_token_before_reading_the_body(live_server: LiveServer) -> None:
    size = 15_900_000  # under the upload limit: only the token can refuse it
    head = (f"POST /admin/vectors HTTP/1.1\nHost: x\nContent-Type: multipart/form-data; boundary=b\n"
            f"Content-Length: {size}\n")
    assert raw_request(live_server, head, b"--b\r\n").startswith(b"HTTP/1.1 401")
    wrong = raw_request(live_server, head.replace("Host: x\n", "Host: x\nAuthorization: Bearer wrong\n"), b"--b")
    assert wrong.startswith(b"HTTP/1.1 401")
    malformed = httpx.put(f"{live_server.url}/admin/presets/x", content=b"{not json", timeout=30,
                          headers={"content-type": "application/json"})
    assert malformed.status_code == 401 and malformed.json()["error"]["param"] == "Authorization"
    assert httpx.put(f"{live_server.url}/admin/presets/x", content=b"{not json", timeout=30,
                     headers={"content-type": "application/json", **admin(live_server)}).status_code == 422


def test_a_client_that_leaves_mid_body_is_not_a_server_error(live_server: LiveServer) -> None:
    before = len(live_server.log())
    host, port = live_server.url.removeprefix("http://").split(":")
    for path, kind, start in (("/complete", "application/json", b'{"prompt": "x'),
                              ("/admin/vectors", "multipart/form-data; boundary=b", b"--b\r\nContent-Disposition")):
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\nContent-Length: 5000\r\n"
                f"Authorization: Bearer {live_server.admin_token}\r\n\r\n")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(head.encode() + start)
        time.sleep(0.5)
    assert httpx.get(f"{live_server.url}/healthz", timeout=30).status_code == 200
    wait_until(lambda: live_server.log()[before:].count(" 499 ") >= 2, "both requests in the access log")
    written = live_server.log()[before:]
    assert " 500 " not in written and "Traceback" not in written and "unhandled error" not in written, written
    assert "Task was destroyed but it is pending" not in written
