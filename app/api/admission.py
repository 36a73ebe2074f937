"""A bound on HTTP requests whose model work runs as engine tasks (analogies, evaluation, decoding): completions
are bounded by the engine's queue, these by a count of their own, so a burst of them gets 429 instead of an
unbounded pile of waiting threads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.errors import QueueFull

RETRY_AFTER_S = 2


class Admission:
    """At most ``limit`` requests at once; the next one is refused at once (checked and taken on the event loop)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.active >= self.limit:
            raise QueueFull(f"{self.active} requests are using the model; the limit is {self.limit}",
                            retry_after_s=RETRY_AFTER_S)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
