"""Typed exceptions, one per HTTP status of the fvsteer error envelope.

Callers branch on the class (``except NotFoundError``) rather than on status codes or message text;
every API error keeps the raw envelope so nothing the server said is lost.
"""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from fvsteer_client.models import Job


class FvsteerClientError(Exception):
    """Base of everything this package raises, so one ``except`` can catch all client failures."""


class APIConnectionError(FvsteerClientError):
    """The server could not be reached or the connection broke before a response arrived."""


class APITimeoutError(APIConnectionError):
    """The client-side timeout ran out; distinct from a server 504, which is a ``GatewayTimeoutError``."""


class APIError(FvsteerClientError):
    """The server answered with a non-2xx status (or a 2xx body this client cannot read).

    ``type``, ``message``, ``param`` and ``code`` are the envelope's fields: ``param`` names the offending field
    (``relations.<name>``, ``continuations``), ``code`` is a finer machine-readable reason where the server gives
    one (OpenAI's ``code``, e.g. ``model_not_found``), else None.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        type: str,
        param: str | None = None,
        code: str | None = None,
        envelope: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status_code} {type}: {message}")
        self.message = message
        self.status_code = status_code
        self.type = type
        self.param = param
        self.code = code
        self.envelope: dict[str, Any] = envelope if envelope is not None else {}


class AuthenticationError(APIError):
    """401: no admin token, or a wrong one."""


class PermissionDeniedError(APIError):
    """403: the server refuses the route (e.g. no admin token is configured on it)."""


class NotFoundError(APIError):
    """404: unknown vector, job or route."""


class ConflictError(APIError):
    """409: the request conflicts with what the server holds: a vector of that name already exists, or analogies
    need fine-tuned vectors the registry lacks (``type`` says which)."""


class PayloadTooLargeError(APIError):
    """413: the request body or upload is over the server's limit."""


class InvalidRequestError(APIError):
    """400/422: the request was understood but its input is invalid; ``param`` names the field."""


class RateLimitError(APIError):
    """429: the server's queue is full; ``retry_after`` is the suggested wait in seconds, when sent."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServiceUnavailableError(APIError):
    """503: the model is still loading (or the server is otherwise not ready)."""


class GatewayTimeoutError(APIError):
    """504: the server gave up waiting for the completion."""


class InternalServerError(APIError):
    """Any other 5xx: a server bug, or steering that could not be applied."""


class APIResponseValidationError(APIError):
    """A 2xx response whose body does not have the shape this client expects (version skew or a proxy)."""


class InvalidPairsError(FvsteerClientError, ValueError):
    """Pairs (a JSON or two-column CSV file, or a Python list) are not ``{"input", "output"}`` pairs.

    Raised before any request: the server never saw them.
    """


class JobFailedError(FvsteerClientError):
    """A job that was waited for ended ``failed``: ``job`` is its final state, ``type``/``message``/``param``/
    ``code`` the server's error for it (``job.error``)."""

    def __init__(self, job: Job) -> None:
        error = job.error or {}
        self.job = job
        self.type = str(error.get("type") or "job_failed")
        self.message = str(error.get("message") or f"job {job.id} failed")
        self.param = _optional_str(error.get("param"))
        self.code = _optional_str(error.get("code"))
        super().__init__(f"job {job.id} failed: {self.type}: {self.message}")


class JobTimeoutError(FvsteerClientError, TimeoutError):
    """``wait_for_job``'s ``timeout`` ran out before the job ended. The job keeps running on the server;
    ``job`` is the last snapshot seen (None if none arrived in time)."""

    def __init__(self, job_id: str, timeout: float, job: Job | None) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.job = job
        where = f" (last seen {job.state}, {job.phase}, {job.progress:.0%})" if job is not None else ""
        super().__init__(f"job {job_id} did not end within {timeout:g} s{where}")


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}

_DEFAULT_TYPE: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_request",
    429: "queue_full",
    503: "not_ready",
    504: "timeout",
}


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _error_class(status: int) -> type[APIError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return InternalServerError if status >= 500 else APIError


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After may be delta-seconds or an HTTP date; both become seconds to wait."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _read_envelope(response: httpx.Response) -> dict[str, Any] | None:
    """The envelope when the body is one, else None (proxies and crashes answer with other bodies)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body
    return None


_STATUS_BY_TYPE: dict[str, int] = {type_: status for status, type_ in _DEFAULT_TYPE.items() if status != 400}


def error_from_envelope(envelope: dict[str, Any]) -> APIError:
    """The typed exception for an envelope that arrived without a status of its own (an SSE ``error`` event).

    The class and ``status_code`` follow the envelope's ``type`` (``not_found`` → ``NotFoundError``, 404);
    a type this client does not know is taken for a server error (500).
    """
    error = envelope.get("error")
    error = error if isinstance(error, dict) else {}
    type_ = str(error.get("type") or "internal_error")
    status = _STATUS_BY_TYPE.get(type_, 500)
    return _error_class(status)(
        str(error.get("message") or type_),
        status_code=status,
        type=type_,
        param=_optional_str(error.get("param")),
        code=_optional_str(error.get("code")),
        envelope=envelope,
    )


def error_from_response(response: httpx.Response) -> APIError:
    """Build the typed exception for a non-2xx response, whatever its body looks like."""
    status = response.status_code
    envelope = _read_envelope(response)
    if envelope is not None:
        error = envelope["error"]
        message = str(error.get("message") or response.reason_phrase or "error")
        type_ = str(error.get("type") or _DEFAULT_TYPE.get(status, "http_error"))
        param = _optional_str(error.get("param"))
        code = _optional_str(error.get("code"))
    else:
        text = response.text.strip()
        message = text[:2000] if text else (response.reason_phrase or f"HTTP {status}")
        type_ = _DEFAULT_TYPE.get(status, "internal_error" if status >= 500 else "http_error")
        param = code = None
    kwargs: dict[str, Any] = {
        "status_code": status,
        "type": type_,
        "param": param,
        "code": code,
        "envelope": envelope if envelope is not None else {},
    }
    cls = _error_class(status)
    if cls is RateLimitError:
        return RateLimitError(message, retry_after=_parse_retry_after(response.headers.get("Retry-After")), **kwargs)
    return cls(message, **kwargs)
