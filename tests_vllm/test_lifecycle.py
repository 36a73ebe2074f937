"""The vllm backend's lifecycle with a vLLM server fvsteer starts itself (``make serve-vllm``'s shape):
``/readyz`` is 503 until vLLM answers, SIGTERM drains (in-flight rows finish at vLLM, new work 503, exit 0, vLLM
stopped with it), and vLLM dying is fatal: requests get 503 and the server exits 1 for its supervisor. However it
ends (drained, vLLM's API server killed, fvsteer itself SIGKILLed), no process of vLLM's tree is left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import ROOT, LiveServer, free_port, stop_server
from tests.faults import metric, wait_until
from tests_vllm.conftest import VLLM_PYTHON, Vllm
from tests_vllm.test_serving import COUNTING, LONG


def spawn(tmp: Path, registry: Path, **env: str) -> LiveServer:
    """A front that starts its own vLLM; returns at once (the test watches it become ready)."""
    port = free_port()
    log_path = tmp / "server.log"
    environ = {**os.environ, "FVSTEER_PORT": str(port), "FVSTEER_VECTORS_DIR": str(registry),
               "FVSTEER_BACKEND": "vllm", "FVSTEER_VLLM_PYTHON": str(VLLM_PYTHON), "FVSTEER_VLLM_EAGER": "1",
               "FVSTEER_JOBS_DIR": str(tmp / "jobs"), **env}
    environ.pop("FVSTEER_VLLM_URL", None)
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "app.server"], cwd=ROOT, env=environ, stdout=log,
                                   stderr=log)
    return LiveServer(f"http://127.0.0.1:{port}", "", 576, 30, registry, process, log_path)


def readiness(server: LiveServer) -> tuple[int, str]:
    try:
        response = httpx.get(f"{server.url}/readyz", timeout=10)
    except httpx.TransportError:
        return 0, "not listening"
    return response.status_code, response.text


def vllm_port(server: LiveServer) -> int:
    found = wait_until(lambda: re.search(r"starting vLLM on port (\d+)", server.log()), "vLLM to be started")
    return int(found[1])


def vllm_pids(port: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # vLLM's API server itself, not its supervisor (whose arguments hold the same command)
            if command[1:3] == [b"-m", b"vllm.entrypoints.openai.api_server"] and str(port).encode() in command:
                pids.append(int(entry.name))
    return pids


def vllm_group(server: LiveServer) -> int:
    """The process group of the vLLM tree this front started: its supervisor's pid (app/engine/supervisor.py)."""
    def supervisor() -> int | None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    command = (entry / "cmdline").read_bytes()
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == server.process.pid and b"app.engine.supervisor" in command:
                    return int(entry.name)
        return None
    return int(wait_until(supervisor, "the vLLM supervisor to start"))


def group_members(group: int) -> list[str]:
    """Live processes of ``group`` (pid and command), zombies left out."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError):
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(f"{entry.name} {command[:120]}")
    return members


def assert_tree_ends(group: int) -> None:
    try:
        wait_until(lambda: not group_members(group), "vLLM's process tree to end", timeout=120)
    except AssertionError:
        left = group_members(group)
        for line in left:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        raise AssertionError(f"vLLM processes outlived fvsteer: {left}") from None


def test_ready_only_once_vllm_answers_then_sigterm_drains(tmp_path: Path, vllm: Vllm) -> None:
    server = spawn(tmp_path, vllm.registry, FVSTEER_SHUTDOWN_GRACE_S="600", FVSTEER_MAX_BATCH="4")
    try:
        port = vllm_port(server)
        group = vllm_group(server)
        seen = []
        while (status := readiness(server))[0] != 200:
            assert server.process.poll() is None, server.log()[-3000:]
            seen.append(status)
            time.sleep(0.5)
        assert any(code == 503 and "loading" in text for code, text in seen), seen  # while vLLM started
        with ThreadPoolExecutor(2) as pool:
            running = [pool.submit(httpx.post, f"{server.url}/complete", json={
                "prompt": COUNTING, "max_new_tokens": LONG, "relations": {"next-item": 0.3}}, timeout=600)
                for _ in range(2)]
            wait_until(lambda: metric(server, "fvsteer_active_rows") == 2, "two rows at vLLM")
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: readiness(server)[0] == 503, "readiness off")
            refused = httpx.post(f"{server.url}/complete", json={"prompt": "Q: hot\nA:"}, timeout=60)
            answers = [future.result() for future in running]
        assert refused.status_code == 503 and refused.headers["retry-after"]
        for answer in answers:  # admitted before the signal: answered whole
            assert answer.status_code == 200 and answer.json()["finish_reason"] == "length", answer.text
        assert server.process.wait(timeout=120) == 0
        wait_until(lambda: not vllm_pids(port), "vLLM to stop with fvsteer")
        assert_tree_ends(group)
    finally:
        stop_server(server)
        for pid in vllm_pids(vllm_port(server)):
            os.kill(pid, signal.SIGKILL)


def test_vllm_dying_fails_requests_and_exits_1(tmp_path: Path, vllm: Vllm) -> None:
    server = spawn(tmp_path, vllm.registry)
    try:
        port = vllm_port(server)
        group = vllm_group(server)
        wait_until(lambda: readiness(server)[0] == 200, "the front to be ready", timeout=900)
        assert httpx.post(f"{server.url}/complete", json={"prompt": "Q: hot\nA:", "max_new_tokens": 2},
                          timeout=60).status_code == 200
        for pid in vllm_pids(port):
            os.kill(pid, signal.SIGKILL)
        failed = httpx.post(f"{server.url}/complete", json={"prompt": "Q: hot\nA:", "max_new_tokens": 2},
                            timeout=60)
        assert failed.status_code == 503 and failed.json()["error"]["type"] == "not_ready", failed.text
        assert server.process.wait(timeout=60) == 1
        assert "vLLM backend stopped after a fatal error" in server.log()
        assert_tree_ends(group)  # its engine core and worker too, which used to stay behind
    finally:
        stop_server(server)


def test_fvsteer_killed_takes_vllm_with_it(tmp_path: Path, vllm: Vllm) -> None:
    """SIGKILL reaches fvsteer mid-drain (``make serve-vllm`` stopped with SIGTERM, then SIGKILL): no cleanup of its
    runs, yet vLLM's whole tree ends (its supervisor watches its parent)."""
    server = spawn(tmp_path, vllm.registry)
    try:
        group = vllm_group(server)
        wait_until(lambda: readiness(server)[0] == 200, "the front to be ready", timeout=900)
        assert len(group_members(group)) >= 3  # supervisor, API server, engine core (and its workers)
        server.process.send_signal(signal.SIGTERM)
        server.process.kill()
        server.process.wait(timeout=60)
        assert_tree_ends(group)
    finally:
        stop_server(server)
