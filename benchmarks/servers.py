"""Starting an fvsteer server for a benchmark: a process of its own on a free port, ready when it returns."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def start_server(workdir: Path, env: dict[str, str], timeout: float = 1200.0) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m app.server`` with ``FVSTEER_*`` settings ``env`` (plus a port and a jobs dir of its own)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    environ = {**os.environ, "FVSTEER_PORT": str(port), "FVSTEER_JOBS_DIR": str(workdir / "jobs"),
               "FVSTEER_LOG_LEVEL": "WARNING", **env}
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "app.server"], cwd=ROOT, env=environ, stdout=log,
                                   stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"server did not become ready within {timeout:g} s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
