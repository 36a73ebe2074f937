"""Steered completions: validate, submit the steered (and baseline) rows to the generation backend, await them.

Steering goes to the backend as weights over named bank vectors; the norms in the response are what the backend
reports it added. No torch here: any :class:`~app.engine.backend.GenerationBackend` serves.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from app.engine.backend import GenerationBackend
from app.engine.prompt_encoder import PromptEncoder
from app.engine.requests import BankSteering, GenerationRequest, GenerationResult, SamplingParams
from app.errors import InvalidInput
from app.services.results import Baseline, CompleteResponse, Steering, TextPiece, Usage


@dataclass(frozen=True)
class ChatLine:
    """One turn of a conversation given instead of a prompt."""

    role: str
    content: str


@dataclass(frozen=True)
class CompletionInput:
    prompt: str
    messages: tuple[ChatLine, ...] | None = None
    relations: dict[str, float] = field(default_factory=dict)
    layer: int | None = None
    scale: float = 1.0
    positions: Literal["fv", "all"] = "fv"
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    return_baseline: bool = False


_ids = itertools.count()
T = TypeVar("T")


Event = tuple[str, TextPiece | CompleteResponse]  # (server-sent event name, its data)


@dataclass
class _Prepared:
    spec: CompletionInput
    steering: BankSteering | None
    rows: list[GenerationRequest]


async def await_rows(rows: list[GenerationRequest], futures: list[Future[T]]) -> list[T]:
    """Await the rows' futures; if that is cancelled or one fails (e.g. the baseline waited too long), cancel every
    row so none decodes on for nobody."""
    try:
        return list(await asyncio.gather(*(asyncio.wrap_future(future) for future in futures)))
    except BaseException:
        for row in rows:
            row.cancel()
        raise


class CompletionService:
    def __init__(self, backend: GenerationBackend, prompts: PromptEncoder, *, max_new_tokens: int,
                 timeout_s: float) -> None:
        self.backend = backend
        self.prompts = prompts  # renders a conversation given instead of a prompt
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s

    def _prepare(self, spec: CompletionInput) -> _Prepared:
        """Everything that can refuse the request, done before anything is queued (or a stream is opened)."""
        if spec.max_new_tokens > self.max_new_tokens:
            raise InvalidInput(
                f"max_new_tokens is {spec.max_new_tokens}; the limit is {self.max_new_tokens}", param="max_new_tokens"
            )
        asked = BankSteering.checked(spec.relations, scale=spec.scale, layer=spec.layer, positions=spec.positions)
        self.backend.check_steering(asked)  # a layer the model lacks is refused even without relations
        steering = asked if spec.relations else None
        prompt_ids = self._prompt_ids(spec)
        params = SamplingParams(spec.max_new_tokens, spec.temperature, spec.top_p, spec.seed, spec.stop)
        deadline = time.monotonic() + self.timeout_s
        rows = [GenerationRequest(prompt_ids, params, steering=steering, deadline=deadline)]
        if spec.return_baseline:
            rows.append(GenerationRequest(prompt_ids, params, deadline=deadline))
        return _Prepared(spec, steering, rows)

    def _prompt_ids(self, spec: CompletionInput) -> list[int]:
        if spec.messages is None:
            return self.backend.encode(spec.prompt, spec.max_new_tokens)
        text = self.prompts.render_chat([{"role": turn.role, "content": turn.content} for turn in spec.messages])
        # The template wrote the special tokens itself: encode as inside a sequence, as /v1/chat/completions does.
        return self.prompts.check_ids(self.prompts.tokenize(text), spec.max_new_tokens, param="messages")

    async def complete(self, spec: CompletionInput) -> CompleteResponse:
        """Run one completion request."""
        prepared = self._prepare(spec)
        self.backend.submit(prepared.rows)
        return await self._finish(prepared)

    async def _finish(self, prepared: _Prepared) -> CompleteResponse:
        results = await await_rows(prepared.rows, [row.future for row in prepared.rows])
        return self._response(prepared, results)

    async def stream(self, spec: CompletionInput) -> AsyncIterator[Event]:
        """Validate, queue and wait for a batch slot (errors raise here, before any event), then return the stream:
        ``("token", {"text"})`` per new piece of text, then ``("done", <the POST /complete response>)``."""
        prepared = self._prepare(spec)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        def hand_over(event: str) -> Callable[[str], None]:
            def put(text: str) -> None:  # runs on the engine thread
                loop.call_soon_threadsafe(pieces.put_nowait, (event, text))
            return put

        for row, event in zip(prepared.rows, ("token", "baseline"), strict=False):
            row.on_text = hand_over(event)
        self.backend.submit(prepared.rows)
        # Wait for the batch slot first: a queue-wait 504 is a plain response too, not an error event.
        await await_rows(prepared.rows, [row.admitted for row in prepared.rows])
        return self._events(prepared, pieces)

    async def _events(self, prepared: _Prepared, pieces: asyncio.Queue[tuple[str, str]]) -> AsyncIterator[Event]:
        finished = asyncio.ensure_future(self._finish(prepared))
        getter: asyncio.Future[tuple[str, str]] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(pieces.get())
                await asyncio.wait({getter, finished}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    event, text = getter.result()
                    yield event, TextPiece(text=text)
                    continue
                getter.cancel()
                while not pieces.empty():  # the engine hands over the last piece before the result
                    event, text = pieces.get_nowait()
                    yield event, TextPiece(text=text)
                yield "done", finished.result()
                return
        finally:
            if getter is not None and not getter.done():  # a task left pending would be destroyed so, and say it
                getter.cancel()
            if not finished.done():  # the client went away: free the rows at the engine's next step
                for row in prepared.rows:
                    row.cancel()
                finished.cancel()

    def _response(self, prepared: _Prepared, results: list[GenerationResult]) -> CompleteResponse:
        result = results[0]
        steering = None
        if prepared.steering is not None:
            steering = Steering.of(prepared.steering, result.receipt)
        baseline = None
        if prepared.spec.return_baseline:
            baseline = Baseline(text=results[1].text, finish_reason=results[1].finish_reason)
        return CompleteResponse(
            id=f"cmpl-{secrets.token_hex(6)}{next(_ids)}", model=self.backend.model_name, text=result.text,
            finish_reason=result.finish_reason, steering=steering, baseline=baseline,
            usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        )
