"""The FastAPI application: routers, error envelope, body limits, and the model loading in the background."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api.admission import Admission
from app.api.auth import AdminGate
from app.api.docs import install_docs
from app.api.errors import install_error_handlers
from app.api.limits import BodySizeLimit
from app.api.metrics import make_registry
from app.api.observability import RequestObservation
from app.api.routes import (
    admin,
    analogies,
    completions,
    health,
    jobs,
    openai,
    playground,
    presets,
    scoring,
    tokenizer,
    vectors,
)
from app.runtime import Runtime
from app.settings import Settings

UPLOAD_PATHS = ("/admin/vectors",)


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    """Build the app; the model starts loading when the app starts (``/readyz`` is 503 until it is warm)."""
    runtime = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            runtime.stop()

    app = FastAPI(
        title="fvsteer",
        version="1",
        summary="Steer language models with function vectors.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app, "fvsteer")
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.admission = Admission(settings.max_queue)
    install_error_handlers(app)
    modules = (health, completions, scoring, analogies, vectors, jobs, admin, presets, openai, tokenizer)
    for module in modules if settings.role != "worker" else (health,):  # a worker: probes and metrics only
        app.include_router(module.router)
    if settings.playground and settings.role != "worker":
        app.include_router(playground.router)

    def limit_for(path: str) -> int:
        return settings.max_upload_bytes if path in UPLOAD_PATHS else settings.max_body_bytes

    app.add_middleware(BodySizeLimit, limit_for=limit_for, timeout_s=settings.body_timeout_s)
    app.add_middleware(AdminGate, token=settings.admin_token)  # outside the size limit: who, before how much
    if settings.cors_origins:  # off unless configured: browsers on other origins get no CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    registry, http_metrics = make_registry(runtime)
    app.state.metrics_registry = registry
    app.add_middleware(RequestObservation, runtime=runtime, metrics=http_metrics)  # outermost: sees every answer
    return app
