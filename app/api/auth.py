"""Admin auth: ``Authorization: Bearer <FVSTEER_ADMIN_TOKEN>``, compared in constant time; no token → 403.

:class:`AdminGate` checks it from the headers alone, before any route reads the body: an anonymous upload is
refused at once, not after its last byte, and a malformed admin body answers 401 before 422. The route dependency
:func:`require_admin` checks again (and documents the routes as guarded)."""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.errors import Forbidden, FvsteerError, Unauthorized

ADMIN_PREFIX = "/admin"


def check_admin(expected: str | None, authorization: str) -> None:
    if not expected:
        raise Forbidden("admin routes are disabled: the server has no FVSTEER_ADMIN_TOKEN")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("admin routes need 'Authorization: Bearer <token>'", param="Authorization")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("the admin token is wrong", param="Authorization")


def require_admin(request: Request) -> None:
    """FastAPI dependency guarding every admin route (deny by default)."""
    check_admin(request.app.state.settings.admin_token, request.headers.get("authorization", ""))


class AdminGate:
    """Pure ASGI: every request under ``/admin`` is authenticated before the application sees it."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            try:
                check_admin(self.token, Headers(scope=scope).get("authorization", ""))
            except FvsteerError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)
