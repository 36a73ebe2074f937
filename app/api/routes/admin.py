"""Admin routes: full metadata, upload, delete. Every route here requires the bearer token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from app.api.auth import require_admin
from app.api.errors import ADMIN_RESPONSES
from app.api.routes.deps import services
from app.api.schemas import AdminVectorList, Deleted, ErrorEnvelope, RefusedFile, VectorMetadata
from app.errors import PayloadTooLarge
from app.registry.names import check_name
from app.runtime import Services

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.get("/vectors", response_model=AdminVectorList, responses=ADMIN_RESPONSES)
def admin_list_vectors(svc: Services = Depends(services)) -> AdminVectorList:
    """Every vector with its provenance and metrics, and the files refused at load with the reason."""
    return AdminVectorList(
        vectors=[stored.describe() for stored in svc.registry.list()],
        refused=[RefusedFile(file=item.file, reason=item.reason) for item in svc.registry.refused],
    )


@router.post(
    "/vectors",
    status_code=201,
    response_model=VectorMetadata,
    responses={**ADMIN_RESPONSES, 409: {"model": ErrorEnvelope, "description": "Name taken"},
               507: {"model": ErrorEnvelope, "description": "The registry is full (FVSTEER_MAX_VECTORS)"}},
)
async def admin_upload_vector(
    request: Request,
    file: Annotated[UploadFile, File(description="safetensors file with a float tensor 'vector' of [d_model], or a "
                                                 "GGUF control vector with one direction.<layer>")],
    name: Annotated[str, Form(description="Name of the new vector")],
    layer: Annotated[int | None, Form(ge=0, description="Decoder block the vector is added at (a GGUF control "
                                      "vector names its own)")] = None,
    relation: Annotated[str | None, Form(max_length=64, description="Relation it encodes; default: name")] = None,
    svc: Services = Depends(services),
) -> VectorMetadata:
    """Import a vector made elsewhere (fvsteer's safetensors file, or a llama.cpp / repeng control vector); it is
    validated against the loaded model and usable at once."""
    limit: int = request.app.state.settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"file has more than {limit} bytes; the limit is {limit}", param="file")
    stored = svc.registry.import_bytes(data, name, layer, relation)
    return stored.describe()


@router.delete(
    "/vectors/{name}",
    response_model=Deleted,
    responses={**ADMIN_RESPONSES, 404: {"model": ErrorEnvelope, "description": "Unknown vector"}},
)
def admin_delete_vector(name: str, svc: Services = Depends(services)) -> Deleted:
    """Remove a vector from the registry and from disk."""
    check_name(name)
    svc.registry.delete(name)
    return Deleted(deleted=name)
