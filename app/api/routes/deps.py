"""Shared route dependencies."""

from __future__ import annotations

from fastapi import Request

from app.runtime import Services


def services(request: Request) -> Services:
    """The loaded model's services, or 503 while it is loading."""
    return request.app.state.runtime.services()  # type: ignore[no-any-return]
