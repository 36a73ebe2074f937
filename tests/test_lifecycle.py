"""The server's lifecycle as a real process: SIGTERM drains (``/readyz`` 503, new work refused, in-flight requests
finish, exit 0), and a fatal engine error turns readiness off and exits non-zero so a supervisor restarts it.
The engine is held at a gate (tests.fault_server) while the signal arrives, so the requests are in flight by
construction."""

from __future__ import annotations

import contextlib
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, start_server, stop_server
from tests.faults import Faults, metric, wait_for_log, wait_until
from tests.test_backpressure import LONG_PROMPT
from tests.tiny_models import ARCH_CONFIGS

LLAMA: dict[str, Any] = ARCH_CONFIGS["llama"]


def gated_server(tmp: Path, model_dir: Path, **env: str) -> LiveServer:
    return start_server(tmp, str(model_dir), admin_token=None, d_model=int(LLAMA["hidden_size"]),
                        n_layers=int(LLAMA["num_hidden_layers"]), module="tests.fault_server",
                        extra_env={"FVSTEER_MAX_NEW_TOKENS": "64", **env})


def complete(server: LiveServer, tokens: int) -> httpx.Response:
    return httpx.post(f"{server.url}/complete", json={"prompt": LONG_PROMPT, "max_new_tokens": tokens}, timeout=60)


def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path: Path, tiny_llama_dir: Path) -> None:
    server = gated_server(tmp_path, tiny_llama_dir, FVSTEER_SHUTDOWN_GRACE_S="120")
    faults = Faults(server)
    try:
        tokens = 30
        with ThreadPoolExecutor(3) as pool:
            with faults.held("steps"):
                in_flight = [pool.submit(complete, server, tokens)]
                faults.wait_parked("steps")
                in_flight += [pool.submit(complete, server, tokens) for _ in range(2)]
                wait_until(lambda: metric(server, "fvsteer_queue_depth") == 2, "two more requests queued")
                server.process.send_signal(signal.SIGTERM)
                wait_until(lambda: httpx.get(f"{server.url}/readyz", timeout=30).status_code == 503, "readiness off")
                ready = httpx.get(f"{server.url}/readyz", timeout=30)
                refused = complete(server, 2)
            answers = [future.result() for future in in_flight]
        assert ready.status_code == 503 and "shutting down" in ready.json()["error"]["message"]
        assert refused.status_code == 503 and refused.headers["retry-after"]
        for answer in answers:  # every request admitted before the signal got its whole answer
            assert answer.status_code == 200, answer.text
            assert answer.json()["finish_reason"] == "length"
            assert answer.json()["usage"]["completion_tokens"] == tokens
        assert server.process.wait(timeout=60) == 0
        assert "drained in" in server.log()
    finally:
        stop_server(server)


def test_a_fatal_engine_error_fails_readiness_and_exits_non_zero(tmp_path: Path, tiny_llama_dir: Path) -> None:
    server = gated_server(tmp_path, tiny_llama_dir)
    try:
        assert complete(server, 3).status_code == 200
        Faults(server).fatal()
        failed = complete(server, 3)
        assert failed.status_code == 503, failed.text
        assert failed.json()["error"]["type"] == "not_ready" and "CUDA error" in failed.json()["error"]["message"]
        with contextlib.suppress(httpx.TransportError):  # readiness is off until the process is gone
            assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 503
        assert server.process.wait(timeout=60) == 1
        assert "engine stopped after a fatal error" in server.log()
    finally:
        stop_server(server)


def test_the_grace_period_bounds_the_drain(tmp_path: Path, tiny_llama_dir: Path) -> None:
    server = gated_server(tmp_path, tiny_llama_dir, FVSTEER_SHUTDOWN_GRACE_S="0")
    faults = Faults(server)
    try:
        with ThreadPoolExecutor(1) as pool:
            faults.close("steps")
            long = pool.submit(complete, server, 64)
            faults.wait_parked("steps")
            server.process.send_signal(signal.SIGTERM)
            wait_for_log(server, lambda line: "grace period of 0 s over with 1 requests in flight" in line,
                         "the grace period to end")
            # The cut-short answer goes out and the server stops without the engine moving again (its thread's join
            # times out), so by now the socket may be closed: opening the gate only lets the engine end sooner.
            with contextlib.suppress(httpx.TransportError):
                faults.open("steps")
            answer = long.result()
        assert server.process.wait(timeout=60) == 0
        assert answer.status_code == 200, answer.text  # answered, with what it had
        assert answer.json()["finish_reason"] == "cancelled" and 0 < answer.json()["usage"]["completion_tokens"] < 64
    finally:
        stop_server(server)


def test_a_model_that_fails_to_load_exits_1(tmp_path: Path) -> None:
    """It used to stay up, unready for ever, where a supervisor would restart it."""
    with pytest.raises(RuntimeError, match="server exited with 1") as failed:
        start_server(tmp_path, str(tmp_path / "no-such-model"), admin_token=None, d_model=1, n_layers=1,
                     timeout=120)
    assert "failed to load" in str(failed.value)
