"""Every error leaves the server as one envelope: ``{"error": {"type", "message", "param", "code"}}`` — OpenAI's
shape, so the ``openai`` SDK raises its own typed exceptions from fvsteer's answers."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from app.api.schemas import ErrorEnvelope
from app.errors import FvsteerError, QueueFull

log = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": description}
    for status, description in {
        413: "Body too large",
        422: "Invalid input",
        503: "Model not loaded yet",
    }.items()
}
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    401: {"model": ErrorEnvelope, "description": "Missing or wrong bearer token"},
    403: {"model": ErrorEnvelope, "description": "Admin routes disabled (no token configured)"},
}
_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _printable(text: str | None) -> str | None:
    """Input echoed in an error (a name, a field) may hold lone surrogates, which UTF-8 cannot carry: escape them,
    or the error itself would fail to encode and become a 500."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def envelope(status: int, type_: str, message: str, param: str | None = None, code: str | None = None,
             **headers: str) -> JSONResponse:
    body = {"error": {"type": type_, "message": _printable(message), "param": _printable(param), "code": code}}
    return JSONResponse(body, status_code=status, headers=headers or None)


_LOCATIONS = {"body", "query", "path", "header", "form"}
_TYPE_TAGS = {"int", "str", "float", "bool", "list", "dict", "none"}


def _param(location: Any) -> str | None:
    """``("body", "layer", "int")`` → ``"layer"``: drop where it came from and pydantic's union-member tags."""
    parts = [
        str(part) for part in location
        if part not in _LOCATIONS
        and not (isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or part.startswith("constrained-")))
    ]
    return ".".join(parts) or None


async def _fvsteer_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FvsteerError)
    if exc.status >= 500 and exc.status != 503:  # 503 while loading is expected, not an error
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(exc)


def error_response(exc: FvsteerError) -> JSONResponse:
    """The envelope of an fvsteer error, with the headers its status calls for."""
    headers: dict[str, str] = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, QueueFull):
        headers["Retry-After"] = str(exc.retry_after_s)
    if exc.status == 503:
        headers["Retry-After"] = "5"
    return envelope(exc.status, exc.type, exc.message, exc.param, exc.code, **headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    param = _param(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return envelope(422, "invalid_request", f"body is not valid JSON: {first.get('msg')}", "body")
    if first.get("type") == "extra_forbidden":
        return envelope(422, "invalid_request", f"unknown field {param!r}", param)
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return envelope(422, "invalid_request", message, param)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # FastAPI could not decode the body at all (bytes that are not text): invalid input
        return envelope(422, "invalid_request", f"body could not be read as JSON: {exc.detail}", "body")
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
    return envelope(exc.status_code, type_, str(exc.detail), None, None, **(exc.headers or {}))


INTERNAL_ERROR_MESSAGE = "internal error; see the server log"
INTERNAL_ERROR = {"error": {"type": "internal_error", "message": INTERNAL_ERROR_MESSAGE, "param": None, "code": None}}


async def internal_error(send: Send) -> None:
    """The 500 envelope, sent by hand (for middleware that catches a bug before a response has started)."""
    body = json.dumps(INTERNAL_ERROR).encode()
    await send({"type": "http.response.start", "status": 500,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return envelope(500, "internal_error", INTERNAL_ERROR_MESSAGE)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FvsteerError, _fvsteer_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
