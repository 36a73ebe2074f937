"""Request and response bodies of the v1 HTTP contract (DESIGN.md §6). Unknown fields are refused."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.analogy.service import MAX_CHOICES, MAX_TERM_CHARS
from app.fv.composite import MAX_ABS_WEIGHT, MAX_RELATIONS
from app.fv.finetuned import DEFAULT_EPOCHS, DEFAULT_L2, DEFAULT_LR, LIMITS

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
    stream: bool = Field(False, description="Server-sent events: 'token' events ({text}), then 'done' with the "
                         "whole response, or 'error' with the error envelope.")
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
    heads: list[Any] = Field(description="[[layer, head, aie], …] of a mediation vector; empty otherwise.")
    metrics: dict[str, Any] = Field(description="What was measured when the vector was made (e.g. layer sweep).")


class VectorList(BaseModel):
    vectors: list[VectorSummary]


class VectorMetadata(VectorInfo):
    format: str
    model_fingerprint: str
    dataset_sha256: str
    n_pairs: int
    template: str


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
    status: Literal["ready", "degraded"]
    model: str
    cache: Literal["memory", "redis", "degraded"] = Field(description="Head-mean cache backend and its health.")


class PairIn(Strict):
    input: str = Field(min_length=1, max_length=200)
    output: str = Field(min_length=1, max_length=200)


class ExtractRequest(Strict):
    name: str = Field(description="Name of the vector to create.")
    relation: str | None = Field(None, description="A shipped relation (see the README); or give 'pairs'.")
    pairs: list[PairIn] | None = Field(None, max_length=10_000, description="Your own pairs (at least 12).")
    n_prompts: int = Field(100, ge=1, le=1000, description="Clean 10-shot prompts averaged for head means (N).")
    n_trials: int = Field(25, ge=1, le=500, description="Corrupted prompts over which each head's AIE is averaged.")
    n_heads: int = Field(10, ge=1, description="Heads summed into the vector (top-k by AIE).")
    layer: int | Literal["auto"] = Field("auto", description="Block to add the vector at; 'auto' sweeps them all.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the split, prompts and shuffles.")


class FinetuneRequest(Strict):
    name: str = Field(description="Name of the vector to create.")
    relation: str | None = Field(None, description="A shipped relation (see the README); or give 'pairs'.")
    pairs: list[PairIn] | None = Field(None, max_length=10_000, description="Your own pairs (at least 12).")
    init: Literal["mediation", "zero", "random", "vector"] = Field(
        "mediation", description="Start from the mediation FV of the same pairs, zeros, a seeded random vector, "
        "or the stored vector named by init_vector."
    )
    init_vector: str | None = Field(None, description="With init 'vector': the stored vector to start from.")
    layer: int | None = Field(None, ge=0, description="Block the vector is trained at; default ≈ 30 % of the depth.")
    epochs: int = Field(DEFAULT_EPOCHS, ge=LIMITS["epochs"][0], le=LIMITS["epochs"][1],
                        description="Full-batch training steps.")
    lr: float = Field(DEFAULT_LR, allow_inf_nan=False, ge=LIMITS["lr"][0], le=LIMITS["lr"][1],
                      description="Adam's learning rate (cosine schedule).")
    l2: float = Field(DEFAULT_L2, allow_inf_nan=False, ge=LIMITS["l2"][0], le=LIMITS["l2"][1],
                      description="Weight of ‖v − v₀‖² in the loss.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the split, the hold-out and a random init.")


class AnalogyRequest(Strict):
    a: str = Field(min_length=1, max_length=MAX_TERM_CHARS, description="Source term A of A:B :: C:?")
    b: str = Field(min_length=1, max_length=MAX_TERM_CHARS, description="Source term B: A:B shows the relation.")
    c: str = Field(min_length=1, max_length=MAX_TERM_CHARS, description="Query term C.")
    choices: list[Annotated[str, Field(min_length=1, max_length=MAX_TERM_CHARS)]] | None = Field(
        None, min_length=2, max_length=MAX_CHOICES, description="Candidate answers D; the best-scoring one is "
        "returned. Without choices the answer is generated."
    )
    max_new_tokens: int = Field(8, ge=1, le=64, description="Tokens generated for an answer without choices.")


class AnalogyResponse(BaseModel):
    a: str
    b: str
    c: str
    answer: str
    choice_scores: list[float] | None = Field(description="log p(choice | C, composite) per choice, in order.")
    weights: dict[str, float] = Field(description="Composite weight of each bank relation.")
    scores: dict[str, float] = Field(description="log p(B | A, vector) of each bank relation: what the weights "
                                               "are inferred from.")
    combiner: Literal["affine", "softmax"] = Field(description="'affine': the fitted combiner; 'softmax': none "
                                                              "fitted for this bank, plain softmax weights.")


class EvaluateRequest(Strict):
    relation: str | None = Field(None, description="A shipped relation; or give 'pairs'.")
    pairs: list[PairIn] | None = Field(None, max_length=10_000, description="Your own pairs (at least 12).")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    shots: int = Field(10, ge=1, le=20, description="Demonstrations per in-context prompt.")


class Job(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    phase: str
    progress: float = Field(ge=0.0, le=1.0)
    detail: dict[str, Any] | None = Field(
        None, description="The current phase's figures, e.g. a fine-tuning epoch's loss and hold-out accuracy."
    )
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created: str
    updated: str


class Accuracy(BaseModel):
    top1: float
    top3: float


class EvaluationResult(BaseModel):
    vector: str
    relation: str
    layer: int
    zero_shot: Accuracy
    zero_shot_fv: Accuracy
    icl: Accuracy
    icl_shuffled: Accuracy
    icl_shuffled_fv: Accuracy
    n: int
    n_dropped: int


class DecodedToken(BaseModel):
    token: str
    prob: float


class DecodedVector(BaseModel):
    name: str
    layer: int
    tokens: list[DecodedToken]


class ErrorBody(BaseModel):
    type: str
    message: str
    param: str | None


class ErrorEnvelope(BaseModel):
    error: ErrorBody
