"""Admin auth: ``Authorization: Bearer <FVSTEER_ADMIN_TOKEN>``, compared in constant time; no token → 403."""

from __future__ import annotations

import hmac

from fastapi import Request

from app.errors import Forbidden, Unauthorized


def require_admin(request: Request) -> None:
    """FastAPI dependency guarding every admin route (deny by default)."""
    expected: str | None = request.app.state.settings.admin_token
    if not expected:
        raise Forbidden("admin routes are disabled: the server has no FVSTEER_ADMIN_TOKEN")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("admin routes need 'Authorization: Bearer <token>'", param="Authorization")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("the admin token is wrong", param="Authorization")
