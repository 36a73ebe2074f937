"""Body-size limit as pure ASGI middleware: a body over the limit gets 413, announced (Content-Length) or streamed.

The body is counted as the route reads it, not buffered here: an upload goes on to the multipart parser, which
spools it to disk, so no request holds its whole body in memory twice; the read that crosses the limit stops the
route, and whatever it would have answered is replaced by the 413.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """Raised into the route's body read when the limit is crossed."""


class BodySizeLimit:
    """Refuse bodies over ``limit_for(path)`` bytes, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, int(declared), limit)
            return
        size = 0
        exceeded = False
        started = False

        async def counted() -> Message:
            nonlocal size, exceeded
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def answer(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the route's answer to a body cut short: the 413 goes instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, answer)
        except BodyTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(send, size, limit)

    @staticmethod
    async def _refuse(send: Send, size: int, limit: int) -> None:
        message = f"request body has {size} bytes or more; the limit is {limit}"
        error = {"type": "payload_too_large", "message": message, "param": "body", "code": None}
        payload = json.dumps({"error": error}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})
