"""The OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` (the router; the wire
format is :mod:`app.openai.protocol`, the work :mod:`app.openai.serving`)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from app.api.admission import Admission
from app.api.disconnect import unless_disconnected
from app.api.errors import ERROR_RESPONSES, INTERNAL_ERROR
from app.api.routes.deps import admission, services
from app.api.schemas import ErrorEnvelope
from app.errors import FvsteerError
from app.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from app.runtime import Services

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"])

GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {"model": ErrorEnvelope, "description": "Unknown model or vector (code 'model_not_found' for a model)"},
    409: {"model": ErrorEnvelope, "description": "The preset names a vector that is gone"},
    429: {"model": ErrorEnvelope, "description": "Queue full (Retry-After says when to try again)"},
    504: {"model": ErrorEnvelope, "description": "Waited too long for a batch slot"},
}
STREAM_DOC = ("With `stream: true`: OpenAI's chunks as server-sent `data:` lines, then `data: [DONE]`; an error after "
              "the stream opened arrives as one `data:` line holding the error envelope")


@router.get("/models", response_model=ModelList, responses=ERROR_RESPONSES)
def list_models(svc: Services = Depends(services)) -> ModelList:
    """The base model, every preset (with its status) and `<base>+<vector>` for every vector."""
    return svc.openai.models.cards()


@router.get("/models/{model_id}", response_model=ModelCard,
            responses={**ERROR_RESPONSES, 404: {"model": ErrorEnvelope, "description": "Unknown model"},
                       409: {"model": ErrorEnvelope, "description": "The preset names a vector that is gone"}})
def get_model(model_id: str, svc: Services = Depends(services)) -> ModelCard:
    """One model of the list."""
    return svc.openai.models.card(model_id)


@router.post("/completions", response_model=CompletionResponse,
             responses={**GENERATION_RESPONSES, 200: {"content": {"text/event-stream": {}}, "description": STREAM_DOC}})
async def create_completion(body: CompletionRequest, request: Request, svc: Services = Depends(services),
                            gate: Admission = Depends(admission)) -> Any:
    """OpenAI's completions, steered by the model id or the `steering` field."""
    async with AsyncExitStack() as stack:
        if body.echo and body.logprobs is not None:  # the prompt is scored on the HF model: bounded like science
            await stack.enter_async_context(gate.slot())
        if body.stream:
            return _streaming(await svc.openai.completion_stream(body))
        return await unless_disconnected(request, svc.openai.completion(body))


@router.post("/chat/completions", response_model=ChatCompletionResponse,
             responses={**GENERATION_RESPONSES, 200: {"content": {"text/event-stream": {}}, "description": STREAM_DOC}})
async def create_chat_completion(body: ChatCompletionRequest, request: Request,
                                 svc: Services = Depends(services)) -> Any:
    """OpenAI's chat completions: the messages rendered by the model's chat template, then steered generation."""
    if body.stream:
        return _streaming(await svc.openai.chat_stream(body))
    return await unless_disconnected(request, svc.openai.chat(body))


def _streaming(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(_guarded(chunks), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _guarded(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """An error once the stream is open can only be told inside it: one ``data:`` line with the envelope."""
    try:
        async for chunk in chunks:
            yield chunk
    except FvsteerError as exc:
        yield f"data: {json.dumps(exc.envelope())}\n\n"
    except Exception:
        log.exception("streamed completion failed")
        yield f"data: {json.dumps(INTERNAL_ERROR)}\n\n"
