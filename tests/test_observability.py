"""Observability on a real server: request ids (echoed when sane, made up otherwise) in the response header and on
the structured log line of the request, and Prometheus metrics by route template and status."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import httpx

from app.logs import JsonFormatter
from tests.conftest import LiveServer


def log_lines(server: LiveServer) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def access_lines(server: LiveServer, *ids: str) -> dict[object, dict[str, object]]:
    """The access-log lines by request id, once all of ``ids`` are there (written just after each response)."""
    deadline = time.monotonic() + 5
    while True:
        lines = {line.get("request_id"): line for line in log_lines(server) if line.get("logger") == "fvsteer.access"}
        if set(ids) <= set(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_request_id_is_echoed_or_made_and_logged(live_server: LiveServer) -> None:
    given = httpx.get(f"{live_server.url}/vectors", headers={"X-Request-ID": "trace-42.a"}, timeout=10)
    assert given.headers["x-request-id"] == "trace-42.a"
    odd = httpx.get(f"{live_server.url}/vectors", headers={"X-Request-ID": "no spaces\tor tabs"}, timeout=10)
    made = odd.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", made)
    refused = httpx.post(f"{live_server.url}/complete", json={"prompt": ""}, timeout=10)
    assert refused.status_code == 422 and refused.headers["x-request-id"]
    access = access_lines(live_server, "trace-42.a", made, refused.headers["x-request-id"])
    assert access["trace-42.a"]["route"] == "/vectors" and access["trace-42.a"]["status"] == 200
    assert access[made]["method"] == "GET" and isinstance(access[made]["duration_ms"], float)
    assert access[refused.headers["x-request-id"]]["status"] == 422
    assert all({"time", "level", "logger", "message"} <= set(line) for line in log_lines(live_server))


def test_metrics_count_requests_by_route_template_and_status(live_server: LiveServer) -> None:
    for _ in range(2):
        assert httpx.get(f"{live_server.url}/vectors/no-such-vector", timeout=10).status_code == 404
    done = httpx.post(f"{live_server.url}/complete", json={"prompt": "Q: a\nA:", "max_new_tokens": 3}, timeout=30)
    assert done.status_code == 200
    text = httpx.get(f"{live_server.url}/metrics", timeout=10).text
    assert httpx.get(f"{live_server.url}/metrics", timeout=10).headers["content-type"].startswith("text/plain")

    def value(sample: str) -> float:
        found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
        assert found, f"{sample} missing"
        return float(found[1])

    assert value('fvsteer_http_requests_total{method="GET",route="/vectors/{name}",status="404"}') >= 2
    assert value('fvsteer_http_requests_total{method="POST",route="/complete",status="200"}') >= 1
    assert "no-such-vector" not in text  # labels are route templates, never user input
    assert value('fvsteer_http_request_duration_seconds_count{method="POST",route="/complete"}') >= 1
    assert value('fvsteer_http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/complete"}') >= 1
    for sample in ("fvsteer_ready", "fvsteer_draining", "fvsteer_queue_depth", "fvsteer_active_rows",
                   "fvsteer_tokens_generated_total", 'fvsteer_rows_finished_total{reason="length"}',
                   "fvsteer_batch_size_count", 'fvsteer_head_mean_cache_total{outcome="hit"}',
                   "fvsteer_head_mean_cache_degraded", "fvsteer_queue_rejected_total", "fvsteer_queue_timeouts_total"):
        value(sample)
    assert value("fvsteer_ready") == 1 and value("fvsteer_draining") == 0
    assert value("fvsteer_tokens_generated_total") >= 3


def test_a_bug_still_answers_the_envelope_with_the_request_id() -> None:
    """An exception no handler knows (a bug, injected here) gets the 500 envelope and the request id, on the response
    and on the log line that holds the traceback."""
    from prometheus_client import CollectorRegistry

    from app.api.metrics import HttpMetrics
    from app.api.observability import RequestObservation
    from app.runtime import Runtime
    from app.settings import Settings

    async def buggy(scope: dict[str, object], receive: object, send: object) -> None:
        raise ZeroDivisionError("injected")

    middleware = RequestObservation(buggy, Runtime(Settings()), HttpMetrics(CollectorRegistry()))  # type: ignore[arg-type]

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/anything", headers={"X-Request-ID": "bug-1"})

    lines: list[str] = []

    class Capture(logging.Handler):  # formats when the line is logged, as the server's handler does
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Capture(level=logging.ERROR)
    handler.setFormatter(JsonFormatter())
    access_log = logging.getLogger("fvsteer.access")
    access_log.addHandler(handler)
    try:
        response = asyncio.run(call())
    finally:
        access_log.removeHandler(handler)
    assert response.status_code == 500 and response.headers["x-request-id"] == "bug-1"
    assert response.json() == {"error": {"type": "internal_error", "message": "internal error; see the server log",
                                         "param": None, "code": None}}
    (line,) = lines
    entry = json.loads(line)
    assert entry["request_id"] == "bug-1" and "ZeroDivisionError" in entry["exception"]
