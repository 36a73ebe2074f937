"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from app.api.errors import ERROR_RESPONSES
from app.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (it may still be loading the model)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: ERROR_RESPONSES[503]})
def readyz(request: Request) -> Readiness:
    """200 once the model is loaded and warm; 503 before, or if it failed to load."""
    runtime = request.app.state.runtime
    runtime.services()
    cache = runtime.cache_status()
    return Readiness(status="degraded" if cache == "degraded" else "ready", model=runtime.model_name, cache=cache)


def _cache_counts(runtime: Any) -> dict[str, int]:
    stats = runtime.services().cache.stats
    return {"hit": stats.hits, "miss": stats.misses, "error": stats.errors}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> str:
    """Prometheus text format: engine batch sizes, tokens, queue depth."""
    runtime = request.app.state.runtime
    lines = [
        "# HELP fvsteer_ready 1 when the model is loaded and warm.",
        "# TYPE fvsteer_ready gauge",
        f"fvsteer_ready {int(runtime.state == 'ready')}",
    ]
    if runtime.state == "ready":
        stats = runtime.services().engine.stats
        lines += [
            "# HELP fvsteer_decode_steps_total Forward passes of the engine, by number of rows in the batch.",
            "# TYPE fvsteer_decode_steps_total counter",
            *(f'fvsteer_decode_steps_total{{batch_size="{size}"}} {count}'
              for size, count in sorted(stats.batch_sizes.items())),
            "# HELP fvsteer_tokens_generated_total Tokens generated.",
            "# TYPE fvsteer_tokens_generated_total counter",
            f"fvsteer_tokens_generated_total {stats.tokens_generated}",
            "# HELP fvsteer_requests_finished_total Generation rows finished.",
            "# TYPE fvsteer_requests_finished_total counter",
            f"fvsteer_requests_finished_total {stats.requests_finished}",
            "# HELP fvsteer_queue_depth Requests waiting for a batch slot.",
            "# TYPE fvsteer_queue_depth gauge",
            f"fvsteer_queue_depth {stats.queue_depth}",
            "# HELP fvsteer_head_mean_cache_total Head-mean cache lookups by outcome.",
            "# TYPE fvsteer_head_mean_cache_total counter",
            *(f'fvsteer_head_mean_cache_total{{outcome="{outcome}"}} {value}'
              for outcome, value in _cache_counts(runtime).items()),
            "# HELP fvsteer_jobs Jobs by state.",
            "# TYPE fvsteer_jobs gauge",
            *(f'fvsteer_jobs{{state="{state}"}} {count}'
              for state, count in runtime.services().jobs.counts().items()),
            "# HELP fvsteer_active_rows Rows in the running batch.",
            "# TYPE fvsteer_active_rows gauge",
            f"fvsteer_active_rows {stats.active_rows}",
        ]
    return "\n".join(lines) + "\n"
