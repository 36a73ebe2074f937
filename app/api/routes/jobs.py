"""Jobs: progress, server-sent progress events, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from app.api.errors import ERROR_RESPONSES
from app.api.routes.deps import services
from app.api.schemas import ErrorEnvelope, JobView
from app.jobs.manager import TERMINAL
from app.runtime import Services

router = APIRouter(prefix="/jobs", tags=["jobs"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorEnvelope, "description": "Unknown job"}}
HEARTBEAT_S = 15.0
POLL_S = 0.2


@router.get("/{job_id}", response_model=JobView, responses={**ERROR_RESPONSES, **NOT_FOUND})
def get_job(job_id: str, svc: Services = Depends(services)) -> JobView:
    """State, phase, fraction done, and the result or error."""
    return JobView.of(svc.jobs.get(job_id).public())


@router.delete("/{job_id}", response_model=JobView, responses={**ERROR_RESPONSES, **NOT_FOUND})
def cancel_job(job_id: str, svc: Services = Depends(services)) -> JobView:
    """Ask the job to stop; it ends ``cancelled`` at its next step and saves nothing."""
    return JobView.of(svc.jobs.cancel(job_id).public())


@router.get(
    "/{job_id}/events",
    responses={**ERROR_RESPONSES, **NOT_FOUND, 200: {"content": {"text/event-stream": {}},
                                                     "description": "`progress` events, then one `end` event"}},
)
async def job_events(job_id: str, svc: Services = Depends(services)) -> StreamingResponse:
    """Server-sent events: a ``progress`` event with the job at every change, then ``end`` with its final state."""
    svc.jobs.get(job_id)  # 404 before the stream opens

    async def stream() -> AsyncIterator[str]:
        version, quiet = -1, 0.0
        while True:
            job = svc.jobs.get(job_id)  # the job as it is now, whichever process runs it
            if job.version != version:
                version, quiet = job.version, 0.0
                view = JobView.of(job.public())  # the same typed view as GET /jobs/{id}
                final = view.state in TERMINAL
                yield f"event: {'end' if final else 'progress'}\ndata: {view.model_dump_json()}\n\n"
                if final:
                    return
            await asyncio.sleep(POLL_S)  # no thread per listener: many watchers cost nothing
            quiet += POLL_S
            if quiet >= HEARTBEAT_S:
                quiet = 0.0
                yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
