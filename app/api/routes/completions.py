"""POST /complete, whole or streamed as server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from app.api.disconnect import unless_disconnected
from app.api.errors import ERROR_RESPONSES, INTERNAL_ERROR
from app.api.routes.deps import services
from app.api.schemas import CompleteRequest, CompleteResponse, ErrorEnvelope
from app.errors import FvsteerError
from app.runtime import Services
from app.services.completions import Event

log = logging.getLogger(__name__)
router = APIRouter(tags=["completions"])
STREAM_DOC = ("`token` events (`{\"text\"}`: the next piece of text; with `return_baseline`, `baseline` events "
              "carry the baseline's pieces the same way), then one `done` event with the response "
              "object, or one `error` event with the error envelope")


@router.post(
    "/complete",
    response_model=CompleteResponse,
    responses={**ERROR_RESPONSES, 404: {"model": ErrorEnvelope, "description": "Unknown vector"},
               429: {"model": ErrorEnvelope, "description": "Queue full"},
               504: {"model": ErrorEnvelope, "description": "Waited too long for a batch slot"},
               200: {"content": {"text/event-stream": {}}, "description": f"With `stream: true`: {STREAM_DOC}"}},
)
async def complete(body: CompleteRequest, request: Request, svc: Services = Depends(services)) -> Any:
    """Generate a completion steered by the weighted composite of the named vectors."""
    spec = body.to_input()
    if not body.stream:
        return await unless_disconnected(request, svc.completions.complete(spec))
    events = await svc.completions.stream(spec)  # refusals raise here: a plain 4xx, no stream opened
    return StreamingResponse(_server_sent(events), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _server_sent(events: AsyncIterator[Event]) -> AsyncIterator[str]:
    try:
        async for name, data in events:
            yield f"event: {name}\ndata: {data.model_dump_json()}\n\n"
    except FvsteerError as exc:
        yield f"event: error\ndata: {json.dumps(exc.envelope())}\n\n"
    except Exception:
        log.exception("streamed completion failed")
        yield f"event: error\ndata: {json.dumps(INTERNAL_ERROR)}\n\n"
