"""One wire schema: every response model of the server paired with the SDK's, field by field (names, types,
nullability, required-ness, enum values). The SDK imports nothing of the server, so this test is what keeps the
two from drifting apart; the leniency the SDK has on purpose is written down in ``LENIENT``."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import fvsteer_client.models as sdk
import pytest
from fvsteer_client.errors import APIError, error_from_envelope
from pydantic import BaseModel

import app.api.routes.presets as preset_routes
import app.api.schemas as server
import app.services.presets as presets
import app.services.results as results

# server model → SDK model: every response body the server sends, and every model nested in one.
PAIRS: list[tuple[type[BaseModel], type[BaseModel]]] = [
    (server.CompleteResponse, sdk.Completion),
    (results.Steering, sdk.Steering),
    (results.SteeringLayer, sdk.SteeringLayer),
    (results.AppliedVector, sdk.AppliedVector),
    (results.Baseline, sdk.Baseline),
    (results.Usage, sdk.Usage),
    (server.VectorSummary, sdk.VectorSummary),
    (server.VectorInfo, sdk.VectorInfo),
    (server.VectorMetadata, sdk.VectorMetadata),
    (server.RefusedFile, sdk.RefusedVector),
    (server.AdminVectorList, sdk.AdminVectorListing),
    (server.Deleted, sdk.DeletedVector),
    (server.Health, sdk.Health),
    (server.Readiness, sdk.Readiness),
    (server.JobView, sdk.Job),
    (results.HeadMeansCache, sdk.HeadMeansCache),
    (results.ScoringCache, sdk.ScoringCache),
    (results.ExtractMetrics, sdk.ExtractMetrics),
    (results.ExtractResult, sdk.ExtractResult),
    (results.EpochRecord, sdk.EpochRecord),
    (results.FinetuneMetrics, sdk.FinetuneMetrics),
    (results.FinetuneResult, sdk.FinetuneResult),
    (results.ContrastResult, sdk.ContrastResult),
    (results.Accuracy, sdk.Accuracy),
    (server.EvaluationResult, sdk.Evaluation),
    (results.DecodedToken, sdk.DecodedToken),
    (server.DecodedVector, sdk.DecodedVector),
    (server.AnalogyResponse, sdk.Analogy),
    (server.ScoreResponse, sdk.Score),
    (results.ContinuationScore, sdk.ContinuationScore),
    (results.ScoredToken, sdk.ScoredToken),
    (results.ScoreUsage, sdk.ScoreUsage),
    (presets.PresetView, sdk.Preset),
    (preset_routes.PresetList, sdk.PresetListing),
]

# Response bodies defined beside their routes rather than in app.api.schemas: checked for unpaired nested models too.
ROUTE_RESPONSES: list[type[BaseModel]] = [preset_routes.PresetList]

# Bodies the SDK reads without a model of the same shape, and why.
UNPAIRED = {
    server.VectorList: "list_vectors() returns the list of VectorSummary inside it",
    results.TextPiece: "the SDK's CompletionChunk carries a token event's text and, on the done event, the response",
    server.ErrorEnvelope: "fvsteer_client.errors turns the envelope into typed exceptions",
    server.ErrorBody: "fvsteer_client.errors turns the envelope into typed exceptions",
}

# (SDK model, field) → why the SDK accepts more than the server sends. Anything else must match exactly.
LENIENT: dict[tuple[str, str], str] = {
    ("Readiness", "registry"): "optional: servers before the registry sync state omitted it",
    ("Job", "kind"): "str, not the server's enum: a client keeps working when a server adds a job kind",
    ("Job", "result"): "a dict, typed on demand by Job.extract_result / Job.finetune_result by the job's kind",
    ("Job", "error"): "a dict: the error envelope's body, read by the SDK's error helpers",
    ("Completion", "steering"): "a default: servers before return_baseline omitted null fields",
    ("Completion", "baseline"): "a default: servers before return_baseline omitted null fields",
    ("VectorInfo", "heads"): "a default: servers before extraction metrics omitted it",
    ("VectorInfo", "metrics"): "a default: servers before extraction metrics omitted it",
    ("VectorMetadata", "heads"): "a default: servers before extraction metrics omitted it",
    ("VectorMetadata", "metrics"): "a default: servers before extraction metrics omitted it",
    ("VectorMetadata", "model_fingerprint"): "optional: imported vectors of early servers lack provenance",
    ("VectorMetadata", "dataset_sha256"): "optional: imported vectors of early servers lack provenance",
    ("VectorMetadata", "n_pairs"): "optional: imported vectors of early servers lack provenance",
    ("VectorMetadata", "template"): "optional: imported vectors of early servers lack provenance",
    ("VectorMetadata", "format"): "optional: imported vectors of early servers lack provenance",
    ("AdminVectorListing", "refused"): "a default: servers before refused files omitted it",
    ("Readiness", "model"): "optional: a readiness answer is read before anything else is known",
    ("Readiness", "cache"): "optional: servers before the Redis cache omitted it",
    ("ExtractResult", "scoring_cache"): "a default: servers before the AIE and layer-sweep caches omitted it",
    ("FinetuneResult", "head_means_cache"): "a default: the server sends null unless the start was a mediation FV",
    ("Analogy", "choice_scores"): "a default: null without choices",
}

SDK_OF = {server_model: sdk_model for server_model, sdk_model in PAIRS}
NAME_OF: dict[type, str] = {**{s: s.__name__ for s in SDK_OF}, **{d: s.__name__ for s, d in PAIRS}}


def shape(annotation: Any) -> Any:
    """A comparable description of a type: models by their pair, Literals by their values, unions as sets."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return frozenset(shape(arg) for arg in get_args(annotation))
    if origin is Annotated:  # constraints (ge, le, …) are the server's to enforce on input; a reader needs the type
        return shape(get_args(annotation)[0])
    if origin is Literal:
        return ("literal", frozenset(get_args(annotation)))
    if origin is not None:
        return (getattr(origin, "__name__", str(origin)), tuple(shape(arg) for arg in get_args(annotation)))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("model", NAME_OF.get(annotation, f"unpaired {annotation.__name__}"))
    return getattr(annotation, "__name__", str(annotation))


def nullable(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


def differences(server_model: type[BaseModel], sdk_model: type[BaseModel]) -> list[str]:
    """What the SDK model gets wrong about the server model, leniency excepted."""
    found = []
    ours, theirs = server_model.model_fields, sdk_model.model_fields
    for name in sorted(set(ours) | set(theirs)):
        where = f"{sdk_model.__name__}.{name}"
        if name not in theirs:
            found.append(f"{where}: the server sends it, the SDK has no such field")
            continue
        if name not in ours:
            found.append(f"{where}: the SDK expects it, the server never sends it")
            continue
        if (sdk_model.__name__, name) in LENIENT:
            continue
        sent, read = ours[name], theirs[name]
        if shape(sent.annotation) != shape(read.annotation):
            found.append(f"{where}: server {sent.annotation}, SDK {read.annotation}")
        if nullable(sent.annotation) != nullable(read.annotation):
            found.append(f"{where}: nullable on one side only")
        if read.is_required() != (sent.is_required() or not nullable(sent.annotation)):
            how = "requires" if read.is_required() else "defaults"
            found.append(f"{where}: the server always sends it; the SDK {how} it")
    return found


@pytest.mark.parametrize(("server_model", "sdk_model"), PAIRS, ids=[f"{s.__name__}-{d.__name__}" for s, d in PAIRS])
def test_the_sdk_reads_exactly_what_the_server_sends(server_model: type[BaseModel], sdk_model: type[BaseModel]
                                                       ) -> None:
    assert differences(server_model, sdk_model) == []


def test_every_response_model_is_paired_or_explained() -> None:
    """A new response body (or a model nested in one) must be added to PAIRS or UNPAIRED."""
    reachable: set[type[BaseModel]] = set()

    def visit(annotation: Any) -> None:
        for arg in get_args(annotation):
            visit(arg)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation not in reachable:
            reachable.add(annotation)
            for field in annotation.model_fields.values():
                visit(field.annotation)

    for value in vars(server).values():  # every response model the schemas module defines or re-exports
        if isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel \
                and not issubclass(value, server.Strict):
            visit(value)
    for model in ROUTE_RESPONSES:
        visit(model)
    unexplained = {model.__name__ for model in reachable - set(SDK_OF) - set(UNPAIRED)}
    assert unexplained == set()


def test_every_leniency_names_a_real_field() -> None:
    fields = {(sdk_model.__name__, name) for _, sdk_model in PAIRS for name in sdk_model.model_fields}
    assert set(LENIENT) <= fields


def test_a_renamed_field_is_caught() -> None:
    """The check can fail: a server model with ``text`` renamed is not what the SDK's Completion reads."""
    renamed = type("Renamed", (BaseModel,), {"__annotations__": {**{
        name: field.annotation for name, field in server.CompleteResponse.model_fields.items() if name != "text"},
        "output": str}})
    found = differences(renamed, sdk.Completion)
    assert "Completion.text: the SDK expects it, the server never sends it" in found
    assert "Completion.output: the server sends it, the SDK has no such field" in found


def test_typed_exceptions_expose_every_error_field() -> None:
    """The envelope's body is not mirrored by a model (UNPAIRED): each of its fields is an attribute of APIError."""
    body = {name: f"value-{name}" for name in server.ErrorBody.model_fields}
    body["type"] = "not_found"
    exc = error_from_envelope({"error": body})
    assert {name: getattr(exc, name) for name in body} == body
    assert isinstance(exc, APIError)
