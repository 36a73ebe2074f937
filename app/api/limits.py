"""Body limits as pure ASGI middleware: a body over the size limit gets 413, announced (Content-Length) or
streamed; a body not whole within the body timeout gets 408 (a client sending a byte a second holds a connection
and a handler for as long as it likes otherwise).

The body is counted as the route reads it, not buffered here: an upload goes on to the multipart parser, which
spools it to disk, so no request holds its whole body in memory twice; the read that crosses the limit stops the
route, and whatever it would have answered is replaced by the 413.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
from app.errors import FvsteerError, PayloadTooLarge, RequestTimeout


class BodyRefused(Exception):
    """Raised into the route's body read when a limit is crossed."""


class BodySizeLimit:
    """Refuse bodies over ``limit_for(path)`` bytes, whether announced by Content-Length or streamed, and bodies not
    whole ``timeout_s`` after the request began."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int], timeout_s: float = 60.0) -> None:
        self.app = app
        self.limit_for = limit_for
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(too_large(int(declared), limit))(scope, receive, send)
            return
        size = 0
        exceeded: FvsteerError | None = None  # what replaces the route's answer: 413 or 408
        started = False
        whole = False
        deadline = time.monotonic() + self.timeout_s

        async def counted() -> Message:
            nonlocal size, exceeded, whole
            if whole:
                return await receive()  # after the body: a disconnect, awaited as long as a response streams
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                exceeded = RequestTimeout(f"request body not whole within {self.timeout_s:g} s "
                                          "(FVSTEER_BODY_TIMEOUT_S)", param="body")
                raise BodyRefused from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                whole = not message.get("more_body", False)
                if size > limit:
                    exceeded = too_large(size, limit)
                    raise BodyRefused
            return message

        async def answer(message: Message) -> None:
            nonlocal started
            if exceeded is not None:
                return  # the route's answer to a body cut short: the refusal goes instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, answer)
        except BodyRefused:
            pass
        except Exception:
            if exceeded is None:
                raise
        if exceeded is not None and not started:
            await error_response(exceeded)(scope, receive, send)


def too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body has {size} bytes or more; the limit is {limit}", param="body")
