"""Shared route dependencies."""

from __future__ import annotations

from fastapi import Request

from app.api.admission import Admission
from app.runtime import Services


def services(request: Request) -> Services:
    """The loaded model's services, or 503 while it is loading."""
    return request.app.state.runtime.services()  # type: ignore[no-any-return]


def admission(request: Request) -> Admission:
    """The bound on requests whose model work runs as engine tasks (429 beyond it)."""
    return request.app.state.admission  # type: ignore[no-any-return]
