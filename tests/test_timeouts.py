"""Server timeouts: a request head not whole within FVSTEER_HEADER_TIMEOUT_S closes the connection, a body not whole
within FVSTEER_BODY_TIMEOUT_S gets 408, and a client still trickling its body in does not hold up a SIGTERM drain
(each used to stay open as long as the client kept sending a byte now and then)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, start_server, stop_server
from tests.tiny_models import ARCH_CONFIGS

LLAMA = ARCH_CONFIGS["llama"]


@pytest.fixture
def strict(tmp_path: Path, tiny_llama_dir: Path) -> Iterator[LiveServer]:
    server = start_server(tmp_path, str(tiny_llama_dir), admin_token=None, d_model=int(LLAMA["hidden_size"]),
                          n_layers=int(LLAMA["num_hidden_layers"]),
                          extra_env={"FVSTEER_HEADER_TIMEOUT_S": "1", "FVSTEER_BODY_TIMEOUT_S": "2",
                                     "FVSTEER_SHUTDOWN_GRACE_S": "600"})
    yield server
    stop_server(server)


def connect(server: LiveServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=60)


def trickle(sock: socket.socket, data: bytes, every_s: float, stop: threading.Event,
            sent: list[int] | None = None) -> bytes:
    """Send ``data`` a byte at a time until the server answers or closes; what it answered (``sent`` counts)."""
    sock.setblocking(False)
    answer = b""
    for byte in data:
        if stop.is_set():
            break
        try:
            sock.send(bytes([byte]))
        except OSError:
            break
        if sent is not None:
            sent.append(byte)
        time.sleep(every_s)
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            break
        if not chunk:
            break
        answer += chunk
    return answer


def test_a_head_sent_a_byte_at_a_time_is_cut_off(strict: LiveServer) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 400 + b"\r\n\r\n"
    with connect(strict) as sock:
        answered = trickle(sock, head, 0.05, threading.Event())  # 20 s to send it whole; the limit is 1 s
    assert answered == b""  # closed, nothing answered
    assert httpx.get(f"{strict.url}/healthz", timeout=30).status_code == 200  # others are served meanwhile


def test_a_body_sent_a_byte_at_a_time_gets_408(strict: LiveServer) -> None:
    body = b'{"prompt": "' + b"a" * 400 + b'"}'
    head = (f"POST /complete HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with connect(strict) as sock:
        sock.sendall(head)
        answered = trickle(sock, body, 0.05, threading.Event())
    assert answered.startswith(b"HTTP/1.1 408"), answered[:200]
    assert b'"param":"body"' in answered and b"FVSTEER_BODY_TIMEOUT_S" in answered


def test_a_trickling_body_does_not_hold_up_the_drain(tmp_path: Path, tiny_llama_dir: Path) -> None:
    server = start_server(tmp_path, str(tiny_llama_dir), admin_token=None, d_model=int(LLAMA["hidden_size"]),
                          n_layers=int(LLAMA["num_hidden_layers"]),
                          extra_env={"FVSTEER_BODY_TIMEOUT_S": "600", "FVSTEER_SHUTDOWN_GRACE_S": "600"})
    stop = threading.Event()
    try:
        body = b'{"prompt": "' + b"a" * 5000 + b'"}'
        sock = connect(server)
        sock.sendall((f"POST /complete HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode())
        sent: list[int] = []
        sender = threading.Thread(target=trickle, args=(sock, body, 0.1, stop, sent), daemon=True)  # ~500 s
        sender.start()
        time.sleep(1)  # the request is under way, its body far from whole
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=120) == 0
        assert len(sent) < len(body)  # the server was gone before the client had sent its body
    finally:
        stop.set()
        stop_server(server)
