"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.errors import ERROR_RESPONSES
from app.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (it may still be loading the model)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: ERROR_RESPONSES[503]})
def readyz(request: Request) -> Readiness:
    """200 once the model is loaded and warm (``degraded`` while Redis is configured but not answering, for the
    cache or the registry's sync); 503 while loading, after the model or the engine failed, and while draining for a
    shutdown."""
    runtime = request.app.state.runtime
    runtime.services()
    cache, registry = runtime.cache_status(), runtime.registry_status()
    status = "degraded" if "degraded" in (cache, registry) else "ready"
    return Readiness(status=status, model=runtime.model_name, cache=cache, registry=registry)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
def metrics(request: Request) -> PlainTextResponse:
    """Prometheus: requests by route and status, latency histograms, queue depth, batch sizes, tokens, rows by
    finish reason, head-mean cache hits/misses/errors, jobs by state, readiness."""
    return PlainTextResponse(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
