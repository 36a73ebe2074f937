"""Sync and async clients of the fvsteer HTTP API.

Each API operation is described once, as a ``_Call`` (method, path, body, how to parse the answer);
``Client`` and ``AsyncClient`` differ only in how they send it, so the two can never drift apart.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from fvsteer_client.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    error_from_response,
)
from fvsteer_client.models import (
    AdminVectorListing,
    Completion,
    DeletedVector,
    Health,
    Readiness,
    VectorInfo,
    VectorMetadata,
    VectorSummary,
)

__all__ = ["DEFAULT_BASE_URL", "AsyncClient", "Client", "CompletionOptions"]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 120.0
_VERSION = "0.1.0"

T = TypeVar("T")
VectorSource = str | os.PathLike[str] | bytes


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


_COMPLETION_FIELDS = frozenset(CompletionOptions.__optional_keys__)
_VECTOR_LIST = TypeAdapter(list[VectorSummary])


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One HTTP exchange: what to send and how to turn the decoded JSON answer into a model."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    admin: bool = False


def _segment(value: str) -> str:
    """Quote a path segment so a name can never reach another route (``../admin``)."""
    return quote(value, safe="")


def _completion_body(prompt: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The server rejects unknown fields and applies its own defaults, so send only what the caller set."""
    unknown = set(options) - _COMPLETION_FIELDS
    if unknown:
        raise TypeError(f"complete() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    body: dict[str, Any] = {"prompt": prompt}
    for key, value in options.items():
        if value is None:
            continue
        if key == "stop":
            value = [value] if isinstance(value, str) else list(value)
        elif key == "relations":
            value = dict(value)
        body[key] = value
    return body


def _complete_call(prompt: str, options: Mapping[str, Any]) -> _Call[Completion]:
    return _Call("POST", "/complete", Completion.model_validate, json=_completion_body(prompt, options))


def _list_vectors_call() -> _Call[list[VectorSummary]]:
    return _Call("GET", "/vectors", lambda body: _VECTOR_LIST.validate_python(body["vectors"]))


def _get_vector_call(name: str) -> _Call[VectorInfo]:
    return _Call("GET", f"/vectors/{_segment(name)}", VectorInfo.model_validate)


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

    def _request_options(self, call: _Call[Any]) -> dict[str, Any]:
        """Admin calls without a token are still sent: the server's 401/403 says more than a local guess."""
        headers = {}
        if call.admin and self.admin_token:
            headers["Authorization"] = f"Bearer {self.admin_token}"
        return {
            "method": call.method,
            "url": call.path,
            "json": call.json,
            "data": call.data,
            "files": call.files,
            "headers": headers,
        }

    @staticmethod
    def _finish(call: _Call[T], response: httpx.Response) -> T:
        if not response.is_success:
            raise error_from_response(response)
        try:
            return call.parse(response.json())
        except (ValueError, KeyError, TypeError) as exc:  # JSON decode errors and ValidationError are ValueErrors
            detail = str(exc) if isinstance(exc, ValidationError) else repr(exc)
            raise APIResponseValidationError(
                f"unexpected response body from {call.method} {call.path}: {detail}",
                status_code=response.status_code,
                type="invalid_response",
            ) from exc


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

    def complete(self, prompt: str, **options: Unpack[CompletionOptions]) -> Completion:
        """``POST /complete``: steer with ``relations={name: weight}``; no relations means unsteered."""
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

    async def complete(self, prompt: str, **options: Unpack[CompletionOptions]) -> Completion:
        """See ``Client.complete``."""
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
