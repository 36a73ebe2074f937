"""Backpressure and deadlines on a real server whose engine the test holds at gates (tests.fault_server): a full
queue → 429 with Retry-After, a long queue wait → 504 (streamed requests too, before any event), the per-request
deadline → ``finish_reason: "timeout"`` with the text so far, and a client that goes away frees its row and stops
its evaluation's forwards. Every ordering is set by a gate, never by how fast something runs."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.admission import Admission
from app.errors import QueueFull
from tests.conftest import LiveServer, start_server, stop_server
from tests.faults import Faults, metric, open_request, wait_until
from tests.test_api import upload, vector_bytes
from tests.tiny_models import ARCH_CONFIGS

QUEUE = 3
LIMIT_S = 3.0  # queue-wait limit and request deadline of the `deadlines` server
LLAMA: dict[str, Any] = ARCH_CONFIGS["llama"]
LONG_PROMPT = "Q: cold\nA:"  # the tiny model (seed 0) writes 80 tokens on this without an end-of-sequence


def fault_server(tmp: Path, model_dir: Path, **env: str) -> LiveServer:
    return start_server(tmp, str(model_dir), admin_token=secrets.token_hex(8), d_model=int(LLAMA["hidden_size"]),
                        n_layers=int(LLAMA["num_hidden_layers"]), module="tests.fault_server",
                        extra_env={"FVSTEER_MAX_BATCH": "1", "FVSTEER_MAX_QUEUE": str(QUEUE),
                                   "FVSTEER_MAX_NEW_TOKENS": "64", **env})


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[LiveServer]:
    """One row at a time, a queue of 3, limits far away: only the gates decide what happens when."""
    server = fault_server(tmp_path_factory.mktemp("gated"), tiny_llama_dir, FVSTEER_QUEUE_TIMEOUT_S="600",
                          FVSTEER_REQUEST_TIMEOUT_S="600", FVSTEER_CORS_ORIGINS='["https://lab.example"]')
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def deadlines(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[LiveServer]:
    """Short queue-wait limit and request deadline: a test holds the engine until they have passed."""
    server = fault_server(tmp_path_factory.mktemp("deadlines"), tiny_llama_dir,
                          FVSTEER_QUEUE_TIMEOUT_S=str(LIMIT_S), FVSTEER_REQUEST_TIMEOUT_S=str(LIMIT_S))
    yield server
    stop_server(server)


def complete(server: LiveServer, tokens: int, **extra: Any) -> httpx.Response:
    body = {"prompt": LONG_PROMPT, "max_new_tokens": tokens, **extra}
    return httpx.post(f"{server.url}/complete", json=body, timeout=120)


def streamed(server: LiveServer, tokens: int) -> tuple[int, str, str]:
    body = {"prompt": LONG_PROMPT, "max_new_tokens": tokens, "stream": True}
    with httpx.stream("POST", f"{server.url}/complete", json=body, timeout=120) as response:
        return response.status_code, response.headers["content-type"], response.read().decode()


def wait_past(seconds: float, what: str) -> None:
    """Wait for wall-clock time itself to pass a limit under test (the order of events is already fixed)."""
    start = time.monotonic()
    wait_until(lambda: time.monotonic() - start > seconds, what)


def test_full_queue_gets_429_with_retry_after(gated: LiveServer) -> None:
    faults = Faults(gated)
    rejected = metric(gated, "fvsteer_queue_rejected_total")
    with ThreadPoolExecutor(QUEUE + 1) as pool:
        with faults.held("steps"):
            admitted = [pool.submit(complete, gated, 4)]
            faults.wait_parked("steps")  # one row in the batch (the batch holds one)
            admitted += [pool.submit(complete, gated, 4) for _ in range(QUEUE)]
            wait_until(lambda: metric(gated, "fvsteer_queue_depth") == QUEUE, "a full queue")
            refused = complete(gated, 4)
        answers = [future.result() for future in admitted]
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["type"] == "queue_full" and f"the queue limit is {QUEUE}" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert [answer.status_code for answer in answers] == [200] * (QUEUE + 1)
    assert metric(gated, "fvsteer_queue_rejected_total") == rejected + 1


def test_long_queue_wait_gets_504_and_a_stream_gets_it_before_any_event(deadlines: LiveServer) -> None:
    faults = Faults(deadlines)
    timeouts = metric(deadlines, "fvsteer_queue_timeouts_total")
    with ThreadPoolExecutor(3) as pool:
        with faults.held("steps"):
            first = pool.submit(complete, deadlines, 8)
            faults.wait_parked("steps")
            second = pool.submit(complete, deadlines, 8)
            third = pool.submit(streamed, deadlines, 8)
            wait_until(lambda: metric(deadlines, "fvsteer_queue_depth") == 2, "two queued requests")
            wait_past(LIMIT_S, "the queue-wait limit")
        running, waited, (status, content_type, body) = first.result(), second.result(), third.result()
    assert running.status_code == 200 and running.json()["finish_reason"] == "timeout"  # its deadline passed too
    assert waited.status_code == 504, waited.text
    error = waited.json()["error"]
    assert error["type"] == "timeout" and f"the queue-wait limit is {LIMIT_S:g} s" in error["message"]
    assert status == 504 and content_type.startswith("application/json") and "event:" not in body
    assert json.loads(body)["error"]["type"] == "timeout"
    assert metric(deadlines, "fvsteer_queue_timeouts_total") == timeouts + 2


def test_deadline_ends_with_timeout_and_the_text_so_far(deadlines: LiveServer) -> None:
    faults = Faults(deadlines)
    with ThreadPoolExecutor(1) as pool:
        with faults.held("steps", after=3):
            future = pool.submit(complete, deadlines, 64)
            faults.wait_parked("steps")
            wait_past(LIMIT_S, "the request's deadline")
        response = future.result()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["finish_reason"] == "timeout"
    assert 0 < body["usage"]["completion_tokens"] < 64 and body["text"]


def _closed_requests(server: LiveServer, path: str) -> int:
    return sum(1 for line in server.log().splitlines() if '"status": 499' in line and f'"path": "{path}"' in line)


def test_a_client_that_goes_away_frees_its_row(gated: LiveServer) -> None:
    faults = Faults(gated)
    cancelled = metric(gated, "fvsteer_rows_finished_total", '{reason="cancelled"}')
    tokens = metric(gated, "fvsteer_tokens_generated_total")
    closed = _closed_requests(gated, "/complete")
    body = json.dumps({"prompt": LONG_PROMPT, "max_new_tokens": 64}).encode()
    with faults.held("steps"):
        client = open_request(gated, "POST", "/complete", body)
        faults.wait_parked("steps")  # admitted: the prefill made its first token
        client.close()
        wait_until(lambda: _closed_requests(gated, "/complete") == closed + 1, "a 499 access-log line")
    wait_until(lambda: metric(gated, "fvsteer_rows_finished_total", '{reason="cancelled"}') == cancelled + 1,
               "the row to end cancelled")
    wait_until(lambda: metric(gated, "fvsteer_active_rows") == 0, "an empty batch")
    assert metric(gated, "fvsteer_tokens_generated_total") - tokens == 2  # the prefill's and the parked step's


def test_an_evaluation_whose_client_goes_away_stops_its_forwards(gated: LiveServer) -> None:
    faults = Faults(gated)
    name = f"leave-{secrets.token_hex(3)}"
    assert upload(gated, name, vector_bytes(gated.d_model)).status_code == 201
    body = {"pairs": [{"input": f"a{i}", "output": f"b{i}"} for i in range(120)], "shots": 10}
    path = f"/vectors/{name}/evaluate"
    before = metric(gated, "fvsteer_engine_tasks_total")
    assert httpx.post(f"{gated.url}{path}", json=body, timeout=120).status_code == 200
    whole = metric(gated, "fvsteer_engine_tasks_total") - before
    before = metric(gated, "fvsteer_engine_tasks_total")
    closed = _closed_requests(gated, path)
    with faults.held("tasks", after=2):
        client = open_request(gated, "POST", path, json.dumps(body).encode())
        faults.wait_parked("tasks")  # two forwards done, the third waits
        client.close()
        wait_until(lambda: _closed_requests(gated, path) == closed + 1, "a 499 access-log line")
    # The parked forward runs; the evaluation's thread, told its caller left, queues no other.
    wait_until(lambda: metric(gated, "fvsteer_engine_tasks_total") - before == 3, "the parked forward")
    decoded = httpx.get(f"{gated.url}/vectors/{name}/decode", params={"k": 3}, timeout=60)  # one task, queued last
    assert decoded.status_code == 200, decoded.text
    assert metric(gated, "fvsteer_engine_tasks_total") - before == 4 < whole + 1, whole


def test_cors_allows_only_the_configured_origin(gated: LiveServer, live_server: LiveServer) -> None:
    preflight = {"Origin": "https://lab.example", "Access-Control-Request-Method": "POST"}
    allowed = httpx.options(f"{gated.url}/complete", headers=preflight, timeout=10)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://lab.example"
    other = httpx.get(f"{gated.url}/healthz", headers={"Origin": "https://evil.example"}, timeout=10)
    assert "access-control-allow-origin" not in other.headers
    unconfigured = httpx.get(f"{live_server.url}/healthz", headers={"Origin": "https://lab.example"}, timeout=10)
    assert "access-control-allow-origin" not in unconfigured.headers


def test_admission_refuses_beyond_its_limit_and_frees_slots() -> None:
    gate = Admission(2)

    async def scenario() -> None:
        async with gate.slot(), gate.slot():
            with pytest.raises(QueueFull) as refused:
                async with gate.slot():
                    pass
            assert "the limit is 2" in refused.value.message and refused.value.retry_after_s >= 1
        assert gate.active == 0
        with pytest.raises(RuntimeError):
            async with gate.slot():
                raise RuntimeError("a failed request frees its slot too")
        assert gate.active == 0

    asyncio.run(scenario())


def test_model_work_routes_get_429_beyond_the_admission_limit(gated: LiveServer) -> None:
    """Evaluation, decoding and analogies run as engine tasks: a burst of them is bounded (here by
    FVSTEER_MAX_QUEUE = 3) like completions are."""
    faults = Faults(gated)
    name = f"gate-{secrets.token_hex(3)}"
    assert upload(gated, name, vector_bytes(gated.d_model)).status_code == 201
    body = {"pairs": [{"input": f"a{i}", "output": f"b{i}"} for i in range(40)], "shots": 10}

    def evaluate() -> httpx.Response:
        return httpx.post(f"{gated.url}/vectors/{name}/evaluate", json=body, timeout=120)

    with ThreadPoolExecutor(QUEUE) as pool:
        with faults.held("tasks"):
            running = [pool.submit(evaluate) for _ in range(QUEUE)]
            wait_until(lambda: metric(gated, "fvsteer_http_in_flight") == QUEUE, "every slot taken")
            refused = evaluate()
            decode = httpx.get(f"{gated.url}/vectors/{name}/decode", timeout=60)
        answers = [future.result() for future in running]
    for response in (refused, decode):
        assert response.status_code == 429, response.text
        assert "the limit is 3" in response.json()["error"]["message"] and response.headers["retry-after"]
    assert [answer.status_code for answer in answers] == [200] * QUEUE
