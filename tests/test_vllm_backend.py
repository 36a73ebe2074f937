"""The vllm backend's own logic against a scripted stand-in for vLLM's HTTP server (in process, on a real port):
what it sends (token ids, sampling, steering as bank keys, the cache salt), how it maps vLLM's answers and failures,
its queue (429, 504), deadlines, cancellation and health. The real vLLM server is in tests_vllm/."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fvsteer_vllm.bank import vector_key
from fvsteer_vllm.spec import SteeringSpec
from fvsteer_vllm.state import failure_path

from app.engine.bank import VectorBank
from app.engine.prompt_encoder import PromptEncoder
from app.engine.requests import BankSteering, GenerationRequest, GenerationResult, SamplingParams
from app.engine.vllm_backend import VllmBackend, cache_salt
from app.errors import GatewayTimeout, InvalidInput, NotFound, NotReady, QueueFull
from app.registry.registry import ModelIdentity, VectorRegistry
from tests.conftest import free_port
from tests.faults import wait_until
from tests.tiny_models import tiny_tokenizer

WAIT_S = 30.0


@dataclass
class Script:
    """What the stand-in answers; ``hold`` keeps every stream open after its first piece until released."""

    healthy: bool = True
    hold: threading.Event = field(default_factory=threading.Event)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    closed: int = 0  # streams whose client went away
    refuse: str | None = None  # answer 400 with this message
    break_stream: bool = False  # send an error object inside the stream
    fail_steering: Path | None = None  # as the plugin does for steering it cannot apply: report it in this folder


def stand_in(script: Script) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    def health() -> JSONResponse:
        return JSONResponse({}, status_code=200 if script.healthy else 503)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"data": [{"id": "tiny"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        script.bodies.append(body)
        if script.refuse:
            return JSONResponse({"error": {"message": script.refuse}}, status_code=400)
        spec = SteeringSpec.of(body.get("vllm_xargs"))
        if script.fail_steering is not None and spec is not None and spec.request_id is not None:
            failure = failure_path(script.fail_steering, spec.request_id)
            failure.parent.mkdir(exist_ok=True)
            failure.write_text("every bank row is held")
            body["max_tokens"] = 1  # ended at once, as the plugin's end-of-sequence does

        async def events() -> AsyncIterator[str]:
            try:
                words = ["he", "llo", " wor", "ld"][: body["max_tokens"]]
                for index, word in enumerate(words):
                    if index == 1:
                        while script.hold.is_set():
                            await asyncio.sleep(0.01)
                    if script.break_stream:
                        yield f"data: {json.dumps({'error': {'message': 'boom'}})}\n\n"
                        return
                    last = index == len(words) - 1
                    choice = {"text": word, "token_ids": [index + 3], "finish_reason": "length" if last else None}
                    yield f"data: {json.dumps({'choices': [choice]})}\n\n"
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                script.closed += 1
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture
def vllm_stand_in() -> Iterator[tuple[str, Script]]:
    script = Script()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(stand_in(script), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the stand-in to listen")
    yield f"http://127.0.0.1:{port}", script
    script.hold.clear()
    server.should_exit = True
    thread.join(timeout=WAIT_S)


@pytest.fixture
def registry(tmp_path: Path) -> VectorRegistry:
    registry = VectorRegistry(tmp_path, ModelIdentity("tiny", "tiny", "fp", d_model=4, n_layers=3))
    registry.add(torch.tensor([3.0, 4.0, 0, 0]), {"name": "up", "layer": "1"})
    return registry


@dataclass
class Made:
    backend: VllmBackend
    fatal: list[BaseException]


def make(url: str, registry: VectorRegistry, **limits: Any) -> Made:
    bank = VectorBank(3, 4, torch.device("cpu"), "tiny")
    registry.subscribe(bank.apply)
    fatal: list[BaseException] = []
    options = {"max_batch": 4, "max_queue": 8, "queue_timeout_s": None, **limits}
    backend = VllmBackend(url, "tiny", "tiny", PromptEncoder(tiny_tokenizer(), 64, None), bank,
                          on_fatal=fatal.append, bank_dir=registry.folder, **options)
    registry.subscribe(backend.on_registry_change)
    backend.start()
    backend.wait_ready(WAIT_S)
    return Made(backend, fatal)


@pytest.fixture
def made(vllm_stand_in: tuple[str, Script], registry: VectorRegistry) -> Iterator[Made]:
    made = make(vllm_stand_in[0], registry)
    yield made
    made.backend.stop()


def row(backend: VllmBackend, steering: BankSteering | None = None, tokens: int = 4, **params: Any
        ) -> GenerationRequest:
    return GenerationRequest(backend.encode("hi", tokens), SamplingParams(tokens, **params), steering=steering)


def result(request: GenerationRequest) -> GenerationResult:
    return request.future.result(timeout=WAIT_S)


def test_a_steered_row_is_sent_as_bank_keys_with_a_salt(made: Made, vllm_stand_in: tuple[str, Script],
                                                        registry: VectorRegistry) -> None:
    _, script = vllm_stand_in
    steering = BankSteering.checked({"up": 2.0}, scale=0.5, layer=2, positions="all")
    steered, plain = row(made.backend, steering, temperature=0.7, seed=5), row(made.backend)
    pieces: list[str] = []
    steered.on_text = pieces.append
    made.backend.submit([steered, plain])
    done = result(steered)
    assert (done.text, done.token_ids, done.finish_reason) == ("hello world", [3, 4, 5, 6], "length")
    assert done.receipt is not None and result(plain).receipt is None
    ((layer, applied),) = done.receipt.layers.items()
    assert (layer, applied.norm, done.receipt.positions) == (2, pytest.approx(5.0), "all")
    assert [(v.name, v.weight) for v in applied.vectors] == [("up", 1.0)]
    assert "".join(pieces) == "hello world"
    sent = {body.get("cache_salt"): body for body in script.bodies}
    plain_body = sent.pop(None)
    assert "vllm_xargs" not in plain_body and plain_body["prompt"] == plain.prompt_ids
    ((salt, body),) = sent.items()
    spec = SteeringSpec.of(body["vllm_xargs"])
    assert spec is not None and spec.positions == "all"
    key = vector_key("up", registry.get("up").vector)
    assert [(e.key, e.weight, e.layer) for e in spec.entries] == [(key, 1.0, 2)]
    assert key == f"up@{applied.vectors[0].digest}"  # the receipt names the very vector the plugin was sent
    assert salt == cache_salt(spec, len(steered.prompt_ids))
    assert (body["temperature"], body["seed"], body["max_tokens"], body["stream"]) == (0.7, 5, 4, True)


def test_vllm_refusals_become_fvsteer_errors(made: Made, vllm_stand_in: tuple[str, Script]) -> None:
    _, script = vllm_stand_in
    for message, error in (("fvsteer: no vector 'up@00' in the bank", NotFound), ("max_tokens too big", InvalidInput)):
        script.refuse = message
        request = row(made.backend)
        made.backend.submit([request])
        with pytest.raises(error):
            result(request)
    script.refuse, script.break_stream = None, True
    request = row(made.backend)
    made.backend.submit([request])
    with pytest.raises(NotReady, match="boom"):
        result(request)


def test_steering_the_plugin_could_not_apply_fails_that_row_only(made: Made, vllm_stand_in: tuple[str, Script],
                                                                 registry: VectorRegistry) -> None:
    _, script = vllm_stand_in
    script.fail_steering = registry.folder
    steered = row(made.backend, BankSteering.checked({"up": 1.0}, scale=1.0, layer=None, positions="fv"))
    plain = row(made.backend)
    made.backend.submit([steered, plain])
    with pytest.raises(NotReady, match="could not apply this request's steering: every bank row is held"):
        result(steered)
    assert result(plain).text == "hello world" and not made.fatal
    assert not list((registry.folder / ".failed").iterdir())  # the report was taken
    assert made.backend.stats.failed_rows == 1
    ids = {SteeringSpec.of(body["vllm_xargs"]).request_id for body in script.bodies if "vllm_xargs" in body}
    assert len(ids) == 1 and None not in ids


def test_the_queue_refuses_beyond_its_limit_and_expires_waiters(vllm_stand_in: tuple[str, Script],
                                                                registry: VectorRegistry) -> None:
    url, script = vllm_stand_in
    made = make(url, registry, max_batch=1, max_queue=1, queue_timeout_s=0.5)
    try:
        script.hold.set()
        running = row(made.backend)
        made.backend.submit([running])
        running.admitted.result(timeout=WAIT_S)
        waiting = row(made.backend)
        made.backend.submit([waiting])
        with pytest.raises(QueueFull) as refused:
            made.backend.submit([row(made.backend)])
        assert "the queue limit is 1" in refused.value.message
        with pytest.raises(GatewayTimeout):  # the running row holds the only slot past the 0.5 s limit
            result(waiting)
        assert made.backend.stats.queue_timeouts == 1 and made.backend.stats.rejected == 1
        script.hold.clear()
        assert result(running).finish_reason == "length"
    finally:
        made.backend.stop()


def test_cancel_and_deadline_close_the_stream(made: Made, vllm_stand_in: tuple[str, Script]) -> None:
    _, script = vllm_stand_in
    script.hold.set()  # each stream sends its first piece, then waits
    cancelled, late = row(made.backend), row(made.backend)
    received: list[str] = []
    cancelled.on_text = late.on_text = received.append
    made.backend.submit([cancelled])
    made.backend.submit([late])
    wait_until(lambda: received == ["he", "he"], "the first piece of both rows")
    cancelled.cancel()
    late.deadline = time.monotonic()  # its deadline has passed
    first, second = result(cancelled), result(late)
    assert (first.finish_reason, first.text) == ("cancelled", "he")
    assert (second.finish_reason, second.text) == ("timeout", "he")
    wait_until(lambda: script.closed == 2, "vLLM to see both streams closed")
    assert made.backend.requests_in_flight() == 0


def test_vllm_not_answering_is_fatal(made: Made, vllm_stand_in: tuple[str, Script]) -> None:
    _, script = vllm_stand_in
    script.healthy = False
    wait_until(lambda: made.fatal, "the backend to give up on vLLM")
    assert made.backend.health() is not None
    with pytest.raises(NotReady):
        made.backend.submit([row(made.backend)])
