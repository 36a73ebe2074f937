"""The one error table of fvsteer: every failure a user can cause maps to a status and a type here.

Library code (engine, registry, fv) raises these; the API turns them into the envelope
``{"error": {"type", "message", "param", "code"}}`` (OpenAI's error shape, so OpenAI clients read it too) without
knowing where they came from.
"""

from __future__ import annotations


class FvsteerError(Exception):
    """Base of all user-facing errors; ``status`` is the HTTP status the API answers with."""

    status: int = 500
    type: str = "internal_error"
    code: str | None = None  # a finer machine-readable reason where one helps a client (OpenAI's ``code``)

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"type": self.type, "message": self.message, "param": self.param, "code": self.code}}


class InvalidInput(FvsteerError):
    status = 422
    type = "invalid_request"


class Unauthorized(FvsteerError):
    status = 401
    type = "unauthorized"


class Forbidden(FvsteerError):
    status = 403
    type = "forbidden"


class NotFound(FvsteerError):
    status = 404
    type = "not_found"


class ModelNotFound(NotFound):
    """A ``model`` that is neither the base model, a preset, nor ``<base>+<vector>``."""

    code = "model_not_found"


class Conflict(FvsteerError):
    status = 409
    type = "conflict"


class MissingBank(FvsteerError):
    """The request needs vectors the registry does not hold yet (e.g. analogies without a starter bank): the
    server is fine, its state does not allow the request."""

    status = 409
    type = "missing_vectors"


class RequestTimeout(FvsteerError):
    """The client did not send its request in time (a body trickled in)."""

    status = 408
    type = "request_timeout"


class PayloadTooLarge(FvsteerError):
    status = 413
    type = "payload_too_large"


class QueueFull(FvsteerError):
    status = 429
    type = "queue_full"

    def __init__(self, message: str, param: str | None = None, *, retry_after_s: int = 1) -> None:
        super().__init__(message, param)
        self.retry_after_s = retry_after_s  # sent as ``Retry-After``: when a slot is likely to be free


class QuotaExceeded(FvsteerError):
    """Storing this would pass a configured limit (vectors per model); nothing was stored."""

    status = 507
    type = "quota_exceeded"


class NotReady(FvsteerError):
    status = 503
    type = "not_ready"


class GatewayTimeout(FvsteerError):
    status = 504
    type = "timeout"
