"""Vectors: listing, extraction and fine-tuning jobs, evaluation, decoding, export."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from app.api.admission import Admission
from app.api.disconnect import unless_disconnected
from app.api.errors import ERROR_RESPONSES
from app.api.routes.deps import admission, services
from app.api.schemas import (
    ContrastRequest,
    DecodedVector,
    ErrorEnvelope,
    EvaluateRequest,
    EvaluationResult,
    ExtractRequest,
    FinetuneRequest,
    JobView,
    VectorInfo,
    VectorList,
)
from app.model.runner import offload
from app.registry.export import ExportFormat, export_vector
from app.registry.names import check_name
from app.runtime import Services

router = APIRouter(tags=["vectors"])


@router.get("/vectors", response_model=VectorList, responses={503: ERROR_RESPONSES[503]})
def list_vectors(svc: Services = Depends(services)) -> VectorList:
    """The loaded model's vectors: name, relation, layer, norm, method."""
    return VectorList(vectors=[stored.summary() for stored in svc.registry.list()])


@router.get(
    "/vectors/{name}",
    response_model=VectorInfo,
    responses={**ERROR_RESPONSES, 404: {"model": ErrorEnvelope, "description": "Unknown vector"}},
)
def get_vector(name: str, svc: Services = Depends(services)) -> VectorInfo:
    """One vector's public description."""
    return svc.registry.get(check_name(name)).info()


NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorEnvelope, "description": "Unknown vector or relation"}
}
BUSY: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorEnvelope, "description": "Too many requests using the model at once"}
}
JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES, **NOT_FOUND, 409: {"model": ErrorEnvelope, "description": "Name taken"},
    429: {"model": ErrorEnvelope, "description": "Too many jobs waiting"},
    507: {"model": ErrorEnvelope, "description": "The registry holds as many vectors as it may (FVSTEER_MAX_VECTORS)"},
}


@router.post("/vectors/extract", status_code=202, response_model=JobView, responses=JOB_RESPONSES)
def extract_vector(body: ExtractRequest, svc: Services = Depends(services)) -> JobView:
    """Start a causal-mediation extraction job; poll ``GET /jobs/{id}`` or stream its events."""
    return JobView.of(svc.vectors.start_extraction(body.to_input()).public())


@router.post("/vectors/finetune", status_code=202, response_model=JobView, responses=JOB_RESPONSES)
def finetune_vector(body: FinetuneRequest, svc: Services = Depends(services)) -> JobView:
    """Start a fine-tuning job (the model frozen, the vector trained); each epoch's loss and hold-out accuracy
    appear in the job's ``detail`` and events."""
    return JobView.of(svc.vectors.start_finetune(body.to_input()).public())


@router.post("/vectors/contrast", status_code=202, response_model=JobView, responses=JOB_RESPONSES)
def contrast_vector(body: ContrastRequest, svc: Services = Depends(services)) -> JobView:
    """Start a contrastive job: the control vector that separates the positive prompts from the negative ones at
    one layer (mean difference or first principal axis of the differences), saved to the registry."""
    return JobView.of(svc.vectors.start_contrast(body.to_input()).public())


@router.post("/vectors/{name}/evaluate", response_model=EvaluationResult,
             responses={**ERROR_RESPONSES, **NOT_FOUND, **BUSY})
async def evaluate_vector(name: str, body: EvaluateRequest, request: Request, svc: Services = Depends(services),
                          gate: Admission = Depends(admission)) -> Any:
    """First-token accuracy on held-out pairs: zero-shot, + vector, 10-shot, shuffled 10-shot, shuffled + vector.

    A client that leaves stops the evaluation's forwards (499 in the access log)."""
    spec = body.to_input()
    async with gate.slot():
        return await unless_disconnected(request, offload(svc.runner, lambda run: svc.vectors.evaluate(
            name, spec, run=run)))


@router.get("/vectors/{name}/decode", response_model=DecodedVector,
            responses={**ERROR_RESPONSES, **NOT_FOUND, **BUSY})
async def decode_vector(
    name: str, request: Request, k: Annotated[int, Query(ge=1, le=100)] = 10, svc: Services = Depends(services),
    gate: Admission = Depends(admission),
) -> Any:
    """Logit lens: the tokens the vector promotes, ``softmax(lm_head(final_norm(v)))``."""
    async with gate.slot():
        return await unless_disconnected(request, offload(svc.runner, lambda run: svc.vectors.decode(
            name, k, run=run)))


@router.get(
    "/vectors/{name}/export",
    response_class=Response,
    responses={**ERROR_RESPONSES, **NOT_FOUND, 200: {
        "content": {"application/octet-stream": {}},
        "description": "The vector as a file: a GGUF control vector (llama.cpp's --control-vector, repeng) or "
                       "fvsteer's safetensors file (POST /admin/vectors takes it back).",
    }},
)
def export_vector_file(name: str, format: Annotated[ExportFormat, Query()] = "gguf",
                       svc: Services = Depends(services)) -> Response:
    """Download a vector for another tool. GGUF keeps the values bit for bit and fvsteer's metadata as
    ``fvsteer.*`` strings; llama.cpp adds it at every position (fvsteer's ``positions: all``)."""
    stored = svc.registry.get(check_name(name))
    data = export_vector(stored, format, svc.runner.handle.adapter.model_type)
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{stored.name}.{format}"'})
