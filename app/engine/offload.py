"""Work that sends its model forwards through the engine from a worker thread, and stops when nobody waits.

asyncio cannot stop a thread: cancelling ``asyncio.to_thread`` only stops the waiting, and the thread would go
on queuing forwards for an answer no one reads (an analogy or an evaluation whose client went away). The worker
here gets a runner that refuses to queue another forward once its caller was cancelled, so abandoned work leaves
the engine after the forward in progress.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from app.engine.engine import Engine
from app.fv.forward import Runner

R = TypeVar("R")


class Abandoned(Exception):
    """Raised in the worker thread at its next forward once the awaiting request has gone."""


async def on_engine(engine: Engine, work: Callable[[Runner[Any]], R]) -> R:
    """Run ``work(run)`` in a thread, ``run`` sending each forward to the engine; cancelling stops its forwards."""
    abandoned = threading.Event()

    def run(fn: Callable[[], Any]) -> Any:
        if abandoned.is_set():
            raise Abandoned("the request that wanted this forward has gone")
        return engine.call(fn)

    try:
        return await asyncio.to_thread(work, run)
    except asyncio.CancelledError:
        abandoned.set()
        raise
