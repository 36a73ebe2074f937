"""Request and response bodies of the v1 HTTP contract (DESIGN.md §6). Unknown fields are refused."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.fv.composite import MAX_ABS_WEIGHT, MAX_RELATIONS

MAX_PROMPT_CHARS = 100_000
MAX_STOP = 8
MAX_STOP_CHARS = 64

Weight = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_WEIGHT, le=MAX_ABS_WEIGHT)]
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompleteRequest(Strict):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="Text to continue.")
    relations: dict[str, Weight] | None = Field(
        None, max_length=MAX_RELATIONS, description="Vector name → weight; empty or absent = unsteered."
    )
    layer: int | None = Field(None, ge=0, description="Put every vector at this layer instead of its own.")
    scale: float = Field(1.0, allow_inf_nan=False, ge=-100.0, le=100.0, description="Multiplies the composite.")
    positions: Literal["fv", "all"] = Field(
        "fv", description="'fv': last prompt token and every generated token; 'all': also every prompt token."
    )
    max_new_tokens: int = Field(32, ge=1, description="Tokens to generate at most (server limit applies).")
    temperature: float = Field(0.0, allow_inf_nan=False, ge=0.0, le=5.0, description="0 = greedy.")
    top_p: float = Field(1.0, allow_inf_nan=False, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Makes sampling reproducible.")
    stop: list[StopString] | None = Field(None, max_length=MAX_STOP, description="Stop strings (not returned).")
    stream: Literal[False] = Field(False, description="Streaming responses are not available in this version.")
    return_baseline: bool = Field(False, description="Also return the unsteered text, generated in the same batch.")


class LayerNorm(BaseModel):
    norm: float


class Steering(BaseModel):
    relations: dict[str, float]
    layers: dict[str, LayerNorm]


class Baseline(BaseModel):
    text: str
    finish_reason: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class CompleteResponse(BaseModel):
    id: str
    model: str
    text: str
    finish_reason: Literal["stop", "length", "timeout", "cancelled"]
    steering: Steering | None
    baseline: Baseline | None
    usage: Usage


class VectorSummary(BaseModel):
    name: str
    relation: str
    layer: int
    norm: float
    method: str
    model: str


class VectorInfo(VectorSummary):
    d_model: int
    created: str


class VectorList(BaseModel):
    vectors: list[VectorSummary]


class VectorMetadata(VectorInfo):
    format: str
    model_fingerprint: str
    heads: list[Any]
    dataset_sha256: str
    n_pairs: int
    template: str
    metrics: dict[str, Any]


class RefusedFile(BaseModel):
    file: str
    reason: str


class AdminVectorList(BaseModel):
    vectors: list[VectorMetadata]
    refused: list[RefusedFile]


class Deleted(BaseModel):
    deleted: str


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    model: str


class ErrorBody(BaseModel):
    type: str
    message: str
    param: str | None


class ErrorEnvelope(BaseModel):
    error: ErrorBody
