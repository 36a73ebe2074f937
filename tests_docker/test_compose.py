"""docker-compose.yml as a user runs it (Debian's docker-compose 1.29 reads the same file as `docker compose`): the
API and Redis come up healthy, a vector uploaded to the registry volume is still served after the stack is taken
down and up again. The file is used as it is, except the image names (this session's build and Redis image) and the
published port (a free one)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from safetensors import safe_open
from safetensors.torch import save

from tests_docker.conftest import PREFIX, ROOT, BuildInputs, Image, wait_ready
from tests_docker.test_image import PROBE, TOKEN


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def antonym_upload() -> tuple[bytes, int]:
    folder = ROOT / "vectors" / "smollm2-135m-instruct"
    with safe_open(folder / "antonym.safetensors", "pt") as stored:
        return save({"vector": stored.get_tensor("vector").contiguous()}), int(stored.metadata()["layer"])


def test_the_stack_keeps_an_uploaded_vector_across_down_and_up(image: Image, build_inputs: BuildInputs,
                                                                tmp_path: Path) -> None:
    if shutil.which("docker-compose") is None:
        pytest.fail("needs docker-compose (apt-get install docker-compose; .ci/run installs it)")
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    port = free_port()
    api = compose["services"]["api"]
    api.pop("build")
    api["image"] = image.tag
    api["ports"] = [f"127.0.0.1:{port}:8000"]
    compose["services"]["redis"]["image"] = build_inputs.redis_image
    file = tmp_path / "docker-compose.yml"
    file.write_text(yaml.safe_dump(compose))
    env = {**os.environ, "FVSTEER_ADMIN_TOKEN": TOKEN}
    url = f"http://127.0.0.1:{port}"

    def compose_run(*args: str) -> None:
        done = subprocess.run(["docker-compose", "-p", PREFIX, "-f", str(file), *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    try:
        compose_run("up", "-d", "--no-build")
        wait_ready(url)
        data, layer = antonym_upload()
        uploaded = httpx.post(f"{url}/admin/vectors", headers={"Authorization": f"Bearer {TOKEN}"},
                              files={"file": ("carried.safetensors", data)},
                              data={"name": "carried", "layer": str(layer)}, timeout=60)
        assert uploaded.status_code == 201, uploaded.text
        expected = httpx.post(f"{url}/complete", json=PROBE, timeout=120).json()["text"]
        carried = {**PROBE, "relations": {"carried": 1.0}}
        assert httpx.post(f"{url}/complete", json=carried, timeout=120).json()["text"] == expected

        compose_run("down")  # containers and network go; the named volumes stay
        compose_run("up", "-d", "--no-build")
        wait_ready(url)
        names = [vector["name"] for vector in httpx.get(f"{url}/vectors", timeout=30).json()["vectors"]]
        assert "carried" in names
        again = httpx.post(f"{url}/complete", json=carried, timeout=120).json()
        assert again["text"] == expected and again["steering"]["relations"] == {"carried": 1.0}
        health = httpx.get(f"{url}/readyz", timeout=10).json()
        assert (health["cache"], health["registry"]) == ("redis", "redis")  # the compose Redis, reached
    finally:
        subprocess.run(["docker-compose", "-p", PREFIX, "-f", str(file), "down", "-v"], env=env, cwd=tmp_path,
                       capture_output=True, timeout=300)
