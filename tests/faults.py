"""Driving :mod:`tests.fault_server` from a test: close a gate, wait until the engine is parked there, open it.

Every wait polls with a deadline; nothing waits for a fixed time to let something else happen first.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from tests.conftest import LiveServer

Gate = Literal["steps", "tasks"]
WAIT_S = 60.0


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Poll ``condition`` until it is truthy (returned) or fail after ``timeout`` seconds saying ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Faults:
    def __init__(self, server: LiveServer) -> None:
        self.server = server

    def state(self) -> dict[str, dict[str, Any]]:
        response = httpx.get(f"{self.server.url}/_faults", timeout=30)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def close(self, gate: Gate, after: int = 0) -> None:
        httpx.post(f"{self.server.url}/_faults/{gate}/close", params={"after": after}, timeout=30).raise_for_status()

    def open(self, gate: Gate) -> None:
        httpx.post(f"{self.server.url}/_faults/{gate}/open", timeout=30).raise_for_status()

    def fatal(self) -> None:
        httpx.post(f"{self.server.url}/_faults/fatal", timeout=30).raise_for_status()

    def wait_parked(self, gate: Gate) -> dict[str, Any]:
        """Wait until the engine thread waits at ``gate``; returns that gate's state."""
        return wait_until(lambda: (s := self.state()[gate])["parked"] and s, f"the engine to park at {gate}")

    @contextmanager
    def held(self, gate: Gate, after: int = 0) -> Iterator[None]:
        """``gate`` closed within the block, open after it whatever happens (a module's server is shared)."""
        self.close(gate, after)
        try:
            yield
        finally:
            self.open(gate)


def metric(server: LiveServer, name: str, labels: str = "") -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert found, f"{name}{labels} not in /metrics"
    return float(found[1])


def wait_for_log(server: LiveServer, predicate: Callable[[str], bool], what: str) -> None:
    wait_until(lambda: any(predicate(line) for line in server.log().splitlines()), what)


def open_request(server: LiveServer, method: str, path: str, body: bytes = b"") -> socket.socket:
    """Send a request on a raw socket and return it unread: closing it is a client that goes away, at the moment
    the test chooses."""
    url = urlsplit(server.url)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=30)
    head = (f"{method} {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    sock.sendall(head.encode() + body)
    return sock
