"""Public vector listing."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from app.api.errors import ERROR_RESPONSES
from app.api.routes.deps import services
from app.api.schemas import ErrorEnvelope, VectorInfo, VectorList
from app.registry.names import check_name
from app.runtime import Services

router = APIRouter(tags=["vectors"])


@router.get("/vectors", response_model=VectorList, responses={503: ERROR_RESPONSES[503]})
def list_vectors(svc: Services = Depends(services)) -> dict[str, Any]:
    """The loaded model's vectors: name, relation, layer, norm, method."""
    return {"vectors": [stored.summary() for stored in svc.registry.list()]}


@router.get(
    "/vectors/{name}",
    response_model=VectorInfo,
    responses={**ERROR_RESPONSES, 404: {"model": ErrorEnvelope, "description": "Unknown vector"}},
)
def get_vector(name: str, svc: Services = Depends(services)) -> dict[str, Any]:
    """One vector's public description."""
    check_name(name)
    info = svc.registry.get(name).describe()
    return {key: info[key] for key in VectorInfo.model_fields}
