"""Route-level behaviour in process (tests.harness: the app on httpx's ASGI transport, a scripted generation
backend, no model): what each route answers, how steering is reported, refusals, readiness and draining."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fvsteer_vllm.bank import vector_digest

from tests.harness import Harness, make_harness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    harness = make_harness(tmp_path)
    harness.add_vector("up", 1, [3.0, 4.0, 0.0, 0.0])
    harness.add_vector("side", 2, [0.0, 0.0, 1.0, 0.0])
    yield harness
    harness.runtime.stop()


def call(harness: Harness, scenario: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        async with harness.client() as client:
            return await scenario(client)

    return asyncio.run(run())


def post(harness: Harness, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return call(harness, lambda client: client.post(path, json=body, headers=headers))  # type: ignore[no-any-return]


def get(harness: Harness, path: str, **headers: str) -> httpx.Response:
    return call(harness, lambda client: client.get(path, headers=headers))  # type: ignore[no-any-return]


def test_a_steered_completion_reports_what_the_backend_added(harness: Harness) -> None:
    response = post(harness, "/complete", {"prompt": "Q:", "relations": {"up": 2.0, "side": 0.0},
                                           "return_baseline": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] == "Q: [steered]" and body["baseline"] == {"text": "Q: [plain]", "finish_reason": "length"}
    up = vector_digest(torch.tensor([3.0, 4.0, 0.0, 0.0]))
    assert body["steering"] == {"relations": {"up": 2.0}, "scale": 1.0, "positions": "fv", "layers": {
        "1": {"norm": 10.0, "vectors": [{"name": "up", "digest": up, "weight": 2.0}]}}}
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": len("Q: [steered]")}
    assert body["model"] == "scripted" and body["id"].startswith("cmpl-")
    assert harness.backend.submitted == []  # both rows ended: nothing left with the backend


def test_layer_and_scale_move_and_size_the_composite(harness: Harness) -> None:
    body = post(harness, "/complete", {"prompt": "a", "relations": {"up": 1.0, "side": 1.0}, "layer": 0,
                                       "scale": -2.0}).json()
    (layer,) = body["steering"]["layers"].values()
    assert list(body["steering"]["layers"]) == ["0"] and layer["norm"] == pytest.approx(2 * (25 + 1) ** 0.5)
    assert [(v["name"], v["weight"]) for v in layer["vectors"]] == [("up", -2.0), ("side", -2.0)]


def test_an_unsteered_completion_has_no_steering(harness: Harness) -> None:
    body = post(harness, "/complete", {"prompt": "a", "relations": {}}).json()
    assert body["steering"] is None and body["text"] == "a [plain]"


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"prompt": "a", "relations": {"nope": 1.0}}, 404, "relations.nope"),
    ({"prompt": "a", "layer": 3}, 422, "layer"),
    ({"prompt": "a", "relations": {"up": 1.0}, "layer": 7}, 422, "layer"),
    ({"prompt": "a", "max_new_tokens": 10_000}, 422, "max_new_tokens"),
    ({"prompt": "x" * 65}, 422, "prompt"),
    ({"prompt": "a", "relations": {"up": float("nan")}}, 422, None),
])
def test_refusals_name_the_parameter_and_queue_nothing(harness: Harness, body: dict[str, Any], status: int,
                                                      param: str | None) -> None:
    harness.backend.hold = True
    response = call(harness, lambda client: client.post(
        "/complete", content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"}))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and (param is None or error["param"] == param)
    assert harness.backend.submitted == []


def test_a_stream_sends_the_text_then_the_response(harness: Harness) -> None:
    response = post(harness, "/complete", {"prompt": "hi", "relations": {"up": 1.0}, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [block.split("\n", 1) for block in response.text.strip().split("\n\n")]
    names = [head.removeprefix("event: ") for head, _ in events]
    data = [json.loads(rest.removeprefix("data: ")) for _, rest in events]
    assert names == ["token", "done"]
    assert data[0] == {"text": "hi [steered]"} and data[1]["text"] == "hi [steered]"


def test_readiness_and_a_drain_refuse_new_work(harness: Harness) -> None:
    assert get(harness, "/readyz").json() == {"status": "ready", "model": "scripted", "cache": "memory",
                                              "registry": "local"}
    harness.runtime.begin_drain()
    ready, refused = get(harness, "/readyz"), post(harness, "/complete", {"prompt": "a"})
    for response in (ready, refused):
        assert response.status_code == 503 and "shutting down" in response.json()["error"]["message"]
    assert refused.headers["retry-after"]
    assert get(harness, "/healthz").json() == {"status": "ok"}


def test_a_backend_that_cannot_serve_is_a_503(harness: Harness) -> None:
    harness.backend.failure = "the engine failed: injected"
    response = post(harness, "/complete", {"prompt": "a"})
    assert response.status_code == 503 and response.json()["error"]["type"] == "not_ready"


def test_vectors_and_jobs_routes(harness: Harness) -> None:
    listed = get(harness, "/vectors").json()["vectors"]
    assert [(v["name"], v["layer"], v["norm"]) for v in listed] == [("side", 2, 1.0), ("up", 1, 5.0)]
    one = get(harness, "/vectors/up").json()
    assert one["d_model"] == 4 and one["method"] == "imported" and one["heads"] == []
    assert get(harness, "/vectors/nope").status_code == 404
    assert get(harness, "/vectors/BAD").status_code == 422
    assert get(harness, "/jobs/job-0123456789abcdef").status_code == 404
    assert get(harness, "/jobs/not-a-job").json()["error"]["param"] == "id"


def test_admin_routes_need_the_token(harness: Harness) -> None:
    assert get(harness, "/admin/vectors").status_code == 401
    assert get(harness, "/admin/vectors", Authorization="Bearer wrong").status_code == 401
    listed = get(harness, "/admin/vectors", Authorization="Bearer harness-token").json()
    assert [v["name"] for v in listed["vectors"]] == ["side", "up"] and listed["refused"] == []
    deleted = call(harness, lambda client: client.delete("/admin/vectors/up",
                                                         headers={"Authorization": "Bearer harness-token"}))
    assert deleted.json() == {"deleted": "up"}
    assert post(harness, "/complete", {"prompt": "a", "relations": {"up": 1.0}}).status_code == 404
