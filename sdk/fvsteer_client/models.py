"""Response models of the fvsteer HTTP API (v1).

Every model ignores fields it does not know, so an older client keeps working against a newer server.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    """Shared config: tolerate new server fields; frozen, since a response is a record, not state."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class SteeringLayer(_Model):
    """What was added at one layer: ``norm`` is the L2 norm of the composite vector applied there."""

    norm: float


class Steering(_Model):
    """The steering the server actually applied; ``layers`` is keyed by layer index."""

    relations: dict[str, float]
    layers: dict[int, SteeringLayer]


class Baseline(_Model):
    """The unsteered completion of the same prompt, when ``return_baseline`` was asked for."""

    text: str
    finish_reason: str


class Usage(_Model):
    prompt_tokens: int
    completion_tokens: int


class Completion(_Model):
    """Answer of ``POST /complete``. ``steering`` is None exactly when the completion ran unsteered."""

    id: str
    model: str
    text: str
    finish_reason: str
    steering: Steering | None = None
    baseline: Baseline | None = None
    usage: Usage


class VectorSummary(_Model):
    """One entry of ``GET /vectors``."""

    name: str
    relation: str | None = None
    layer: int
    norm: float
    method: str
    model: str


class VectorInfo(VectorSummary):
    """``GET /vectors/{name}``: the summary plus the vector's width and creation time."""

    d_model: int
    created: str


class VectorMetadata(_Model):
    """Full provenance of a vector as the admin routes report it (DESIGN.md §4)."""

    name: str
    relation: str | None = None
    model: str
    model_fingerprint: str | None = None
    d_model: int
    layer: int
    method: str
    heads: list[Any] = Field(default_factory=list)
    dataset_sha256: str | None = None
    n_pairs: int | None = None
    template: str | None = None
    created: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    norm: float
    format: str | None = None


class RefusedVector(_Model):
    """A file in the registry the server would not load, and why (e.g. d_model mismatch)."""

    file: str
    reason: str


class AdminVectorListing(_Model):
    """``GET /admin/vectors``: loaded vectors with full metadata, plus the files that were refused."""

    vectors: list[VectorMetadata]
    refused: list[RefusedVector] = Field(default_factory=list)


class DeletedVector(_Model):
    deleted: str


class Health(_Model):
    status: str


class Readiness(_Model):
    """``GET /readyz`` when ready; while loading the server answers 503 and the client raises instead."""

    status: str
    model: str | None = None
