"""Stop work nobody waits for: a client that goes away before its answer frees its batch rows at the engine's
next step (cancelling the service call cancels its rows), and the answer is logged as 499."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

from fastapi import Request, Response

CLIENT_CLOSED = 499  # nginx's "client closed request": recorded in the access log and metrics, never seen


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work``; if the client disconnects first, cancel it and answer 499."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # let it cancel its rows before answering
    if task.cancelled():
        return Response(status_code=CLIENT_CLOSED)
    return task.result()
