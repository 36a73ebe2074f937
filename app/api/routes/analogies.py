"""POST /analogies."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from app.api.admission import Admission
from app.api.disconnect import unless_disconnected
from app.api.errors import ERROR_RESPONSES
from app.api.routes.deps import admission, services
from app.api.schemas import AnalogyRequest, AnalogyResponse, ErrorEnvelope
from app.runtime import Services

router = APIRouter(tags=["analogies"])


@router.post(
    "/analogies",
    response_model=AnalogyResponse,
    responses={**ERROR_RESPONSES, 429: {"model": ErrorEnvelope, "description": "Queue full"},
               409: {"model": ErrorEnvelope, "description": "Fewer than 2 fine-tuned vectors in the registry"},
               504: {"model": ErrorEnvelope, "description": "Waited too long for a batch slot"}},
)
async def solve_analogy(body: AnalogyRequest, request: Request, svc: Services = Depends(services),
                        gate: Admission = Depends(admission)) -> Any:
    """A:B :: C:? — composite weights inferred from A:B over the bank, the composite added at the query for C."""
    async with gate.slot():
        return await unless_disconnected(
            request, svc.analogies.solve(body.to_input()))
