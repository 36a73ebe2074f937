"""Everything ``POST /complete`` does, on the vllm backend: streaming, stop strings, seeded sampling, the
baseline, metrics; and what serving promises whatever the backend: 429 beyond the queue, 504 past the queue-wait
limit, the deadline's ``timeout`` with the text so far, and a client that leaves frees its row (vLLM aborts it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import LiveServer, stop_server
from tests.faults import metric, open_request, wait_until
from tests_vllm.conftest import Vllm, complete, front

COUNTING = "Count from 1 to 1000 with commas: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # goes on for hundreds of tokens
LONG = 400
LIMIT_S = 6.0


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, vllm: Vllm) -> Iterator[LiveServer]:
    """Two rows at vLLM at once, two waiting, short limits."""
    server = front(tmp_path_factory.mktemp("small-front"), vllm.registry, FVSTEER_BACKEND="vllm",
                   FVSTEER_VLLM_URL=vllm.url, FVSTEER_MAX_BATCH="2", FVSTEER_MAX_QUEUE="2",
                   FVSTEER_QUEUE_TIMEOUT_S="3", FVSTEER_REQUEST_TIMEOUT_S=str(LIMIT_S))
    yield server
    stop_server(server)


def post(server: LiveServer, **body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/complete", json=body, timeout=300)


def test_stream_stop_baseline_and_metrics(vllm_front: LiveServer) -> None:
    tokens = metric(vllm_front, "fvsteer_tokens_generated_total")
    body = {"prompt": "Q: big\nA:", "relations": {"antonym": 1.0}, "max_new_tokens": 12, "stop": ["\n"],
            "return_baseline": True}
    whole = complete(vllm_front, **body)
    with httpx.stream("POST", f"{vllm_front.url}/complete", json={**body, "stream": True}, timeout=300) as response:
        events = [block for block in response.read().decode().split("\n\n") if block]
    names = [block.split("\n")[0].removeprefix("event: ") for block in events]
    data = [json.loads(block.split("data: ", 1)[1]) for block in events]
    assert names[-1] == "done" and set(names[:-1]) == {"token", "baseline"}
    pieces = {kind: "".join(piece["text"] for name, piece in zip(names, data, strict=True) if name == kind)
              for kind in ("token", "baseline")}
    assert pieces["token"] == data[-1]["text"] == whole["text"]
    assert pieces["baseline"] == data[-1]["baseline"]["text"] == whole["baseline"]["text"]
    assert whole["finish_reason"] == "stop" and "\n" not in whole["text"]
    assert whole["baseline"]["text"] != whole["text"] and whole["steering"]["layers"]
    assert metric(vllm_front, "fvsteer_tokens_generated_total") > tokens
    assert metric(vllm_front, "fvsteer_rows_finished_total", '{reason="stop"}') >= 2


def test_seeded_sampling_is_reproducible(vllm_front: LiveServer) -> None:
    body = {"prompt": "Once upon a time", "relations": {"synonym": 0.5}, "max_new_tokens": 16, "temperature": 1.0}
    first, again = (complete(vllm_front, **body, seed=7)["text"] for _ in range(2))
    others = {complete(vllm_front, **body, seed=seed)["text"] for seed in (8, 9, 10)}
    assert first == again and len(others | {first}) >= 3


def test_refusals_name_the_parameter(vllm_front: LiveServer) -> None:
    for body, status, param in [({"relations": {"nope": 1.0}}, 404, "relations.nope"),
                                ({"relations": {"antonym": 1.0}, "layer": 30}, 422, "layer"),
                                ({"max_new_tokens": 100_000}, 422, "max_new_tokens")]:
        response = post(vllm_front, prompt="Q: hot\nA:", **body)
        assert response.status_code == status and response.json()["error"]["param"] == param, response.text


def test_full_queue_429_then_queue_wait_504(small: LiveServer) -> None:
    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(post, small, prompt=COUNTING, max_new_tokens=LONG) for _ in range(2)]
        wait_until(lambda: metric(small, "fvsteer_active_rows") == 2, "two rows at vLLM")
        queued = [pool.submit(post, small, prompt=COUNTING, max_new_tokens=LONG) for _ in range(2)]
        wait_until(lambda: metric(small, "fvsteer_queue_depth") == 2, "a full queue")
        refused = post(small, prompt="Q: hot\nA:", max_new_tokens=2)
        assert refused.status_code == 429 and refused.headers["retry-after"], refused.text
        assert "the queue limit is 2" in refused.json()["error"]["message"]
        waited = [future.result() for future in queued]  # the two rows ahead run for longer than the 3 s limit
        answers = [future.result() for future in running]
    for response in waited:
        assert response.status_code == 504 and "queue-wait limit is 3 s" in response.json()["error"]["message"]
    for response in answers:  # they ran into the request deadline: answered with the text so far
        assert response.status_code == 200 and response.json()["finish_reason"] == "timeout", response.text
        assert 0 < response.json()["usage"]["completion_tokens"] < LONG and response.json()["text"]


def test_a_client_that_leaves_frees_its_row_at_vllm(small: LiveServer, vllm: Vllm) -> None:
    cancelled = metric(small, "fvsteer_rows_finished_total", '{reason="cancelled"}')
    client = open_request(small, "POST", "/complete", json.dumps(
        {"prompt": COUNTING, "max_new_tokens": LONG, "relations": {"next-item": 0.5}}).encode())
    wait_until(lambda: metric(small, "fvsteer_active_rows") == 1 and vllm.metric("vllm:num_requests_running") >= 1,
               "the row running at vLLM")
    client.close()
    wait_until(lambda: metric(small, "fvsteer_rows_finished_total", '{reason="cancelled"}') == cancelled + 1,
               "the row to end cancelled")
    wait_until(lambda: vllm.metric("vllm:num_requests_running") == 0, "vLLM to abort the request")
    assert metric(small, "fvsteer_active_rows") == 0
