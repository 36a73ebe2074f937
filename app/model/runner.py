"""The science seam: where a forward of head means, mediation, fine-tuning, evaluation, decoding or analogy scoring
runs. Science code takes a :data:`Runner` and hands it each forward as a callable; the server's runner is the HF
engine's :meth:`~app.engine.engine.Engine.call` (forwards interleaved with decoding on the engine thread), offline
tools run them where they are (:func:`run_here`).

asyncio cannot stop a thread: cancelling ``asyncio.to_thread`` only stops the waiting, and the thread would go on
queuing forwards for an answer no one reads (an analogy or an evaluation whose client went away). :func:`offload`
gives the worker a runner that refuses to queue another forward once its caller was cancelled, so abandoned work
leaves the model after the forward in progress.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:  # the HTTP layer imports offload: no torch for it
    from app.model.handle import ModelHandle

T = TypeVar("T")
R = TypeVar("R")
Runner = Callable[[Callable[[], T]], T]


def run_here(fn: Callable[[], T]) -> T:
    """The default runner: run the forward in the calling thread."""
    return fn()


class ModelRunner(Protocol):
    """What the science needs from whoever owns the HF model: the model, and a way to run a forward on it."""

    @property
    def handle(self) -> ModelHandle: ...

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T: ...


class Abandoned(Exception):
    """Raised in the worker thread at its next forward once the awaiting request has gone."""


async def offload(runner: ModelRunner, work: Callable[[Runner[Any]], R]) -> R:
    """Run ``work(run)`` in a thread, ``run`` sending each forward to ``runner``; cancelling stops its forwards."""
    abandoned = threading.Event()

    def run(fn: Callable[[], Any]) -> Any:
        if abandoned.is_set():
            raise Abandoned("the request that wanted this forward has gone")
        return runner.call(fn)

    try:
        return await asyncio.to_thread(work, run)
    except asyncio.CancelledError:
        abandoned.set()
        raise
