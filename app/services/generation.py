"""The one generation path behind every front: ``/complete`` (and analogies' generated answers), ``/v1/completions``
and ``/v1/chat/completions`` check their steering and token limit here, build their rows here and run or stream them
here; the fronts only translate their wire formats.

Steering is checked once at the front (:meth:`GenerationService.steering`: the limits, the names, the layer) and once
more where a backend takes the vectors (a vector deleted in between fails that row, never runs it unsteered). A
stream is one queue per request fed from the backend's thread: each row's text pieces, then its result, in call
order, merged across the request's rows. No torch here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from app.engine.backend import GenerationBackend
from app.engine.requests import BankSteering, GenerationRequest, GenerationResult, Positions, SamplingParams
from app.errors import InvalidInput

T = TypeVar("T")
RowEvent = tuple[int, str | GenerationResult]  # (row index, a text piece | the row's result)


async def await_rows(rows: Sequence[GenerationRequest], futures: Sequence[Future[T]]) -> list[T]:
    """Await the rows' futures; if that is cancelled or one fails (e.g. the baseline waited too long), cancel every
    row so none decodes on for nobody."""
    try:
        return list(await asyncio.gather(*(asyncio.wrap_future(future) for future in futures)))
    except BaseException:
        for row in rows:
            row.cancel()
        raise


class GenerationService:
    def __init__(self, backend: GenerationBackend, *, max_new_tokens: int, timeout_s: float) -> None:
        self.backend = backend
        self.max_new_tokens = max_new_tokens  # FVSTEER_MAX_NEW_TOKENS
        self.timeout_s = timeout_s  # FVSTEER_REQUEST_TIMEOUT_S: a row past it ends with finish_reason "timeout"

    @property
    def model_name(self) -> str:
        return self.backend.model_name

    def steering(self, relations: Mapping[str, float], *, scale: float = 1.0, layer: int | None = None,
                 positions: Positions = "fv") -> BankSteering | None:
        """The request's steering, refused now if no backend could apply it (a layer the model lacks is refused even
        without relations); None when it adds nothing (no relations)."""
        asked = BankSteering.checked(relations, scale=scale, layer=layer, positions=positions)
        self.backend.check_steering(asked)
        return asked if asked.weights else None

    def check_tokens(self, tokens: int, param: str) -> int:
        if tokens > self.max_new_tokens:
            raise InvalidInput(f"{param} is {tokens}; the limit is {self.max_new_tokens}", param=param)
        return tokens

    def encode(self, prompt: str, max_new_tokens: int) -> list[int]:
        return self.backend.encode(prompt, max_new_tokens)

    def rows(self, requests: Sequence[tuple[list[int], SamplingParams, BankSteering | None]]
             ) -> list[GenerationRequest]:
        """One row per ``(prompt ids, sampling, steering)``, all with the same deadline."""
        deadline = time.monotonic() + self.timeout_s
        return [GenerationRequest(ids, params, steering=steering, deadline=deadline)
                for ids, params, steering in requests]

    async def run(self, rows: list[GenerationRequest]) -> list[GenerationResult]:
        """Queue the rows together and wait for every result."""
        self.backend.submit(rows)
        return await await_rows(rows, [row.future for row in rows])

    async def open_stream(self, rows: list[GenerationRequest]) -> AsyncGenerator[RowEvent]:
        """Queue the rows and wait until all are admitted (refusals and queue-wait timeouts raise here, before any
        event), then return their merged events: ``(i, text)`` pieces, then ``(i, result)`` once row ``i`` ends.
        Closing it (the client went away) cancels the rows still running."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, str | Future[GenerationResult]]] = asyncio.Queue()
        for index, row in enumerate(rows):
            row.on_text = _hand_over(loop, events, index)
            row.future.add_done_callback(_hand_over(loop, events, index))
        self.backend.submit(rows)
        await await_rows(rows, [row.admitted for row in rows])
        return _merged(rows, events)


def _hand_over(loop: asyncio.AbstractEventLoop, events: asyncio.Queue[Any], index: int) -> Callable[[Any], None]:
    """A callback for the backend's thread: hand ``(index, value)`` to the event loop, in call order (the last
    text piece of a row is always handed over before its future's result)."""
    def put(value: Any) -> None:
        loop.call_soon_threadsafe(events.put_nowait, (index, value))

    return put


async def _merged(rows: list[GenerationRequest],
                  events: asyncio.Queue[tuple[int, str | Future[GenerationResult]]]) -> AsyncGenerator[RowEvent]:
    remaining = len(rows)
    try:
        while remaining:
            index, item = await events.get()
            if isinstance(item, str):
                yield index, item
                continue
            remaining -= 1
            yield index, item.result()  # a failed row raises here: the stream ends with an error
    finally:
        for row in rows:  # the client went away, or a row failed: free the others at the backend's next step
            if not row.future.done():
                row.cancel()
