"""Streamed completions (`"stream": true`): server-sent `token` events whose text, concatenated, is the
non-streamed text; a final `done` event with the whole response; refusals as plain 4xx before any event; a
failure mid-stream as an `error` event; stop strings never leak into a piece; the SDK (sync and async) and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import fvsteer_client as fv
import httpx
import pytest

from app.api.routes.completions import _server_sent
from app.engine.requests import GenerationRequest, SamplingParams, settle
from app.errors import NotFound
from app.services.completions import CompletionInput, CompletionService, Event, _Prepared
from app.services.generation import GenerationService
from app.services.results import TextPiece
from tests.conftest import LiveServer
from tests.test_api import assert_envelope, upload, vector_bytes
from tests.test_cli_jobs import run

PROMPTS = ["Q: hot\nA:", "The cat sat on", "abc"]


@pytest.fixture(scope="module")
def vector(live_server: LiveServer) -> Iterator[str]:
    name = f"stream-{secrets.token_hex(4)}"
    assert upload(live_server, name, vector_bytes(live_server.d_model, scale=8.0)).status_code == 201
    yield name
    httpx.delete(f"{live_server.url}/admin/vectors/{name}",
                 headers={"Authorization": f"Bearer {live_server.admin_token}"})


def sse(server: LiveServer, **body: Any) -> tuple[list[str], dict[str, Any], list[tuple[str, Any]]]:
    """(text pieces, the done event's response, every event) of one streamed request."""
    events: list[tuple[str, Any]] = []
    name = ""
    with httpx.stream("POST", f"{server.url}/complete", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
    pieces = [data["text"] for name, data in events if name == "token"]
    done = [data for name, data in events if name == "done"]
    assert len(done) == 1 and events[-1][0] == "done"
    return pieces, done[0], events


@pytest.mark.parametrize("prompt", PROMPTS)
def test_streamed_text_equals_the_whole_text(live_server: LiveServer, vector: str, prompt: str) -> None:
    body = {"prompt": prompt, "max_new_tokens": 24, "relations": {vector: 1.0}, "return_baseline": True}
    whole = httpx.post(f"{live_server.url}/complete", json=body, timeout=60).json()
    pieces, done, events = sse(live_server, **body)
    assert "".join(pieces) == whole["text"] == done["text"] and len(pieces) > 1
    assert done["finish_reason"] == whole["finish_reason"] and done["usage"] == whole["usage"]
    assert done["steering"] == whole["steering"] and done["baseline"] == whole["baseline"]
    baseline = [data["text"] for name, data in events if name == "baseline"]  # the baseline streams beside it
    assert "".join(baseline) == whole["baseline"]["text"] and len(baseline) > 1


def test_no_baseline_events_without_return_baseline(live_server: LiveServer, vector: str) -> None:
    _, done, events = sse(live_server, prompt="abc", max_new_tokens=8, relations={vector: 1.0})
    assert done["baseline"] is None and {name for name, _ in events} == {"token", "done"}


def test_stop_strings_never_reach_a_piece(live_server: LiveServer) -> None:
    whole = httpx.post(f"{live_server.url}/complete", json={"prompt": "abc", "max_new_tokens": 40},
                       timeout=60).json()["text"]
    stop = whole[10:13]  # three characters the unstopped text holds: the stop cuts there
    assert len(stop) == 3
    body = {"prompt": "abc", "max_new_tokens": 40, "stop": [stop]}
    cut = httpx.post(f"{live_server.url}/complete", json=body, timeout=60).json()
    pieces, done, _ = sse(live_server, **body)
    assert "".join(pieces) == cut["text"] == done["text"] == whole[: whole.find(stop)]
    assert done["finish_reason"] == "stop" and all(stop not in piece for piece in pieces)


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"prompt": "x", "relations": {"no-such-vector": 1.0}}, 404, "relations.no-such-vector"),
    ({"prompt": "x", "max_new_tokens": 10_000}, 422, "max_new_tokens"),
    ({"prompt": ""}, 422, "prompt"),
])
def test_refusals_come_before_any_event(live_server: LiveServer, body: dict[str, Any], status: int,
                                        param: str) -> None:
    response = httpx.post(f"{live_server.url}/complete", json={**body, "stream": True}, timeout=30)
    assert response.headers["content-type"].startswith("application/json")
    assert_envelope(response, status, param)


def test_a_failure_mid_stream_ends_with_an_error_event() -> None:
    async def events() -> AsyncIterator[Event]:
        yield "token", TextPiece(text="he")
        raise NotFound("the vector went away", param="relations.x")

    async def collect() -> list[str]:
        return [item async for item in _server_sent(events())]

    out = asyncio.run(collect())
    assert out[0] == 'event: token\ndata: {"text":"he"}\n\n'
    assert out[-1].startswith("event: error\n")
    envelope = json.loads(out[-1].split("data: ", 1)[1])
    assert envelope == {"error": {"type": "not_found", "message": "the vector went away", "param": "relations.x",
                                  "code": None}}


def test_sdk_streams_sync_and_async(live_server: LiveServer) -> None:
    with fv.Client(live_server.url) as client:
        whole = client.complete("Q: hot\nA:", max_new_tokens=16)
        chunks = list(client.complete("Q: hot\nA:", max_new_tokens=16, stream=True))
        with pytest.raises(fv.NotFoundError):
            list(client.complete("x", relations={"nope": 1.0}, stream=True))
    assert "".join(chunk.text for chunk in chunks) == whole.text
    final = chunks[-1].completion
    assert final is not None and final.text == whole.text and all(c.completion is None for c in chunks[:-1])

    async def async_text() -> str:
        async with fv.AsyncClient(live_server.url) as client:
            stream = await client.complete("Q: hot\nA:", max_new_tokens=16, stream=True)
            return "".join([chunk.text async for chunk in stream])

    assert asyncio.run(async_text()) == whole.text


def test_cli_streams(live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, whole, _ = run(capsys, "--url", live_server.url, "complete", "The cat sat on", "--max-new-tokens", "12")
    assert code == 0
    code, streamed, err = run(capsys, "--url", live_server.url, "complete", "The cat sat on", "--max-new-tokens",
                              "12", "--stream")
    assert code == 0 and streamed == whole and "tokens]" in err


def test_a_stream_left_mid_way_leaves_no_task_pending_and_cancels_its_rows() -> None:
    """A client that left a stream left its piece getter pending ("Task was destroyed but it is pending!"); its
    rows must stop at the backend's next step too."""

    class Backend:  # admits the rows and hands over one piece of the steered row; never ends them
        model_name = "fake"

        def submit(self, rows: list[GenerationRequest]) -> None:
            for row in rows:
                settle(row.admitted)
            assert rows[0].on_text is not None
            rows[0].on_text("a")

    generation = GenerationService(Backend(), max_new_tokens=8, timeout_s=60.0)  # type: ignore[arg-type]
    service = CompletionService(generation, None)  # type: ignore[arg-type]

    async def leave() -> tuple[set[asyncio.Task[Any]], list[bool]]:
        rows = generation.rows([([1, 2], SamplingParams(4), None), ([1, 2], SamplingParams(4), None)])
        prepared = _Prepared(CompletionInput(prompt="x", return_baseline=True), None, rows)
        stream = service._events(prepared, await generation.open_stream(rows))
        assert await anext(stream) == ("token", TextPiece(text="a"))
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.01)
        waiting.cancel()  # the client went away: Starlette cancels the response
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0)
        return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}, [r.cancelled for r in rows]

    assert asyncio.run(leave()) == (set(), [True, True])
