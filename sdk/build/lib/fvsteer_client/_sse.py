"""Server-sent-event streams as line parsers, and the rules of waiting for a job.

A client's one streaming loop opens ``parser.call``, feeds the parser every line of the answer, yields what it
returns and stops at ``parser.ended``; everything a stream means (which events count, what ends it, what an
``error`` event raises, when a wait times out) lives here, shared by ``Client`` and ``AsyncClient``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from fvsteer_client._calls import _Call, _job_events_call, _job_id, _parse
from fvsteer_client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    JobFailedError,
    JobTimeoutError,
    error_from_envelope,
)
from fvsteer_client.models import Completion, CompletionChunk, Job
from fvsteer_client.options import JobRef

T_co = TypeVar("T_co", covariant=True)
R = TypeVar("R")
T = TypeVar("T")


class _LineParser(Protocol[T_co]):
    """What the streaming loop drives; ``feed`` may raise (an ``error`` event), which ends the stream."""

    @property
    def call(self) -> _Call[Any]:
        """The request that opens the stream."""
        ...

    @property
    def ended(self) -> bool:
        """The stream's last event has been seen: stop reading."""
        ...

    def feed(self, line: str) -> T_co | None:
        """The item this line completes, if any."""
        ...

    def closed(self) -> None:
        """The connection closed: raise if that was before ``ended``."""
        ...


@dataclass(frozen=True)
class _Event:
    name: str
    data: str


class _EventDecoder:
    """Server-sent events, fed line by line: ``event:`` and ``data:`` fields, ``:`` comments, a blank line ends one."""

    def __init__(self) -> None:
        self._name = ""
        self._data: list[str] = []

    def feed(self, line: str) -> _Event | None:
        if not line:
            event = _Event(self._name or "message", "\n".join(self._data)) if self._data else None
            self._name, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
        return None


def _event_error(event: _Event) -> APIError:
    """The typed error an ``error`` event's envelope describes (a garbled one still gives an ``APIError``)."""
    try:
        envelope = json.loads(event.data)
    except ValueError:
        envelope = {}
    return error_from_envelope(envelope if isinstance(envelope, dict) else {})


class _EventStream(Generic[R, T]):
    """What both event streams share: decoding, ``error`` events raising the typed error, parsing event data.

    ``R`` is what ``call.parse`` makes of an event's data, ``T`` what the stream yields.
    """

    def __init__(self, call: _Call[R]) -> None:
        self.call = call
        self.ended = False
        self._decoder = _EventDecoder()

    def feed(self, line: str) -> T | None:
        event = self._decoder.feed(line)
        if event is None:
            return None
        if event.name == "error":
            raise _event_error(event)
        return self._on_event(event)

    def _on_event(self, event: _Event) -> T | None:
        """The item a complete, non-error event gives (None for events to skip); may set ``ended``."""
        raise NotImplementedError

    def _data(self, event: _Event) -> R:
        return _parse(self.call, 200, lambda: json.loads(event.data))


class _CompletionStream(_EventStream[Completion, CompletionChunk]):
    """A streamed ``POST /complete`` as chunks: ``token`` events, then ``done`` with the whole completion."""

    def _on_event(self, event: _Event) -> CompletionChunk | None:
        if event.name == "token":
            return _parse(_Call("POST", self.call.path, CompletionChunk.model_validate), 200,
                          lambda: json.loads(event.data))
        if event.name == "done":
            self.ended = True
            return CompletionChunk(text="", completion=self._data(event))
        return None

    def closed(self) -> None:
        if not self.ended:
            raise APIConnectionError("the completion stream closed before its 'done' event")


class _JobStream(_EventStream[Job, Job]):
    """``GET /jobs/{id}/events`` as Job snapshots: ``progress`` events, then one ``end`` with the final job.

    ``feed`` returns the snapshot a line completes, or None (partial events, keep-alive comments, event
    types this client does not know).
    """

    def __init__(self, job: JobRef) -> None:
        super().__init__(_job_events_call(job))

    def _on_event(self, event: _Event) -> Job | None:
        if event.name not in ("progress", "end"):
            return None
        job = self._data(event)
        self.ended = event.name == "end"
        return job

    def closed(self) -> None:
        """The connection closed: fine after ``end``, a broken stream before it."""
        if not self.ended:
            raise APIConnectionError(f"the event stream {self.call.path} closed before the job ended")


class _Waiter(_JobStream):
    """``wait_for_job``'s parser: the job's events, plus the deadline and how the wait ends.

    The deadline is checked at every line of the stream: here for lines that complete no snapshot (a
    keep-alive), by the caller (``check``) after it has reported a snapshot. The server sends a line at least
    every 15 s and each read waits at most the time left, so a wait overruns its ``timeout`` by less than that.
    """

    def __init__(self, job: JobRef, timeout: float | None) -> None:
        super().__init__(job)
        self.job_id = _job_id(job)
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        self.last: Job | None = None
        self._read_until_deadline = False

    def read_timeout(self, base: float | None) -> float | None:
        """How long one read of the stream may wait (``base``, None = no limit), but never past the deadline."""
        if self.deadline is None:
            return base
        left = self.deadline - time.monotonic()
        self._read_until_deadline = base is None or left < base
        return max(0.001, left) if self._read_until_deadline else base

    def feed(self, line: str) -> Job | None:
        job = super().feed(line)
        if job is None:
            self.check()
        else:
            self.last = job
        return job

    def _expired(self) -> JobTimeoutError:
        return JobTimeoutError(self.job_id, self.timeout or 0.0, self.last)

    def check(self) -> None:
        """Raise once the time is up, unless the job has ended."""
        done = self.last is not None and self.last.done
        if not done and self.deadline is not None and time.monotonic() >= self.deadline:
            raise self._expired()

    @contextmanager
    def timeouts(self) -> Iterator[None]:
        """A read that timed out because the deadline came is the wait's timeout, not a network failure."""
        try:
            yield
        except APITimeoutError as exc:
            if self._read_until_deadline:
                raise self._expired() from exc
            raise

    def outcome(self) -> Job:
        job = self.last
        if job is None or not job.done:  # unreachable: _JobStream raises when the stream ends early
            raise APIConnectionError(f"the event stream of {self.job_id} ended before the job did")
        if job.state == "failed":
            raise JobFailedError(job)
        return job
