"""What the services return: the response bodies of the v1 HTTP contract, as pydantic models.

Services build these and the routes hand them on unchanged (``response_model`` then only documents them). The
SDK mirrors every one of them (``sdk/fvsteer_client/models.py``); ``tests/test_schema_contract.py`` fails when
the two drift apart.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.engine.requests import BankSteering, SteeringReceipt

FinishReason = Literal["stop", "length", "timeout", "cancelled"]
CacheBackend = Literal["memory", "redis", "degraded"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class AppliedVector(BaseModel):
    name: str
    digest: str = Field(description="First 16 hex digits of the SHA-256 of the vector's float32 values: the exact "
                        "vector added, whatever its name holds now.")
    weight: float = Field(description="Its weight times the request's scale.")


class SteeringLayer(BaseModel):
    norm: float = Field(description="L2 norm of the composite added at this layer.")
    vectors: list[AppliedVector] = Field(description="What the composite sums, in the order given.")


class Steering(BaseModel):
    """The steering receipt: made by the backend when it took the vectors, so it states what was applied."""

    relations: dict[str, float] = Field(description="The weights asked for (zero weights dropped).")
    scale: float
    positions: Literal["fv", "all"] = Field(description="'fv': the last prompt token and every generated token; "
                                            "'all': every token.")
    layers: dict[int, SteeringLayer] = Field(description="Layer → what was added there.")

    @classmethod
    def of(cls, steering: BankSteering, receipt: SteeringReceipt | None) -> Steering:
        """The response's steering from a backend's receipt (none: every weight was zero, nothing was added)."""
        layers = {} if receipt is None else {
            layer: SteeringLayer(norm=applied.norm, vectors=[
                AppliedVector(name=v.name, digest=v.digest, weight=v.weight) for v in applied.vectors])
            for layer, applied in receipt.layers.items()}
        return cls(relations=steering.applied, scale=steering.scale, positions=steering.positions, layers=layers)


class Baseline(BaseModel):
    text: str
    finish_reason: FinishReason


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class CompleteResponse(BaseModel):
    id: str
    model: str
    text: str
    finish_reason: FinishReason
    steering: Steering | None = Field(description="Absent exactly when the completion ran unsteered.")
    baseline: Baseline | None
    usage: Usage


class ScoredToken(BaseModel):
    token: str = Field(description="The token as text.")
    id: int = Field(description="Its id in the model's vocabulary.")
    logprob: float = Field(description="log p(token | everything before it), steered as the request says.")


class ContinuationScore(BaseModel):
    continuation: str
    logprob: float = Field(description="log p(continuation | prompt): the sum over its tokens.")
    tokens: list[ScoredToken]
    greedy: bool = Field(description="Every token is the model's most likely one at its position.")


class ScoreUsage(BaseModel):
    prompt_tokens: int
    continuation_tokens: int = Field(description="Summed over the continuations.")


class ScoreResponse(BaseModel):
    model: str
    scores: list[ContinuationScore] = Field(description="One per continuation, in the order given.")
    best: int = Field(description="Index of the continuation with the highest log-probability.")
    steering: Steering | None = Field(description="Absent exactly when the scoring ran unsteered.")
    usage: ScoreUsage


class TextPiece(BaseModel):
    """One ``token`` event of a streamed completion: the next piece of the text."""

    text: str


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


# --- job results: one model per job kind ---------------------------------------------------------------------------


class HeadMeansCache(BaseModel):
    hit: bool = Field(description="The head means came from the cache.")
    backend: CacheBackend


class ScoringCache(BaseModel):
    aie_hit: bool = Field(description="The AIE matrix came from the cache (same means, corrupted prompts, heads).")
    layer_sweep_hit: bool = Field(description="The layer sweep came from the cache (same AIE, n_heads, layers).")
    backend: CacheBackend


class ExtractMetrics(BaseModel):
    """What an extraction measured; also stored in the vector's ``metrics``."""

    sweep_zero_shot_top1: float = Field(description="Zero-shot top-1 on the sweep pairs without a vector.")
    sweep_zero_shot_fv_top1: float = Field(description="… with the vector at the chosen layer.")
    n_sweep: int
    layer_sweep: dict[int, float] = Field(description="Layer → zero-shot top-1 with the vector there.")
    aie: list[list[float]] = Field(description="Average indirect effect, [layer][head].")
    n_prompts: int
    n_trials: int
    shots: int
    seed: int


class ExtractResult(BaseModel):
    """``result`` of a succeeded extraction job."""

    vector: str = Field(description="Name of the saved vector.")
    layer: int
    norm: float
    heads: list[tuple[int, int, float]] = Field(description="[layer, head, aie] of the heads summed.")
    metrics: ExtractMetrics
    phase_seconds: dict[str, float]
    head_means_cache: HeadMeansCache
    scoring_cache: ScoringCache


class EpochRecord(BaseModel):
    """One fine-tuning epoch (also a running job's ``detail``, with ``epochs``)."""

    epoch: int
    loss: float
    train_top1: float
    holdout_top1: float = Field(description="Hold-out top-1 on raw prompts.")
    holdout_chat_top1: float | None = Field(None, description="Hold-out top-1 as chat turns (when trained on them).")
    holdout_loss: float = Field(description="Mean loss over every hold-out prompt, both forms.")


class FinetuneMetrics(BaseModel):
    """What fine-tuning measured; also stored in the vector's ``metrics``."""

    init: str = Field(description="'mediation', 'zero', 'random' or 'vector:<name>'.")
    epochs: int
    lr: float
    l2: float
    seed: int
    chat: bool = Field(False, description="Whether chat-rendered prompts were asked for (used where the model has a "
                       "chat template).")
    patience: int | None = Field(None, description="Epochs without a better hold-out score before training stopped.")
    n_train: int
    n_holdout: int
    best_epoch: int
    holdout_top1_before: float
    holdout_top1_after: float
    holdout_icl_top1: float = Field(description="10-shot prompting on the same hold-out pairs.")
    holdout_chat_top1_before: float | None = Field(None, description="Hold-out top-1 as chat turns, start vector.")
    holdout_chat_top1_after: float | None = Field(None, description="Hold-out top-1 as chat turns, checkpoint.")
    shots: int
    history: list[EpochRecord]
    seconds: dict[str, float]


class FinetuneResult(BaseModel):
    """``result`` of a succeeded fine-tuning job."""

    vector: str = Field(description="Name of the saved vector.")
    layer: int
    norm: float
    metrics: FinetuneMetrics
    head_means_cache: HeadMeansCache | None = Field(description="Set when the mediation FV was the start.")


class ContrastResult(BaseModel):
    """``result`` of a succeeded contrastive job."""

    vector: str = Field(description="Name of the saved vector.")
    layer: int
    norm: float
    method: Literal["mean_diff", "pca"]
    normalize: Literal["none", "unit"]
    n_pairs: int
    separation: float = Field(description="Fraction of the pairs whose residual difference points the vector's way "
                              "(on the pairs it was made from).")
    seconds: float


RESULT_TYPES: dict[str, type[BaseModel]] = {  # a job kind → its result model
    "extract": ExtractResult, "finetune": FinetuneResult, "contrast": ContrastResult}


class ErrorBody(BaseModel):
    type: str
    message: str
    param: str | None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class JobView(BaseModel):
    """A job as every route and event shows it; ``result`` is typed by the job's ``kind``."""

    id: str
    kind: Literal["extract", "finetune", "contrast"]
    state: JobState
    phase: str
    progress: float = Field(ge=0.0, le=1.0)
    detail: dict[str, Any] | None = Field(
        None, description="The current phase's figures, e.g. a fine-tuning epoch's loss and hold-out accuracy."
    )
    result: ExtractResult | FinetuneResult | ContrastResult | None
    error: ErrorBody | None
    created: str
    updated: str

    @classmethod
    def of(cls, snapshot: dict[str, Any]) -> JobView:
        """From a job manager snapshot (``Job.public()``), its result parsed as its kind's model."""
        result = snapshot.get("result")
        if result is not None:
            result = RESULT_TYPES[snapshot["kind"]].model_validate(result)
        return cls.model_validate({**snapshot, "result": result})

