"""Admin routes of the steering presets ("steered models"): list, save, delete. Every route requires the token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel

from app.api.auth import require_admin
from app.api.errors import ADMIN_RESPONSES
from app.api.routes.deps import services
from app.api.schemas import Deleted, ErrorEnvelope
from app.runtime import Services
from app.services.presets import PresetSpec, PresetView

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

PresetName = Annotated[str, Path(description="Preset name: the model id clients ask for")]


class PresetList(BaseModel):
    presets: list[PresetView]


@router.get("/presets", response_model=PresetList, responses=ADMIN_RESPONSES)
def admin_list_presets(svc: Services = Depends(services)) -> PresetList:
    """Every preset by name, with whether it can be served now (``broken``: some of its vectors are gone)."""
    return PresetList(presets=svc.presets.list())


@router.put(
    "/presets/{name}",
    response_model=PresetView,
    responses={
        **ADMIN_RESPONSES,
        200: {"description": "Replaced"},
        201: {"model": PresetView, "description": "Created"},
        404: {"model": ErrorEnvelope, "description": "A vector it names does not exist"},
    },
)
def admin_put_preset(name: PresetName, spec: PresetSpec, response: Response,
                     svc: Services = Depends(services)) -> PresetView:
    """Save a preset under ``name`` (201 when new, 200 when it replaces one); every vector must exist now."""
    preset, created = svc.presets.put(name, spec)
    response.status_code = 201 if created else 200
    return svc.presets.view(preset)


@router.delete(
    "/presets/{name}",
    response_model=Deleted,
    responses={**ADMIN_RESPONSES, 404: {"model": ErrorEnvelope, "description": "Unknown preset"}},
)
def admin_delete_preset(name: PresetName, svc: Services = Depends(services)) -> Deleted:
    """Remove a preset; the vectors it names stay."""
    svc.presets.delete(name)
    return Deleted(deleted=name)
