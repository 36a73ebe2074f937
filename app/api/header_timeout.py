"""uvicorn's HTTP/1.1 protocol (h11) with a header timeout, which uvicorn lacks: a connection that has not sent a
whole request head within ``header_timeout_s`` (from the connection, or from the end of its previous response) is
closed. Without it a client that sends its headers a byte at a time holds a connection for ever. The body has its
own timeout (:class:`app.api.limits.BodySizeLimit`), idle keep-alive connections uvicorn's ``timeout_keep_alive``."""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeoutProtocol(H11Protocol):
    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    @classmethod
    def with_timeout(cls, seconds: float) -> type[HeaderTimeoutProtocol]:
        """The protocol class uvicorn instantiates per connection (``uvicorn.Config(http=...)``)."""
        return type(cls.__name__, (cls,), {"header_timeout_s": seconds})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a whole head arrived (or the connection is done)
            self._disarm()

    def on_response_complete(self) -> None:
        self._arm()  # before uvicorn handles a pipelined request, which disarms it again
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
