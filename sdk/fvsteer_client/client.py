"""Sync and async clients of the fvsteer HTTP API.

What each route sends and returns is in ``_calls`` and what a stream means is in ``_sse``; the clients here
only move requests and lines, each with one ``_send`` and one streaming loop (``_stream_lines``).
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from contextlib import aclosing, closing, contextmanager
from types import TracebackType
from typing import Any, Generic, Literal, ParamSpec, Self, TypeVar, Unpack, overload

import httpx

from fvsteer_client._calls import (
    _admin_list_call,
    _analogy_call,
    _Call,
    _cancel_job_call,
    _complete_call,
    _contrast_call,
    _decode_call,
    _delete_call,
    _delete_preset_call,
    _evaluate_call,
    _export_call,
    _extract_call,
    _finetune_call,
    _get_job_call,
    _get_vector_call,
    _health_call,
    _list_presets_call,
    _list_vectors_call,
    _parse,
    _put_preset_call,
    _ready_call,
    _score_call,
    _upload_call,
)
from fvsteer_client._sse import _CompletionStream, _JobStream, _LineParser, _Waiter
from fvsteer_client.errors import APIConnectionError, APITimeoutError, error_from_response
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
    Preset,
    Readiness,
    Score,
    VectorInfo,
    VectorMetadata,
    VectorSummary,
)
from fvsteer_client.options import (
    CompletionOptions,
    EvaluateOptions,
    ExtractOptions,
    FinetuneOptions,
    JobRef,
    ProgressCallback,
    VectorSource,
)

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

T = TypeVar("T")
P = ParamSpec("P")
C = TypeVar("C", bound="_BaseClient")


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
    """Configuration and the transport-independent halves of a request: building it and reading the answer.

    Base URL and admin token default to ``FVSTEER_URL`` and ``FVSTEER_ADMIN_TOKEN``; ``timeout`` is in seconds
    (None = no limit), and a stream's reads wait at least ``MIN_STREAM_READ_TIMEOUT_S``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        admin_token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.base_url = (base_url or os.environ.get("FVSTEER_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.admin_token = admin_token if admin_token is not None else os.environ.get("FVSTEER_ADMIN_TOKEN") or None
        self.timeout = timeout
        self._connect()

    def _connect(self) -> None:
        """Create the transport (``_http``) and ``admin``: the only part of construction a flavour has of its own."""
        raise NotImplementedError

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
        return _parse(call, response.status_code, (lambda: response.content) if call.raw else response.json)


class _BaseAdmin(Generic[C]):
    """Admin routes go through the client they belong to (its transport, token and timeouts)."""

    def __init__(self, client: C) -> None:
        self._client = client


class Client(_BaseClient):
    """Blocking client. Base URL and admin token default to ``FVSTEER_URL`` and ``FVSTEER_ADMIN_TOKEN``."""

    def _connect(self) -> None:
        self._http = httpx.Client(**self._http_options())
        self.admin = Admin(self)

    def _send(self, call: _Call[T]) -> T:
        with _transport_errors(self.base_url):
            response = self._http.request(**self._request_options(call))
        return self._finish(call, response)

    def _stream_lines(self, parser: _LineParser[T], read_timeout: float | None) -> Generator[T]:
        """The one streaming loop: open ``parser.call``, feed it every line, yield what it returns, stop at its end.

        A refusal raises before any line is read; a connection that closes early is ``parser.closed``'s to judge.
        """
        options = self._stream_options(parser.call, read_timeout)
        with _transport_errors(self.base_url), self._http.stream(**options) as response:
            if not response.is_success:
                response.read()
                raise error_from_response(response)
            for line in response.iter_lines():
                if (item := parser.feed(line)) is not None:
                    yield item
                if parser.ended:
                    break
        parser.closed()

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
    def complete(self, prompt: str | None = None, *, stream: Literal[False] = False,
                 **options: Unpack[CompletionOptions]) -> Completion: ...

    @overload
    def complete(self, prompt: str | None = None, *, stream: Literal[True],
                 **options: Unpack[CompletionOptions]) -> Iterator[CompletionChunk]: ...

    def complete(self, prompt: str | None = None, *, stream: bool = False,
                 **options: Unpack[CompletionOptions]) -> Completion | Iterator[CompletionChunk]:
        """``POST /complete``: steer with ``relations={name: weight}``; no relations means unsteered.

        ``stream=True`` returns an iterator of ``CompletionChunk`` (pieces of text as they are generated, the last
        one carrying the whole ``Completion``); a refusal raises at the first step, a failure mid-stream raises the
        typed error of the server's ``error`` event.
        """
        if stream:
            return self._stream_lines(_CompletionStream(_complete_call(prompt, options, stream=True)), self.timeout)
        return self._send(_complete_call(prompt, options))

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

    def contrast(self, name: str, pairs: Sequence[tuple[str, str]], *, layer: int,
                 method: Literal["mean_diff", "pca"] = "mean_diff", normalize: Literal["none", "unit"] = "none",
                 template: str | None = None, relation: str | None = None) -> Job:
        """``POST /vectors/contrast``: start a job that saves vector ``name``, the direction separating each pair's
        positive prompt from its negative one at ``layer`` (``template``: each side goes where ``{}`` stands).
        ``job.contrast_result`` has the vector's norm and how many pairs it separates."""
        return self._send(_contrast_call(name, pairs, layer, method, normalize, template, relation))

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

    def score(self, prompt: str, continuations: str | Sequence[str], *,
              relations: Mapping[str, float] | None = None, scale: float = 1.0, layer: int | None = None,
              positions: Literal["fv", "all"] = "fv") -> Score:
        """``POST /score``: ``log p(continuation | prompt)`` of each continuation (1–32; a single string is one),
        steered by ``relations={name: weight}`` as ``complete`` would steer generating it, or unsteered without.

        Each continuation is tokenized on its own and appended to the prompt, so write the leading space where the
        text needs one (``" cold"``). ``score.best`` is the index of the most likely continuation, each
        ``score.scores[i].tokens`` holds the per-token log-probabilities they sum. ``positions="fv"`` adds the
        vector at the prompt's last token and every continuation token, ``"all"`` at every token. Errors:
        ``NotFoundError`` (unknown vector, ``param`` ``relations.<name>``), ``InvalidRequestError`` (too many
        continuations, a layer the model lacks, a prompt over the server's limit).
        """
        return self._send(_score_call(prompt, continuations, relations, scale, layer, positions))

    def decode_vector(self, name: str, k: int = 10) -> DecodedVector:
        """``GET /vectors/{name}/decode``: the ``k`` tokens the vector promotes most (logit lens)."""
        return self._send(_decode_call(name, k))

    def export_vector(self, name: str, format: Literal["gguf", "safetensors"] = "gguf") -> bytes:
        """``GET /vectors/{name}/export``: the vector as a file — a GGUF control vector (llama.cpp's
        ``--control-vector``, repeng) or fvsteer's safetensors file (``admin.upload_vector`` takes it back)."""
        return self._send(_export_call(name, format))

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
        return self._stream_lines(_JobStream(job), self._stream_read_timeout())

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
        snapshots = self._stream_lines(waiter, waiter.read_timeout(self._stream_read_timeout()))
        with waiter.timeouts(), closing(snapshots):
            for snapshot in snapshots:
                if on_progress is not None:
                    on_progress(snapshot)
                waiter.check()
        return waiter.outcome()


class Admin(_BaseAdmin[Client]):
    """Admin routes of a ``Client`` (``client.admin``); they need the admin token."""

    def list_vectors(self) -> AdminVectorListing:
        """``GET /admin/vectors``: full metadata, plus registry files the server refused to load."""
        return self._client._send(_admin_list_call())

    def upload_vector(
        self, path_or_bytes: VectorSource, *, name: str, layer: int | None = None, relation: str | None = None
    ) -> VectorMetadata:
        """``POST /admin/vectors``: a safetensors file holding tensor ``vector`` of shape [d_model] (``layer``
        required), or a GGUF control vector with one ``direction.<layer>`` (its layer is the file's)."""
        return self._client._send(_upload_call(path_or_bytes, name, layer, relation))

    def delete_vector(self, name: str) -> DeletedVector:
        """``DELETE /admin/vectors/{name}``."""
        return self._client._send(_delete_call(name))

    def list_presets(self) -> list[Preset]:
        """``GET /admin/presets``: every steering preset by name, each with ``status`` (``"broken"`` while vectors
        it names, ``missing``, are gone from the registry)."""
        return self._client._send(_list_presets_call())

    def put_preset(self, name: str, relations: Mapping[str, float], *, scale: float = 1.0, layer: int | None = None,
                   positions: Literal["fv", "all"] = "fv", description: str | None = None) -> Preset:
        """``PUT /admin/presets/{name}``: save (or replace, keeping its ``created``) the preset ``name`` — usable as
        a model id — steering with ``relations={vector: weight}``. A replacement takes exactly what is given here.
        Every vector must exist (``NotFoundError``, ``param`` ``relations.<name>``)."""
        return self._client._send(_put_preset_call(name, relations, scale, layer, positions, description))

    def delete_preset(self, name: str) -> DeletedVector:
        """``DELETE /admin/presets/{name}``; the vectors it names stay. ``NotFoundError`` for an unknown preset."""
        return self._client._send(_delete_preset_call(name))


class AsyncClient(_BaseClient):
    """Asyncio twin of ``Client``: the same methods, as coroutines; use ``async with``."""

    def _connect(self) -> None:
        self._http = httpx.AsyncClient(**self._http_options())
        self.admin = AsyncAdmin(self)

    async def _send(self, call: _Call[T]) -> T:
        with _transport_errors(self.base_url):
            response = await self._http.request(**self._request_options(call))
        return self._finish(call, response)

    async def _send_built(self, build: Callable[P, _Call[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Build the call in a worker thread first: building may read a file, which must not block the loop."""
        return await self._send(await asyncio.to_thread(build, *args, **kwargs))

    async def _stream_lines(self, parser: _LineParser[T], read_timeout: float | None) -> AsyncGenerator[T]:
        """See ``Client._stream_lines``."""
        with _transport_errors(self.base_url):
            async with self._http.stream(**self._stream_options(parser.call, read_timeout)) as response:
                if not response.is_success:
                    await response.aread()
                    raise error_from_response(response)
                async for line in response.aiter_lines():
                    if (item := parser.feed(line)) is not None:
                        yield item
                    if parser.ended:
                        break
        parser.closed()

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
    async def complete(self, prompt: str | None = None, *, stream: Literal[False] = False,
                       **options: Unpack[CompletionOptions]) -> Completion: ...

    @overload
    async def complete(self, prompt: str | None = None, *, stream: Literal[True],
                       **options: Unpack[CompletionOptions]) -> AsyncIterator[CompletionChunk]: ...

    async def complete(self, prompt: str | None = None, *, stream: bool = False,
                       **options: Unpack[CompletionOptions]) -> Completion | AsyncIterator[CompletionChunk]:
        """See ``Client.complete``; with ``stream=True`` await it for an async iterator (``async for``)."""
        if stream:
            return self._stream_lines(_CompletionStream(_complete_call(prompt, options, stream=True)), self.timeout)
        return await self._send(_complete_call(prompt, options))

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
        return await self._send_built(_extract_call, name, options)

    async def finetune(self, name: str, **options: Unpack[FinetuneOptions]) -> Job:
        """See ``Client.finetune``; a pairs file is read in a worker thread."""
        return await self._send_built(_finetune_call, name, options)

    async def contrast(self, name: str, pairs: Sequence[tuple[str, str]], *, layer: int,
                       method: Literal["mean_diff", "pca"] = "mean_diff", normalize: Literal["none", "unit"] = "none",
                       template: str | None = None, relation: str | None = None) -> Job:
        """See ``Client.contrast``."""
        return await self._send(_contrast_call(name, pairs, layer, method, normalize, template, relation))

    async def evaluate(self, name: str, **options: Unpack[EvaluateOptions]) -> Evaluation:
        """See ``Client.evaluate``; a pairs file is read in a worker thread."""
        return await self._send_built(_evaluate_call, name, options)

    async def analogy(self, a: str, b: str, c: str, *, choices: Sequence[str] | None = None,
                      max_new_tokens: int | None = None) -> Analogy:
        """See ``Client.analogy``."""
        return await self._send(_analogy_call(a, b, c, choices, max_new_tokens))

    async def score(self, prompt: str, continuations: str | Sequence[str], *,
                    relations: Mapping[str, float] | None = None, scale: float = 1.0, layer: int | None = None,
                    positions: Literal["fv", "all"] = "fv") -> Score:
        """See ``Client.score``."""
        return await self._send(_score_call(prompt, continuations, relations, scale, layer, positions))

    async def decode_vector(self, name: str, k: int = 10) -> DecodedVector:
        """See ``Client.decode_vector``."""
        return await self._send(_decode_call(name, k))

    async def export_vector(self, name: str, format: Literal["gguf", "safetensors"] = "gguf") -> bytes:
        """See ``Client.export_vector``."""
        return await self._send(_export_call(name, format))

    async def get_job(self, job: JobRef) -> Job:
        """See ``Client.get_job``."""
        return await self._send(_get_job_call(job))

    async def cancel_job(self, job: JobRef) -> Job:
        """See ``Client.cancel_job``."""
        return await self._send(_cancel_job_call(job))

    def job_events(self, job: JobRef) -> AsyncIterator[Job]:
        """See ``Client.job_events``; use ``async for``."""
        return self._stream_lines(_JobStream(job), self._stream_read_timeout())

    async def wait_for_job(
        self, job: JobRef, *, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> Job:
        """See ``Client.wait_for_job``; ``on_progress`` may also be a coroutine function."""
        waiter = _Waiter(job, timeout)
        snapshots = self._stream_lines(waiter, waiter.read_timeout(self._stream_read_timeout()))
        with waiter.timeouts():
            async with aclosing(snapshots):
                async for snapshot in snapshots:
                    if on_progress is not None and inspect.isawaitable(returned := on_progress(snapshot)):
                        await returned
                    waiter.check()
        return waiter.outcome()


class AsyncAdmin(_BaseAdmin[AsyncClient]):
    """Admin routes of an ``AsyncClient`` (``client.admin``)."""

    async def list_vectors(self) -> AdminVectorListing:
        """See ``Admin.list_vectors``."""
        return await self._client._send(_admin_list_call())

    async def upload_vector(
        self, path_or_bytes: VectorSource, *, name: str, layer: int | None = None, relation: str | None = None
    ) -> VectorMetadata:
        """See ``Admin.upload_vector``; the file is read in a worker thread so the event loop never blocks on disk."""
        return await self._client._send_built(_upload_call, path_or_bytes, name, layer, relation)

    async def delete_vector(self, name: str) -> DeletedVector:
        """See ``Admin.delete_vector``."""
        return await self._client._send(_delete_call(name))

    async def list_presets(self) -> list[Preset]:
        """See ``Admin.list_presets``."""
        return await self._client._send(_list_presets_call())

    async def put_preset(self, name: str, relations: Mapping[str, float], *, scale: float = 1.0,
                         layer: int | None = None, positions: Literal["fv", "all"] = "fv",
                         description: str | None = None) -> Preset:
        """See ``Admin.put_preset``."""
        return await self._client._send(_put_preset_call(name, relations, scale, layer, positions, description))

    async def delete_preset(self, name: str) -> DeletedVector:
        """See ``Admin.delete_preset``."""
        return await self._client._send(_delete_preset_call(name))
