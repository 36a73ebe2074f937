"""Shared fixtures: real uvicorn servers (tiny random model, or the embedded model) on free ports."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import torch

from tests.tiny_models import ARCH_CONFIGS, save_tiny_model

ROOT = Path(__file__).resolve().parent.parent

# Servers under test run as subprocesses with their own threads; one intra-op thread here keeps the
# tiny in-process models fast on 2 cores instead of contending with them.
torch.set_num_threads(1)


@dataclass(frozen=True)
class LiveServer:
    """A running server: where it listens, its admin token, and the shape of its model."""

    url: str
    admin_token: str
    d_model: int
    n_layers: int
    vectors_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    workdir: Path, model: str, *, admin_token: str | None, d_model: int, n_layers: int,
    extra_env: dict[str, str] | None = None, timeout: float = 240.0, module: str = "app.server",
) -> LiveServer:
    """Start ``python -m <module>`` (the server, or ``tests.fault_server``) and wait until ``/readyz`` answers 200."""
    port = free_port()
    vectors_dir = workdir / "vectors"
    vectors_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "FVSTEER_MODEL": model,
        "FVSTEER_PORT": str(port),
        "FVSTEER_HOST": "127.0.0.1",
        "FVSTEER_VECTORS_DIR": str(vectors_dir),
        **(extra_env or {}),
    }
    env.pop("FVSTEER_ADMIN_TOKEN", None)
    if admin_token is not None:
        env["FVSTEER_ADMIN_TOKEN"] = admin_token
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env, stdout=log, stderr=log)
    server = LiveServer(f"http://127.0.0.1:{port}", admin_token or "", d_model, n_layers, vectors_dir, process,
                        log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"server not ready after {timeout} s:\n{server.log()}")


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """A private redis-server (no persistence) that a test may kill and restart."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if client.ping():
                client.close()
                return process
        except redis.RedisError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


# The Redis the tests use: db 15, apart from a developer's own data; `.ci/run` starts the server.
TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="session")
def raw_redis() -> Iterator[redis.Redis]:
    """A client of the tests' Redis (the cache tests read and write its keys directly)."""
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {TEST_REDIS_URL}: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama") / "tiny-llama")


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[LiveServer]:
    """A real server on a tiny random llama, with an admin token."""
    config = ARCH_CONFIGS["llama"]
    server = start_server(
        tmp_path_factory.mktemp("live"), str(tiny_llama_dir), admin_token=secrets.token_hex(16),
        d_model=int(config["hidden_size"]), n_layers=int(config["num_hidden_layers"]),
        extra_env={"FVSTEER_MAX_NEW_TOKENS": "64", "FVSTEER_MAX_PROMPT_TOKENS": "512"},
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def gated_server(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[LiveServer]:
    """The server of :mod:`tests.fault_server` on the tiny llama: a test holds its engine at a gate (tests.faults)
    to fix the order of events, e.g. to cancel a job that is certainly still running."""
    config = ARCH_CONFIGS["llama"]
    server = start_server(
        tmp_path_factory.mktemp("gated"), str(tiny_llama_dir), admin_token=secrets.token_hex(16),
        d_model=int(config["hidden_size"]), n_layers=int(config["num_hidden_layers"]), module="tests.fault_server",
        extra_env={"FVSTEER_MAX_NEW_TOKENS": "64", "FVSTEER_MAX_PROMPT_TOKENS": "512"},
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server on the embedded SmolLM2-135M-Instruct (the dequantized copy is cached across runs)."""
    server = start_server(
        tmp_path_factory.mktemp("embedded"), "embedded:smollm2-135m-instruct", admin_token=secrets.token_hex(16),
        d_model=576, n_layers=30,
    )
    yield server
    stop_server(server)


@pytest.fixture
def hung_redis() -> Iterator[int]:
    """The port of a TCP server that accepts connections and never answers: a hung Redis."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield int(listener.getsockname()[1])
    listener.close()
    for connection in accepted:
        connection.close()
