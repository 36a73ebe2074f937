"""POST /complete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from app.api.errors import ERROR_RESPONSES
from app.api.routes.deps import services
from app.api.schemas import CompleteRequest, CompleteResponse, ErrorEnvelope
from app.completions import CompletionInput
from app.runtime import Services

router = APIRouter(tags=["completions"])


@router.post(
    "/complete",
    response_model=CompleteResponse,
    responses={**ERROR_RESPONSES, 404: {"model": ErrorEnvelope, "description": "Unknown vector"},
               429: {"model": ErrorEnvelope, "description": "Queue full"}},
)
async def complete(body: CompleteRequest, svc: Services = Depends(services)) -> dict[str, Any]:
    """Generate a completion steered by the weighted composite of the named vectors."""
    spec = CompletionInput(
        prompt=body.prompt,
        relations=dict(body.relations or {}),
        layer=body.layer,
        scale=body.scale,
        positions=body.positions,
        max_new_tokens=body.max_new_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=tuple(body.stop or ()),
        return_baseline=body.return_baseline,
    )
    return await svc.completions.complete(spec)
