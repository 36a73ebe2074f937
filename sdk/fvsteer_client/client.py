"""Sync and async clients of the fvsteer HTTP API.

Each API operation is described once, as a ``_Call`` (method, path, body, how to parse the answer);
``Client`` and ``AsyncClient`` differ only in how they send it, so the two can never drift apart.
Job event streams are read the same way: ``_JobStream`` turns server-sent-event lines into ``Job``
snapshots and ``_Waiter`` decides when waiting is over; the clients only move the lines.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from contextlib import aclosing, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypedDict, TypeVar, Unpack, overload
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from fvsteer_client.errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    JobFailedError,
    JobTimeoutError,
    error_from_envelope,
    error_from_response,
)
from fvsteer_client.models import (
    AdminVectorListing,
    Analogy,
    Completion,
    CompletionChunk,
    DecodedVector,
    DeletedVector,
    Evaluation,
    Health,
    Job,
    Readiness,
    VectorInfo,
    VectorMetadata,
    VectorSummary,
)
from fvsteer_client.pairs import PairsSource, normalize_pairs

__all__ = [
    "DEFAULT_BASE_URL", "AsyncClient", "Client", "CompletionOptions", "EvaluateOptions", "ExtractOptions",
    "FinetuneOptions",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 120.0
_VERSION = "0.1.0"

# The server sends a keep-alive comment on an idle job event stream every 15 s, so one silent this long is dead;
# a client timeout shorter than this (fine for ordinary requests) would cut streams during long phases.
MIN_STREAM_READ_TIMEOUT_S = 60.0
EVENT_STREAM = "text/event-stream"

T = TypeVar("T")
VectorSource = str | os.PathLike[str] | bytes
JobRef = str | Job
"""A job id, or a ``Job`` (its ``id`` is used), wherever a job is named."""
ProgressCallback = Callable[[Job], object]
"""Called with every job snapshot while waiting; an ``AsyncClient`` also awaits what it returns, if awaitable."""


class CompletionOptions(TypedDict, total=False):
    """Optional fields of ``POST /complete``; a field left out (or None) is not sent, so the server default applies."""

    relations: Mapping[str, float] | None
    layer: int | None
    scale: float | None
    positions: Literal["fv", "all"] | None
    max_new_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: str | Sequence[str] | None
    return_baseline: bool | None


class ExtractOptions(TypedDict, total=False):
    """Fields of ``POST /vectors/extract`` besides ``name``: exactly one of ``relation`` (a shipped relation) or
    ``pairs`` (see ``PairsSource``); the rest default on the server (100 prompts, 25 trials, 10 heads,
    ``layer="auto"``, seed 0)."""

    relation: str | None
    pairs: PairsSource | None
    n_prompts: int | None
    n_trials: int | None
    n_heads: int | None
    layer: int | Literal["auto"] | None
    seed: int | None


class FinetuneOptions(TypedDict, total=False):
    """Fields of ``POST /vectors/finetune`` besides ``name``: exactly one of ``relation`` or ``pairs``; ``init`` is
    ``"mediation"`` (default), ``"zero"``, ``"random"`` or ``"vector"`` (with ``init_vector``, a stored vector's
    name); ``layer``, ``epochs``, ``lr``, ``l2`` and ``seed`` default on the server (the tuned values)."""

    relation: str | None
    pairs: PairsSource | None
    init: Literal["mediation", "zero", "random", "vector"] | None
    init_vector: str | None
    layer: int | None
    epochs: int | None
    lr: float | None
    l2: float | None
    seed: int | None


class EvaluateOptions(TypedDict, total=False):
    """Fields of ``POST /vectors/{name}/evaluate``: exactly one of ``relation`` or ``pairs``; ``seed`` and
    ``shots`` (demonstrations per in-context prompt, default 10) are optional."""

    relation: str | None
    pairs: PairsSource | None
    seed: int | None
    shots: int | None


_COMPLETION_FIELDS = frozenset(CompletionOptions.__optional_keys__)
_EXTRACT_FIELDS = frozenset(ExtractOptions.__optional_keys__)
_FINETUNE_FIELDS = frozenset(FinetuneOptions.__optional_keys__)
_EVALUATE_FIELDS = frozenset(EvaluateOptions.__optional_keys__)
_VECTOR_LIST = TypeAdapter(list[VectorSummary])
# How an option's Python value becomes its JSON value; options not listed are sent as they are.
_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "stop": lambda value: [value] if isinstance(value, str) else list(value),
    "relations": dict,
    "pairs": normalize_pairs,  # may read a file: AsyncClient builds these calls in a worker thread
}


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One HTTP exchange: what to send and how to turn the decoded JSON answer into a model."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    params: dict[str, Any] | None = None
    accept: str | None = None
    admin: bool = False


def _segment(value: str) -> str:
    """Quote a path segment so a name can never reach another route (``../admin``)."""
    return quote(value, safe="")


def _job_id(job: JobRef) -> str:
    return job.id if isinstance(job, Job) else job


def _body(method: str, allowed: frozenset[str], options: Mapping[str, Any], **fixed: Any) -> dict[str, Any]:
    """The server rejects unknown fields and applies its own defaults, so send only what the caller set."""
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"{method}() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    body = dict(fixed)
    for key, value in options.items():
        if value is not None:
            body[key] = _CONVERTERS[key](value) if key in _CONVERTERS else value
    return body


def _complete_call(prompt: str, options: Mapping[str, Any], stream: bool = False) -> _Call[Completion]:
    body = _body("complete", _COMPLETION_FIELDS, options, prompt=prompt)
    if stream:
        body["stream"] = True
        return _Call("POST", "/complete", Completion.model_validate, json=body, accept=EVENT_STREAM)
    return _Call("POST", "/complete", Completion.model_validate, json=body)


def _list_vectors_call() -> _Call[list[VectorSummary]]:
    return _Call("GET", "/vectors", lambda body: _VECTOR_LIST.validate_python(body["vectors"]))


def _get_vector_call(name: str) -> _Call[VectorInfo]:
    return _Call("GET", f"/vectors/{_segment(name)}", VectorInfo.model_validate)


def _extract_call(name: str, options: Mapping[str, Any]) -> _Call[Job]:
    body = _body("extract", _EXTRACT_FIELDS, options, name=name)
    return _Call("POST", "/vectors/extract", Job.model_validate, json=body)


def _finetune_call(name: str, options: Mapping[str, Any]) -> _Call[Job]:
    body = _body("finetune", _FINETUNE_FIELDS, options, name=name)
    return _Call("POST", "/vectors/finetune", Job.model_validate, json=body)


def _evaluate_call(name: str, options: Mapping[str, Any]) -> _Call[Evaluation]:
    body = _body("evaluate", _EVALUATE_FIELDS, options)
    return _Call("POST", f"/vectors/{_segment(name)}/evaluate", Evaluation.model_validate, json=body)


def _analogy_call(a: str, b: str, c: str, choices: Sequence[str] | None, max_new_tokens: int | None) -> _Call[Analogy]:
    body: dict[str, Any] = {"a": a, "b": b, "c": c}
    if choices is not None:
        body["choices"] = list(choices)
    if max_new_tokens is not None:
        body["max_new_tokens"] = max_new_tokens
    return _Call("POST", "/analogies", Analogy.model_validate, json=body)


def _decode_call(name: str, k: int) -> _Call[DecodedVector]:
    return _Call("GET", f"/vectors/{_segment(name)}/decode", DecodedVector.model_validate, params={"k": int(k)})


def _get_job_call(job: JobRef) -> _Call[Job]:
    return _Call("GET", f"/jobs/{_segment(_job_id(job))}", Job.model_validate)


def _cancel_job_call(job: JobRef) -> _Call[Job]:
    return _Call("DELETE", f"/jobs/{_segment(_job_id(job))}", Job.model_validate)


def _job_events_call(job: JobRef) -> _Call[Job]:
    """``parse`` applies to each event's data, not to the (streamed) body as a whole."""
    return _Call("GET", f"/jobs/{_segment(_job_id(job))}/events", Job.model_validate, accept=EVENT_STREAM)


def _health_call() -> _Call[Health]:
    return _Call("GET", "/healthz", Health.model_validate)


def _ready_call() -> _Call[Readiness]:
    return _Call("GET", "/readyz", Readiness.model_validate)


def _admin_list_call() -> _Call[AdminVectorListing]:
    return _Call("GET", "/admin/vectors", AdminVectorListing.model_validate, admin=True)


def _upload_call(source: VectorSource, name: str, layer: int, relation: str | None) -> _Call[VectorMetadata]:
    """Read the file up front: uploads are small (one [d_model] tensor) and a bytes body can be retried."""
    if isinstance(source, bytes):
        filename, content = f"{name}.safetensors", source
    else:
        path = Path(source)
        filename, content = path.name, path.read_bytes()
    data = {"name": name, "layer": str(int(layer))}
    if relation is not None:
        data["relation"] = relation
    files = {"file": (filename, content, "application/octet-stream")}
    return _Call("POST", "/admin/vectors", VectorMetadata.model_validate, data=data, files=files, admin=True)


def _delete_call(name: str) -> _Call[DeletedVector]:
    return _Call("DELETE", f"/admin/vectors/{_segment(name)}", DeletedVector.model_validate, admin=True)


def _parse(call: _Call[T], status_code: int, load: Callable[[], Any]) -> T:
    """``call.parse`` of the decoded JSON; a body of the wrong shape is the server's (or a proxy's) fault."""
    try:
        return call.parse(load())
    except (ValueError, KeyError, TypeError) as exc:  # JSON decode errors and ValidationError are ValueErrors
        detail = str(exc) if isinstance(exc, ValidationError) else repr(exc)
        raise APIResponseValidationError(
            f"unexpected response body from {call.method} {call.path}: {detail}",
            status_code=status_code,
            type="invalid_response",
        ) from exc


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


class _CompletionStream:
    """A streamed ``POST /complete`` as chunks: ``token`` events, then ``done``; ``error`` raises the typed error."""

    def __init__(self, call: _Call[Completion]) -> None:
        self.call = call
        self.ended = False
        self._decoder = _EventDecoder()

    def feed(self, line: str) -> CompletionChunk | None:
        event = self._decoder.feed(line)
        if event is None:
            return None
        if event.name == "error":
            raise _event_error(event)
        if event.name == "token":
            return _parse(_Call("POST", self.call.path, CompletionChunk.model_validate), 200,
                          lambda: json.loads(event.data))
        if event.name == "done":
            self.ended = True
            return CompletionChunk(text="", completion=_parse(self.call, 200, lambda: json.loads(event.data)))
        return None

    def closed(self) -> None:
        if not self.ended:
            raise APIConnectionError("the completion stream closed before its 'done' event")


class _JobStream:
    """``GET /jobs/{id}/events`` as Job snapshots: ``progress`` events, then one ``end`` with the final job.

    ``feed`` returns the snapshot a line completes, or None (partial events, keep-alive comments, event
    types this client does not know). An ``error`` event raises the typed error its envelope describes.
    """

    def __init__(self, call: _Call[Job]) -> None:
        self.call = call
        self.ended = False
        self._decoder = _EventDecoder()

    def feed(self, line: str) -> Job | None:
        event = self._decoder.feed(line)
        if event is None:
            return None
        if event.name == "error":
            raise _event_error(event)
        if event.name not in ("progress", "end"):
            return None
        job = _parse(self.call, 200, lambda: json.loads(event.data))
        self.ended = event.name == "end"
        return job

    def closed(self) -> None:
        """The connection closed: fine after ``end``, a broken stream before it."""
        if not self.ended:
            raise APIConnectionError(f"the event stream {self.call.path} closed before the job ended")


class _Waiter:
    """What ``wait_for_job`` decides, for both clients: the deadline, and how the wait ends.

    The deadline is checked at every line of the stream; the server sends a line at least every 15 s (a
    keep-alive when nothing changes) and each read waits at most the time left, so a wait overruns its
    ``timeout`` by less than that.
    """

    def __init__(self, job: JobRef, timeout: float | None) -> None:
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

    def _expired(self) -> JobTimeoutError:
        return JobTimeoutError(self.job_id, self.timeout or 0.0, self.last)

    def check(self, job: Job | None) -> None:
        """After each line (``job`` is the snapshot it completed, if any): raise once the time is up."""
        if job is not None:
            self.last = job
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


@contextmanager
def _transport_errors(base_url: str) -> Iterator[None]:
    """Turn httpx's transport exceptions into this package's, so callers need not import httpx."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise APITimeoutError(f"request to {base_url} timed out: {exc}") from exc
    except httpx.TransportError as exc:
        raise APIConnectionError(f"could not reach {base_url}: {exc}") from exc


class _BaseClient:
    """Configuration and the transport-independent halves of a request: building it and reading the answer."""

    def __init__(self, base_url: str | None, admin_token: str | None, timeout: float | None) -> None:
        self.base_url = (base_url or os.environ.get("FVSTEER_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.admin_token = admin_token if admin_token is not None else os.environ.get("FVSTEER_ADMIN_TOKEN") or None
        self.timeout = timeout

    def _http_options(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "timeout": self.timeout,
            "headers": {"User-Agent": f"fvsteer-client/{_VERSION}", "Accept": "application/json"},
        }

    def _stream_read_timeout(self) -> float | None:
        return None if self.timeout is None else max(self.timeout, MIN_STREAM_READ_TIMEOUT_S)

    def _stream_options(self, call: _Call[Any], read_timeout: float | None) -> dict[str, Any]:
        return self._request_options(call, httpx.Timeout(self.timeout, read=read_timeout))

    def _request_options(self, call: _Call[Any], timeout: httpx.Timeout | None = None) -> dict[str, Any]:
        """Admin calls without a token are still sent: the server's 401/403 says more than a local guess.

        ``timeout`` (streams) replaces the client's.
        """
        headers = {}
        if call.admin and self.admin_token:
            headers["Authorization"] = f"Bearer {self.admin_token}"
        if call.accept is not None:
            headers["Accept"] = call.accept
        options: dict[str, Any] = {
            "method": call.method,
            "url": call.path,
            "json": call.json,
            "data": call.data,
            "files": call.files,
            "params": call.params,
            "headers": headers,
        }
        if timeout is not None:
            options["timeout"] = timeout
        return options

    @staticmethod
    def _finish(call: _Call[T], response: httpx.Response) -> T:
        if not response.is_success:
            raise error_from_response(response)
        return _parse(call, response.status_code, response.json)


class Client(_BaseClient):
    """Blocking client. Base URL and admin token default to ``FVSTEER_URL`` and ``FVSTEER_ADMIN_TOKEN``."""

    def __init__(
        self,
        base_url: str | None = None,
        admin_token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(base_url, admin_token, timeout)
        self._http = httpx.Client(**self._http_options())
        self.admin = Admin(self)

    def _send(self, call: _Call[T]) -> T:
        with _transport_errors(self.base_url):
            response = self._http.request(**self._request_options(call))
        return self._finish(call, response)

    def close(self) -> None:
        """Release pooled connections."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @overload
    def complete(self, prompt: str, *, stream: Literal[False] = False,
                 **options: Unpack[CompletionOptions]) -> Completion: ...

    @overload
    def complete(self, prompt: str, *, stream: Literal[True],
                 **options: Unpack[CompletionOptions]) -> Iterator[CompletionChunk]: ...

    def complete(self, prompt: str, *, stream: bool = False,
                 **options: Unpack[CompletionOptions]) -> Completion | Iterator[CompletionChunk]:
        """``POST /complete``: steer with ``relations={name: weight}``; no relations means unsteered.

        ``stream=True`` returns an iterator of ``CompletionChunk`` (pieces of text as they are generated, the last
        one carrying the whole ``Completion``); a refusal raises at the first step, a failure mid-stream raises the
        typed error of the server's ``error`` event.
        """
        if stream:
            return self._stream_completion(_complete_call(prompt, options, stream=True))
        return self._send(_complete_call(prompt, options))

    def _stream_completion(self, call: _Call[Completion]) -> Iterator[CompletionChunk]:
        stream = _CompletionStream(call)
        with _transport_errors(self.base_url), self._http.stream(**self._stream_options(call, self.timeout)) as r:
            if not r.is_success:
                r.read()
                raise error_from_response(r)
            for line in r.iter_lines():
                chunk = stream.feed(line)
                if chunk is not None:
                    yield chunk
                if stream.ended:
                    return
        stream.closed()

    def list_vectors(self) -> list[VectorSummary]:
        """``GET /vectors``: the vectors usable as ``relations`` for the loaded model."""
        return self._send(_list_vectors_call())

    def get_vector(self, name: str) -> VectorInfo:
        """``GET /vectors/{name}``; raises ``NotFoundError`` for an unknown name."""
        return self._send(_get_vector_call(name))

    def health(self) -> Health:
        """``GET /healthz``: the process is up (the model may still be loading)."""
        return self._send(_health_call())

    def ready(self) -> Readiness:
        """``GET /readyz``: raises ``ServiceUnavailableError`` until the model is loaded and warm."""
        return self._send(_ready_call())

    def extract(self, name: str, **options: Unpack[ExtractOptions]) -> Job:
        """``POST /vectors/extract``: start a causal-mediation extraction that saves vector ``name``; returns the job.

        Give ``relation=`` (a shipped relation) or ``pairs=`` (a JSON/CSV file path, ``{"input", "output"}``
        dicts, or ``(input, output)`` tuples; files are read here). Errors the server can see at once come
        back at once (``InvalidRequestError`` for too few pairs, ``NotFoundError`` for an unknown relation,
        ``ConflictError`` for a taken name); follow the job with ``wait_for_job`` or ``job_events``.
        """
        return self._send(_extract_call(name, options))

    def finetune(self, name: str, **options: Unpack[FinetuneOptions]) -> Job:
        """``POST /vectors/finetune``: start a job that trains vector ``name`` on pairs with the model frozen.

        ``job.detail`` carries each epoch's ``loss`` and ``holdout_top1``; the result's ``metrics`` hold hold-out
        accuracy before and after and 10-shot prompting on the same pairs. Errors as for ``extract``.
        """
        return self._send(_finetune_call(name, options))

    def evaluate(self, name: str, **options: Unpack[EvaluateOptions]) -> Evaluation:
        """``POST /vectors/{name}/evaluate``: accuracy without/with the vector, zero-shot and in context.

        ``relation=`` or ``pairs=`` as for ``extract``; when they are the vector's own dataset its held-out
        split is used, otherwise every pair is a test item.
        """
        return self._send(_evaluate_call(name, options))

    def analogy(self, a: str, b: str, c: str, *, choices: Sequence[str] | None = None,
                max_new_tokens: int | None = None) -> Analogy:
        """``POST /analogies``: solve ``a : b :: c : ?`` with the composite the pair a:b implies over the server's
        bank; with ``choices`` the best-scoring one is the answer, else it is generated."""
        return self._send(_analogy_call(a, b, c, choices, max_new_tokens))

    def decode_vector(self, name: str, k: int = 10) -> DecodedVector:
        """``GET /vectors/{name}/decode``: the ``k`` tokens the vector promotes most (logit lens)."""
        return self._send(_decode_call(name, k))

    def get_job(self, job: JobRef) -> Job:
        """``GET /jobs/{id}``: the job's current state; ``NotFoundError`` for an unknown id."""
        return self._send(_get_job_call(job))

    def cancel_job(self, job: JobRef) -> Job:
        """``DELETE /jobs/{id}``: ask the job to stop. A running job ends ``cancelled`` at its next step (the
        snapshot returned may still say ``running``) and saves nothing; a finished job is returned unchanged."""
        return self._send(_cancel_job_call(job))

    def job_events(self, job: JobRef) -> Iterator[Job]:
        """``GET /jobs/{id}/events``: a snapshot of the job at every change, the last one final (``job.done``).

        The first snapshot is the job as it is when the stream opens; the iterator ends after the final
        one. Nothing is sent until iteration starts, so errors (``NotFoundError``) surface at the first step.
        """
        with closing(self._job_lines(job, self._stream_read_timeout())) as lines:
            for job_snapshot in lines:
                if job_snapshot is not None:
                    yield job_snapshot

    def wait_for_job(
        self, job: JobRef, *, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> Job:
        """Follow the job's event stream until it ends; return the final job.

        A ``succeeded`` job is returned, and so is a ``cancelled`` one (cancelling is something a caller does,
        not a failure; check ``job.state``). A ``failed`` job raises ``JobFailedError`` (``.job``, ``.type``,
        ``.message``). ``timeout`` (seconds, None = no limit) raises ``JobTimeoutError`` when it runs out; the
        job keeps running on the server. ``on_progress`` is called with every snapshot, the final one included.
        """
        waiter = _Waiter(job, timeout)
        read_timeout = waiter.read_timeout(self._stream_read_timeout())
        with waiter.timeouts(), closing(self._job_lines(job, read_timeout)) as lines:
            for job_snapshot in lines:
                if job_snapshot is not None and on_progress is not None:
                    on_progress(job_snapshot)
                waiter.check(job_snapshot)
        return waiter.outcome()

    def _job_lines(self, job: JobRef, read_timeout: float | None) -> Generator[Job | None]:
        """The event stream, one item per line: the snapshot the line completed, or None."""
        call = _job_events_call(job)
        stream = _JobStream(call)
        with _transport_errors(self.base_url), self._http.stream(**self._stream_options(call, read_timeout)) as r:
            if not r.is_success:
                r.read()
                raise error_from_response(r)
            for line in r.iter_lines():
                job_snapshot = stream.feed(line)
                yield job_snapshot
                if stream.ended:
                    return
        stream.closed()


class Admin:
    """Admin routes of a ``Client`` (``client.admin``); they need the admin token."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list_vectors(self) -> AdminVectorListing:
        """``GET /admin/vectors``: full metadata, plus registry files the server refused to load."""
        return self._client._send(_admin_list_call())

    def upload_vector(
        self, path_or_bytes: VectorSource, *, name: str, layer: int, relation: str | None = None
    ) -> VectorMetadata:
        """``POST /admin/vectors``: a safetensors file holding tensor ``vector`` of shape [d_model]."""
        return self._client._send(_upload_call(path_or_bytes, name, layer, relation))

    def delete_vector(self, name: str) -> DeletedVector:
        """``DELETE /admin/vectors/{name}``."""
        return self._client._send(_delete_call(name))


class AsyncClient(_BaseClient):
    """Asyncio twin of ``Client``: the same methods, as coroutines; use ``async with``."""

    def __init__(
        self,
        base_url: str | None = None,
        admin_token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(base_url, admin_token, timeout)
        self._http = httpx.AsyncClient(**self._http_options())
        self.admin = AsyncAdmin(self)

    async def _send(self, call: _Call[T]) -> T:
        with _transport_errors(self.base_url):
            response = await self._http.request(**self._request_options(call))
        return self._finish(call, response)

    async def aclose(self) -> None:
        """Release pooled connections."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @overload
    async def complete(self, prompt: str, *, stream: Literal[False] = False,
                       **options: Unpack[CompletionOptions]) -> Completion: ...

    @overload
    async def complete(self, prompt: str, *, stream: Literal[True],
                       **options: Unpack[CompletionOptions]) -> AsyncIterator[CompletionChunk]: ...

    async def complete(self, prompt: str, *, stream: bool = False,
                       **options: Unpack[CompletionOptions]) -> Completion | AsyncIterator[CompletionChunk]:
        """See ``Client.complete``; with ``stream=True`` await it for an async iterator (``async for``)."""
        if stream:
            return self._stream_completion(_complete_call(prompt, options, stream=True))
        return await self._send(_complete_call(prompt, options))

    async def _stream_completion(self, call: _Call[Completion]) -> AsyncIterator[CompletionChunk]:
        stream = _CompletionStream(call)
        with _transport_errors(self.base_url):
            async with self._http.stream(**self._stream_options(call, self.timeout)) as r:
                if not r.is_success:
                    await r.aread()
                    raise error_from_response(r)
                async for line in r.aiter_lines():
                    chunk = stream.feed(line)
                    if chunk is not None:
                        yield chunk
                    if stream.ended:
                        return
        stream.closed()

    async def list_vectors(self) -> list[VectorSummary]:
        """See ``Client.list_vectors``."""
        return await self._send(_list_vectors_call())

    async def get_vector(self, name: str) -> VectorInfo:
        """See ``Client.get_vector``."""
        return await self._send(_get_vector_call(name))

    async def health(self) -> Health:
        """See ``Client.health``."""
        return await self._send(_health_call())

    async def ready(self) -> Readiness:
        """See ``Client.ready``."""
        return await self._send(_ready_call())

    async def extract(self, name: str, **options: Unpack[ExtractOptions]) -> Job:
        """See ``Client.extract``; a pairs file is read in a worker thread."""
        call = await asyncio.to_thread(_extract_call, name, options)
        return await self._send(call)

    async def finetune(self, name: str, **options: Unpack[FinetuneOptions]) -> Job:
        """See ``Client.finetune``; a pairs file is read in a worker thread."""
        call = await asyncio.to_thread(_finetune_call, name, options)
        return await self._send(call)

    async def evaluate(self, name: str, **options: Unpack[EvaluateOptions]) -> Evaluation:
        """See ``Client.evaluate``; a pairs file is read in a worker thread."""
        call = await asyncio.to_thread(_evaluate_call, name, options)
        return await self._send(call)

    async def analogy(self, a: str, b: str, c: str, *, choices: Sequence[str] | None = None,
                      max_new_tokens: int | None = None) -> Analogy:
        """See ``Client.analogy``."""
        return await self._send(_analogy_call(a, b, c, choices, max_new_tokens))

    async def decode_vector(self, name: str, k: int = 10) -> DecodedVector:
        """See ``Client.decode_vector``."""
        return await self._send(_decode_call(name, k))

    async def get_job(self, job: JobRef) -> Job:
        """See ``Client.get_job``."""
        return await self._send(_get_job_call(job))

    async def cancel_job(self, job: JobRef) -> Job:
        """See ``Client.cancel_job``."""
        return await self._send(_cancel_job_call(job))

    async def job_events(self, job: JobRef) -> AsyncIterator[Job]:
        """See ``Client.job_events``; use ``async for``."""
        async with aclosing(self._job_lines(job, self._stream_read_timeout())) as lines:
            async for job_snapshot in lines:
                if job_snapshot is not None:
                    yield job_snapshot

    async def wait_for_job(
        self, job: JobRef, *, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> Job:
        """See ``Client.wait_for_job``; ``on_progress`` may also be a coroutine function."""
        waiter = _Waiter(job, timeout)
        read_timeout = waiter.read_timeout(self._stream_read_timeout())
        with waiter.timeouts():
            async with aclosing(self._job_lines(job, read_timeout)) as lines:
                async for job_snapshot in lines:
                    if job_snapshot is not None and on_progress is not None:
                        returned = on_progress(job_snapshot)
                        if inspect.isawaitable(returned):
                            await returned
                    waiter.check(job_snapshot)
        return waiter.outcome()

    async def _job_lines(self, job: JobRef, read_timeout: float | None) -> AsyncGenerator[Job | None]:
        """See ``Client._job_lines``."""
        call = _job_events_call(job)
        stream = _JobStream(call)
        with _transport_errors(self.base_url):
            async with self._http.stream(**self._stream_options(call, read_timeout)) as r:
                if not r.is_success:
                    await r.aread()
                    raise error_from_response(r)
                async for line in r.aiter_lines():
                    job_snapshot = stream.feed(line)
                    yield job_snapshot
                    if stream.ended:
                        return
        stream.closed()


class AsyncAdmin:
    """Admin routes of an ``AsyncClient`` (``client.admin``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list_vectors(self) -> AdminVectorListing:
        """See ``Admin.list_vectors``."""
        return await self._client._send(_admin_list_call())

    async def upload_vector(
        self, path_or_bytes: VectorSource, *, name: str, layer: int, relation: str | None = None
    ) -> VectorMetadata:
        """See ``Admin.upload_vector``; the file is read in a worker thread so the event loop never blocks on disk."""
        call = await asyncio.to_thread(_upload_call, path_or_bytes, name, layer, relation)
        return await self._client._send(call)

    async def delete_vector(self, name: str) -> DeletedVector:
        """See ``Admin.delete_vector``."""
        return await self._client._send(_delete_call(name))
