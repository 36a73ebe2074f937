"""The server image as the Kubernetes manifests run it: uid 10001, read-only root filesystem, only the registry and
cache volumes (and /tmp) writable, no capabilities. It answers /readyz, steers exactly as the same server on this
machine does, reports healthy to Docker, and drains in-flight rows on SIGTERM before exiting 0."""

from __future__ import annotations

import json
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import start_server, stop_server
from tests_docker.conftest import NOTES, PREFIX, ROOT, Image, container_url, docker, wait_ready

TOKEN = secrets.token_hex(16)
PROBE: dict[str, Any] = {"prompt": "Q: hot\nA:", "max_new_tokens": 8, "temperature": 0.0,
                         "relations": {"antonym": 1.0}, "return_baseline": True}
GRACE_S = 40  # docker-compose.yml's stop_grace_period; FVSTEER_SHUTDOWN_GRACE_S is 30
TOKENS = 24  # the drained row: 40 took 28.6 s on a loaded machine (the drain allows 30)


@pytest.fixture(scope="module")
def container(image: Image) -> Iterator[str]:
    name = f"{PREFIX}-api"
    started = time.monotonic()
    docker("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges:true", "-p", "127.0.0.1::8000",
           "-v", f"{PREFIX}-vectors:/srv/fvsteer/vectors", "-v", f"{PREFIX}-cache:/var/cache/fvsteer",
           "-e", f"FVSTEER_ADMIN_TOKEN={TOKEN}", image.tag)
    try:
        wait_ready(container_url(name))
    except AssertionError:
        raise AssertionError(docker("logs", name, check=False).stderr[-4000:]) from None
    NOTES.append(f"container ready in {time.monotonic() - started:.0f} s (read-only root, fresh volumes)")
    yield name
    docker("rm", "-f", "-v", name, check=False)


def test_it_runs_as_10001_with_a_read_only_root_and_writable_volumes(container: str) -> None:
    assert docker("exec", container, "id", "-u").stdout.strip() == "10001"
    for writable in ("/srv/fvsteer/vectors", "/var/cache/fvsteer", "/tmp"):
        docker("exec", container, "sh", "-c", f"touch {writable}/.probe && rm {writable}/.probe")
    home = docker("exec", container, "sh", "-c", "touch /srv/fvsteer/.probe", check=False)  # its own folder
    assert home.returncode != 0 and "Read-only file system" in home.stderr
    for elsewhere in ("/usr/local/lib", "/etc"):
        assert docker("exec", container, "sh", "-c", f"touch {elsewhere}/.probe", check=False).returncode != 0


def test_a_steered_completion_equals_the_host_servers(container: str, tmp_path: Path) -> None:
    url = container_url(container)
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    in_image = httpx.post(f"{url}/complete", json=PROBE, timeout=120).json()
    shutil.copytree(ROOT / "vectors", tmp_path / "vectors")
    server = start_server(tmp_path, "embedded:smollm2-135m-instruct", admin_token=None, d_model=576, n_layers=30)
    try:
        on_host = httpx.post(f"{server.url}/complete", json=PROBE, timeout=120).json()
    finally:
        stop_server(server)
    assert in_image["steering"] is not None and in_image["steering"]["relations"] == {"antonym": 1.0}
    assert in_image["text"] == on_host["text"]
    assert in_image["baseline"]["text"] == on_host["baseline"]["text"]
    assert in_image["text"] != in_image["baseline"]["text"]
    NOTES.append(f"steered 'Q: hot\\nA:' in the image {in_image['text']!r} (host {on_host['text']!r}), "
                 f"unsteered {in_image['baseline']['text']!r}")


def test_the_healthcheck_turns_healthy(container: str) -> None:
    deadline = time.monotonic() + 90  # HEALTHCHECK --interval=10s: the first check runs ten seconds after start
    status = ""
    while time.monotonic() < deadline:
        status = docker("inspect", "-f", "{{.State.Health.Status}}", container).stdout.strip()
        if status == "healthy":
            return
        time.sleep(1)
    raise AssertionError(f"health status {status!r} after 90 s")


def test_sigterm_drains_in_flight_rows_and_exits_0(container: str) -> None:
    """Runs last: it stops the container. A streamed completion is under way when SIGTERM arrives; it ends whole
    (every token it asked for), the server says it drained one row, and the process exits 0 inside the grace
    period."""
    url = container_url(container)
    first_piece = threading.Event()
    outcome: dict[str, Any] = {}

    def stream() -> None:
        body = {**PROBE, "max_new_tokens": TOKENS, "stream": True, "return_baseline": False}
        with httpx.stream("POST", f"{url}/complete", json=body, timeout=120) as response:
            outcome["status"] = response.status_code
            event = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                    first_piece.set()
                elif line.startswith("data: ") and event in ("done", "error"):
                    outcome[event] = json.loads(line.removeprefix("data: "))

    reader = threading.Thread(target=stream)
    reader.start()
    assert first_piece.wait(120), "no token streamed"
    started = time.monotonic()
    docker("stop", "-t", str(GRACE_S), container, timeout=GRACE_S + 60)
    stopped_s = time.monotonic() - started
    reader.join(60)
    assert outcome.get("status") == 200 and "error" not in outcome
    done = outcome["done"]
    # Whole: every token asked for, or the model's own end; never cut short ("cancelled").
    assert (done["finish_reason"], done["usage"]["completion_tokens"]) == ("length", TOKENS) or \
        done["finish_reason"] == "stop"
    assert docker("inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip() == "0"
    logs = docker("logs", container).stderr + docker("logs", container).stdout
    assert "draining: 1 requests in flight" in logs  # SIGTERM came while the row ran: not a vacuous drain
    assert stopped_s < GRACE_S
    NOTES.append(f"SIGTERM with a row in flight: it finished ({done['usage']['completion_tokens']} tokens, "
                 f"{done['finish_reason']}), exit 0 after {stopped_s:.1f} s")
