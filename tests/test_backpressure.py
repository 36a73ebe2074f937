"""Backpressure and deadlines on a real server whose engine is made slow (tests.fault_server): a full queue → 429
with Retry-After, a long queue wait → 504 (streamed requests too, before any event), the per-request deadline →
``finish_reason: "timeout"`` with the text so far, and a client that goes away frees its row at once."""

from __future__ import annotations

import asyncio
import json
import re
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
from tests.test_api import upload, vector_bytes
from tests.tiny_models import ARCH_CONFIGS

STEP_S = 0.05  # every decode step sleeps this long
TASK_S = 0.1  # and every task forward (evaluations, analogies, jobs)
QUEUE = 3
QUEUE_TIMEOUT_S = 1.0
REQUEST_TIMEOUT_S = 1.5
LLAMA: dict[str, Any] = ARCH_CONFIGS["llama"]
LONG_PROMPT = "Q: cold\nA:"  # the tiny model (seed 0) writes 80 tokens on this without an end-of-sequence


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[LiveServer]:
    server = start_server(
        tmp_path_factory.mktemp("slow"), str(tiny_llama_dir), admin_token=secrets.token_hex(8),
        d_model=int(LLAMA["hidden_size"]),
        n_layers=int(LLAMA["num_hidden_layers"]), module="tests.fault_server",
        extra_env={"FAULT_STEP_DELAY_S": str(STEP_S), "FAULT_TASK_DELAY_S": str(TASK_S),
                   "FVSTEER_MAX_BATCH": "1", "FVSTEER_MAX_QUEUE": str(QUEUE),
                   "FVSTEER_QUEUE_TIMEOUT_S": str(QUEUE_TIMEOUT_S),
                   "FVSTEER_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S), "FVSTEER_MAX_NEW_TOKENS": "64",
                   "FVSTEER_CORS_ORIGINS": '["https://lab.example"]'},
    )
    yield server
    stop_server(server)


def complete(server: LiveServer, tokens: int, **extra: Any) -> httpx.Response:
    body = {"prompt": LONG_PROMPT, "max_new_tokens": tokens, **extra}
    return httpx.post(f"{server.url}/complete", json=body, timeout=30)


def metric(server: LiveServer, name: str, labels: str = "") -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert found, f"{name}{labels} not in /metrics"
    return float(found[1])


def wait_idle(server: LiveServer) -> None:
    deadline = time.monotonic() + 20
    while metric(server, "fvsteer_active_rows") or metric(server, "fvsteer_queue_depth"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_full_queue_gets_429_with_retry_after(slow_server: LiveServer) -> None:
    wait_idle(slow_server)
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: complete(slow_server, 4), range(12)))
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 1 + QUEUE - 1 and statuses.count(429) >= 1, statuses  # 1 running + the queue
    refused = next(response for response in responses if response.status_code == 429)
    error = refused.json()["error"]
    assert error["type"] == "queue_full" and f"the queue limit is {QUEUE}" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert metric(slow_server, "fvsteer_queue_rejected_total") >= statuses.count(429)


def test_long_queue_wait_gets_504_and_a_stream_gets_it_before_any_event(slow_server: LiveServer) -> None:
    wait_idle(slow_server)
    tokens = int(REQUEST_TIMEOUT_S / STEP_S) + 10  # the first row holds the batch until its deadline

    def streamed(_: int) -> tuple[int, str, str]:
        body = {"prompt": LONG_PROMPT, "max_new_tokens": tokens, "stream": True}
        with httpx.stream("POST", f"{slow_server.url}/complete", json=body, timeout=30) as response:
            return response.status_code, response.headers["content-type"], response.read().decode()

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(complete, slow_server, tokens)
        time.sleep(0.3)
        second = pool.submit(complete, slow_server, tokens)
        third = pool.submit(streamed, 0)
        running, waited, (status, content_type, body) = first.result(), second.result(), third.result()
    assert running.status_code == 200 and running.json()["finish_reason"] == "timeout"
    assert waited.status_code == 504, waited.text
    error = waited.json()["error"]
    assert error["type"] == "timeout" and f"the queue-wait limit is {QUEUE_TIMEOUT_S:g} s" in error["message"]
    assert status == 504 and content_type.startswith("application/json") and "event:" not in body
    assert json.loads(body)["error"]["type"] == "timeout"
    assert metric(slow_server, "fvsteer_queue_timeouts_total") >= 2


def test_deadline_ends_with_timeout_and_the_text_so_far(slow_server: LiveServer) -> None:
    wait_idle(slow_server)
    started = time.monotonic()
    response = complete(slow_server, 64)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["finish_reason"] == "timeout"
    assert 0 < body["usage"]["completion_tokens"] < 64 and body["text"]
    assert REQUEST_TIMEOUT_S <= elapsed < REQUEST_TIMEOUT_S + 2


def test_a_client_that_goes_away_frees_its_row(slow_server: LiveServer) -> None:
    wait_idle(slow_server)
    cancelled = metric(slow_server, "fvsteer_rows_finished_total", '{reason="cancelled"}')
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 0.3 s and closes the connection
        httpx.post(f"{slow_server.url}/complete", json={"prompt": LONG_PROMPT, "max_new_tokens": 64}, timeout=0.3)
    gone = time.monotonic()
    while metric(slow_server, "fvsteer_rows_finished_total", '{reason="cancelled"}') == cancelled:
        assert time.monotonic() - gone < REQUEST_TIMEOUT_S - 0.3, "the row ran on after its client left"
        time.sleep(0.02)
    assert metric(slow_server, "fvsteer_active_rows") == 0
    while '"status": 499' not in slow_server.log():  # the access line is written once the handler returns
        assert time.monotonic() - gone < 5, "no 499 access-log line"
        time.sleep(0.05)


def test_an_evaluation_whose_client_goes_away_stops_its_forwards(slow_server: LiveServer) -> None:
    name = f"leave-{secrets.token_hex(3)}"
    assert upload(slow_server, name, vector_bytes(slow_server.d_model)).status_code == 201
    body = {"pairs": [{"input": f"a{i}", "output": f"b{i}"} for i in range(120)], "shots": 10}
    url = f"{slow_server.url}/vectors/{name}/evaluate"
    before = metric(slow_server, "fvsteer_engine_tasks_total")
    assert httpx.post(url, json=body, timeout=120).status_code == 200
    whole = metric(slow_server, "fvsteer_engine_tasks_total") - before
    before = metric(slow_server, "fvsteer_engine_tasks_total")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 0.3 s and closes the connection
        httpx.post(url, json=body, timeout=0.3)
    gone = time.monotonic()
    while not any(f"/vectors/{name}/evaluate" in line and '"status": 499' in line
                  for line in slow_server.log().splitlines()):
        assert time.monotonic() - gone < 5, "no 499 access-log line"
        time.sleep(0.05)
    time.sleep(whole * TASK_S + 1)  # long enough for the rest of the evaluation, had it gone on
    partial = metric(slow_server, "fvsteer_engine_tasks_total") - before
    assert partial < whole / 2, (partial, whole)


def test_cors_allows_only_the_configured_origin(slow_server: LiveServer, live_server: LiveServer) -> None:
    preflight = {"Origin": "https://lab.example", "Access-Control-Request-Method": "POST"}
    allowed = httpx.options(f"{slow_server.url}/complete", headers=preflight, timeout=10)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://lab.example"
    other = httpx.get(f"{slow_server.url}/healthz", headers={"Origin": "https://evil.example"}, timeout=10)
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


def test_model_work_routes_get_429_beyond_the_admission_limit(slow_server: LiveServer) -> None:
    """Evaluation, decoding and analogies run as engine tasks: a burst of them is bounded (here by
    FVSTEER_MAX_QUEUE = 3) like completions are."""
    name = f"gate-{secrets.token_hex(3)}"
    assert upload(slow_server, name, vector_bytes(slow_server.d_model)).status_code == 201
    pairs = [{"input": f"a{i}", "output": f"b{i}"} for i in range(40)]

    def evaluate(_: int) -> httpx.Response:
        body = {"pairs": pairs, "shots": 10}
        return httpx.post(f"{slow_server.url}/vectors/{name}/evaluate", json=body, timeout=120)

    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(evaluate, range(24)))
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
    refused = next(response for response in responses if response.status_code == 429)
    assert "the limit is 3" in refused.json()["error"]["message"] and refused.headers["retry-after"]
