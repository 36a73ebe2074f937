"""The vLLM backend against real processes: one vLLM server (eager, float32, fvsteer's plugin) for the session,
fvsteer servers in front of it (the vllm backend) and beside it (the hf backend, for parity), all on the embedded
SmolLM2-135M-Instruct and one registry folder copied from the starter bank.

Run with ``make test-vllm`` (it builds vLLM's environment first). These tests are not part of ``make test``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fvsteer_vllm.bank import vector_key
from fvsteer_vllm.spec import Entry, SteeringSpec

from app.engine.vllm_server import ManagedVllm, VllmLaunch
from app.model.loading import EMBEDDED_NAME, model_location, model_slug, resolve_source
from app.registry.vector_file import read_vector_file
from app.settings import DEFAULT_MODEL, Settings
from tests.conftest import LiveServer, start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
SLUG = model_slug(EMBEDDED_NAME)
VLLM_PYTHON = Path(os.environ.get("FVSTEER_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
D_MODEL, N_LAYERS = 576, 30
MAX_SEQS = 32


@dataclass
class Vllm:
    """The shared vLLM server and what a test needs to talk to it directly."""

    server: ManagedVllm
    registry: Path  # FVSTEER_VECTORS_DIR of every front; the bank is registry / SLUG

    @property
    def url(self) -> str:
        return self.server.url

    def spec(self, relations: dict[str, float], *, scale: float = 1.0, layer: int | None = None,
             positions: str = "fv") -> SteeringSpec:
        """The steering the vllm backend sends for these relations (built independently here)."""
        entries = []
        for name, weight in relations.items():
            stored = read_vector_file(self.registry / SLUG / f"{name}.safetensors")
            entries.append(Entry(vector_key(name, stored.vector), scale * weight,
                                 stored.layer if layer is None else layer))
        return SteeringSpec(tuple(entries), positions)  # type: ignore[arg-type]

    def complete(self, prompt_ids: list[int], spec: SteeringSpec | None = None, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": EMBEDDED_NAME, "prompt": prompt_ids, "max_tokens": 16, "temperature": 0.0,
                                **extra}
        if spec is not None:
            body["vllm_xargs"] = {"fvsteer": spec.dumps()}
        response = httpx.post(f"{self.url}/v1/completions", json=body, timeout=300)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))


def embedded_location() -> str:
    return model_location(resolve_source(DEFAULT_MODEL), Settings().cache_dir)


def start_vllm(workdir: Path, registry: Path, *, eager: bool = True, timeout: float = 900.0) -> ManagedVllm:
    launch = VllmLaunch(
        python=VLLM_PYTHON, model=embedded_location(), served_name=EMBEDDED_NAME, bank_dir=registry / SLUG,
        bank_capacity=128, max_num_seqs=MAX_SEQS, max_model_len=2560, dtype=torch.float32,
        device=torch.device("cpu"), log_path=workdir / "vllm.log", eager=eager,
    )
    return launch_healthy(launch, timeout)


def launch_healthy(launch: VllmLaunch, timeout: float = 900.0) -> ManagedVllm:
    """Start vLLM under fvsteer's supervisor and wait until it answers its health check."""
    server = ManagedVllm(launch)
    server.start()
    deadline = time.monotonic() + timeout
    while True:
        assert server.alive(), f"vLLM exited:\n{launch.log_path.read_text()[-4000:]}"
        try:
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"vLLM not healthy after {timeout} s"
        time.sleep(1)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry root of the session's own: the starter bank, which tests may add to and delete from."""
    root = tmp_path_factory.mktemp("registry")
    shutil.copytree(ROOT / "vectors" / SLUG, root / SLUG)
    return root


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory, registry: Path) -> Iterator[Vllm]:
    server = start_vllm(tmp_path_factory.mktemp("vllm"), registry)
    yield Vllm(server, registry)
    server.stop()


def front(tmp: Path, registry: Path, **env: str) -> LiveServer:
    return start_server(tmp, DEFAULT_MODEL, admin_token=secrets.token_hex(8), d_model=D_MODEL, n_layers=N_LAYERS,
                        extra_env={"FVSTEER_VECTORS_DIR": str(registry), **env}, timeout=900)


@pytest.fixture(scope="session")
def vllm_front(tmp_path_factory: pytest.TempPathFactory, vllm: Vllm) -> Iterator[LiveServer]:
    """fvsteer on the vllm backend, in front of the shared vLLM server."""
    server = front(tmp_path_factory.mktemp("vllm-front"), vllm.registry, FVSTEER_BACKEND="vllm",
                   FVSTEER_VLLM_URL=vllm.url, FVSTEER_MAX_BATCH=str(MAX_SEQS))
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def hf_front(tmp_path_factory: pytest.TempPathFactory, registry: Path) -> Iterator[LiveServer]:
    """fvsteer on the hf backend, on the same registry: the reference of parity."""
    server = front(tmp_path_factory.mktemp("hf-front"), registry, FVSTEER_MAX_BATCH=str(MAX_SEQS))
    yield server
    stop_server(server)


def complete(server: LiveServer, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/complete", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


