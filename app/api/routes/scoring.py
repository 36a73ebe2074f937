"""POST /score: log p(continuation | prompt) for candidate continuations, steered or not."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from app.api.admission import Admission
from app.api.disconnect import unless_disconnected
from app.api.errors import ERROR_RESPONSES
from app.api.routes.deps import admission, services
from app.api.schemas import ErrorEnvelope, ScoreRequest, ScoreResponse
from app.runtime import Services

router = APIRouter(tags=["scoring"])


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses={**ERROR_RESPONSES, 404: {"model": ErrorEnvelope, "description": "Unknown vector"},
               429: {"model": ErrorEnvelope, "description": "Too many model requests at once"}},
)
async def score(body: ScoreRequest, request: Request, svc: Services = Depends(services),
                gate: Admission = Depends(admission)) -> Any:
    """Score each continuation after the prompt, with the vector at the prompt's last token and at every
    continuation token (`positions: "fv"`, as generation would add it) or at every token (`"all"`)."""
    async with gate.slot():
        return await unless_disconnected(request, svc.scoring.score(body.to_input()))
