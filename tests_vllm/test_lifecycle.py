"""The vllm backend's lifecycle with a vLLM server fvsteer starts itself (``make serve-vllm``'s shape):
``/readyz`` is 503 until vLLM answers, SIGTERM drains (in-flight rows finish at vLLM, new work 503, exit 0, vLLM
stopped with it), and vLLM dying is fatal: requests get 503 and the server exits 1 for its supervisor."""

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
            if b"vllm.entrypoints.openai.api_server" in b" ".join(command) and str(port).encode() in command:
                pids.append(int(entry.name))
    return pids


def test_ready_only_once_vllm_answers_then_sigterm_drains(tmp_path: Path, vllm: Vllm) -> None:
    server = spawn(tmp_path, vllm.registry, FVSTEER_SHUTDOWN_GRACE_S="600", FVSTEER_MAX_BATCH="4")
    try:
        port = vllm_port(server)
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
    finally:
        stop_server(server)
        for pid in vllm_pids(vllm_port(server)):
            os.kill(pid, signal.SIGKILL)


def test_vllm_dying_fails_requests_and_exits_1(tmp_path: Path, vllm: Vllm) -> None:
    server = spawn(tmp_path, vllm.registry)
    try:
        port = vllm_port(server)
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
    finally:
        stop_server(server)
