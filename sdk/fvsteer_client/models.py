"""Response models of the fvsteer HTTP API (v1).

Every model ignores fields it does not know, so an older client keeps working against a newer server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length", "timeout", "cancelled"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
CacheBackend = Literal["memory", "redis", "degraded"]


class _Model(BaseModel):
    """Shared config: tolerate new server fields; frozen, since a response is a record, not state."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class AppliedVector(_Model):
    """One vector of a composite: ``digest`` pins its exact values (16 hex digits of the SHA-256 of its float32
    values), ``weight`` includes the request's scale."""

    name: str
    digest: str
    weight: float


class SteeringLayer(_Model):
    """What was added at one layer: ``norm`` is the L2 norm of the composite vector applied there."""

    norm: float
    vectors: list[AppliedVector]


class Steering(_Model):
    """The steering receipt: what the server actually applied, made when the backend took the vectors;
    ``layers`` is keyed by layer index."""

    relations: dict[str, float]
    scale: float
    positions: Literal["fv", "all"]
    layers: dict[int, SteeringLayer]

    def digests(self) -> dict[str, str]:
        """Vector name → digest of the values applied, over every layer."""
        return {vector.name: vector.digest for layer in self.layers.values() for vector in layer.vectors}


class Baseline(_Model):
    """The unsteered completion of the same prompt, when ``return_baseline`` was asked for."""

    text: str
    finish_reason: FinishReason


class Usage(_Model):
    prompt_tokens: int
    completion_tokens: int


class Completion(_Model):
    """Answer of ``POST /complete``. ``steering`` is None exactly when the completion ran unsteered."""

    id: str
    model: str
    text: str
    finish_reason: FinishReason
    steering: Steering | None = None
    baseline: Baseline | None = None
    usage: Usage


class CompletionChunk(_Model):
    """One event of a streamed ``POST /complete``: ``text`` is the next piece of the text; the last chunk has
    ``text == ""`` and ``completion`` set (the whole response: text, finish_reason, usage, steering)."""

    text: str
    completion: Completion | None = None


class VectorSummary(_Model):
    """One entry of ``GET /vectors``."""

    name: str
    relation: str
    layer: int
    norm: float
    method: str
    model: str
    digest: str  # what a steering receipt names: 16 hex digits of the SHA-256 of the float32 values


class VectorInfo(VectorSummary):
    """``GET /vectors/{name}``: the summary plus width, creation time, and how a mediation vector was made.

    ``heads`` is ``[[layer, head, aie], …]`` of an extracted vector; ``metrics`` holds what was measured when
    it was made (``layer_sweep`` {layer: valid zero-shot top-1}, ``aie`` [layers][heads], …). Both are empty for
    imported vectors (and for servers that predate them).
    """

    d_model: int
    created: str
    heads: list[Any] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)


class VectorMetadata(_Model):
    """Full provenance of a vector as the admin routes report it (the README, "Vectors on disk")."""

    name: str
    relation: str
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
    digest: str
    format: str | None = None
    provenance: dict[str, str]


class RefusedVector(_Model):
    """A file in the registry the server would not load, and why (e.g. d_model mismatch)."""

    file: str
    reason: str


class AdminVectorListing(_Model):
    """``GET /admin/vectors``: loaded vectors with full metadata, plus the files that were refused."""

    vectors: list[VectorMetadata]
    refused: list[RefusedVector] = Field(default_factory=list)


class DeletedVector(_Model):
    """What a delete route removed: ``{"deleted": name}`` (a vector, or a preset)."""

    deleted: str


class Health(_Model):
    status: Literal["ok"]


class Readiness(_Model):
    """``GET /readyz`` when ready; while loading the server answers 503 and the client raises instead."""

    status: Literal["ready", "degraded"]
    model: str | None = None
    cache: CacheBackend | None = None
    """Head-mean cache backend: ``memory``, ``redis``, or ``degraded`` (then ``status`` is ``degraded`` too)."""
    registry: Literal["local", "redis", "degraded"] | None = None
    """How other replicas' vector changes arrive: ``local``, ``redis``, or ``degraded`` (Redis lost: by rescans)."""


TERMINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})


class Job(_Model):
    """A background job (``POST /vectors/extract``, ``GET /jobs/{id}``): one snapshot of it.

    ``state`` is one of ``queued | running | succeeded | failed | cancelled``; ``progress`` is in [0, 1];
    ``detail`` holds the phase's figures (a fine-tuning epoch: ``epoch``, ``loss``, ``holdout_top1``);
    ``result`` is set once it ``succeeded`` (``result["vector"]`` names the vector it saved), ``error``
    (``{"type", "message", "param", "code"}``) once it ``failed``.
    """

    id: str
    kind: str
    state: JobState
    phase: str
    progress: float
    detail: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created: str
    updated: str

    @property
    def done(self) -> bool:
        """The job has ended (succeeded, failed or cancelled) and will not change again."""
        return self.state in TERMINAL_JOB_STATES

    @property
    def vector(self) -> str | None:
        """Name of the vector a succeeded job saved."""
        if self.result is None:
            return None
        name = self.result.get("vector")
        return name if isinstance(name, str) else None

    @property
    def extract_result(self) -> ExtractResult | None:
        """``result`` of a succeeded extraction, typed (None for other jobs and before success)."""
        if self.kind != "extract" or self.result is None:
            return None
        return ExtractResult.model_validate(self.result)

    @property
    def finetune_result(self) -> FinetuneResult | None:
        """``result`` of a succeeded fine-tuning job, typed (None for other jobs and before success)."""
        if self.kind != "finetune" or self.result is None:
            return None
        return FinetuneResult.model_validate(self.result)

    @property
    def contrast_result(self) -> ContrastResult | None:
        """``result`` of a succeeded contrastive job, typed (None for other jobs and before success)."""
        if self.kind != "contrast" or self.result is None:
            return None
        return ContrastResult.model_validate(self.result)


class HeadMeansCache(_Model):
    """Whether a job's head means came from the cache, and which cache."""

    hit: bool
    backend: CacheBackend


class ScoringCache(_Model):
    """Whether a job's AIE matrix and layer sweep came from the cache, and which cache."""

    aie_hit: bool
    layer_sweep_hit: bool
    backend: CacheBackend


class ExtractMetrics(_Model):
    """What an extraction measured (also a mediation vector's ``metrics``): zero-shot top-1 on the sweep pairs
    without and with the vector, the sweep per layer, the AIE matrix [layer][head], and the options used."""

    sweep_zero_shot_top1: float
    sweep_zero_shot_fv_top1: float
    n_sweep: int
    layer_sweep: dict[int, float]
    aie: list[list[float]]
    n_prompts: int
    n_trials: int
    shots: int
    seed: int


class ExtractResult(_Model):
    """``result`` of a succeeded extraction (``job.extract_result``)."""

    vector: str
    layer: int
    norm: float
    heads: list[tuple[int, int, float]]
    metrics: ExtractMetrics
    phase_seconds: dict[str, float]
    head_means_cache: HeadMeansCache
    scoring_cache: ScoringCache | None = None


class EpochRecord(_Model):
    """One fine-tuning epoch: training loss and top-1, hold-out top-1 (raw prompts; as chat turns where trained on
    them) and loss."""

    epoch: int
    loss: float
    train_top1: float
    holdout_top1: float
    holdout_chat_top1: float | None = None
    holdout_loss: float


class FinetuneMetrics(_Model):
    """What fine-tuning measured (also a fine-tuned vector's ``metrics``): hold-out top-1 at init and after (raw
    prompts, and as chat turns where trained on them), 10-shot prompting on the same pairs, the best epoch, every
    epoch, and the options used."""

    init: str
    epochs: int
    lr: float
    l2: float
    seed: int
    chat: bool
    patience: int | None = None
    n_train: int
    n_holdout: int
    best_epoch: int
    holdout_top1_before: float
    holdout_top1_after: float
    holdout_icl_top1: float
    holdout_chat_top1_before: float | None = None
    holdout_chat_top1_after: float | None = None
    shots: int
    history: list[EpochRecord]
    seconds: dict[str, float]


class FinetuneResult(_Model):
    """``result`` of a succeeded fine-tuning job (``job.finetune_result``)."""

    vector: str
    layer: int
    norm: float
    metrics: FinetuneMetrics
    head_means_cache: HeadMeansCache | None = None


class ContrastResult(_Model):
    """``result`` of a succeeded contrastive job (``job.contrast_result``): ``separation`` is the fraction of the
    pairs whose residual difference points the vector's way."""

    vector: str
    layer: int
    norm: float
    method: Literal["mean_diff", "pca"]
    normalize: Literal["none", "unit"]
    n_pairs: int
    separation: float
    seconds: float


class Accuracy(_Model):
    """First-token accuracy: the answer is the top token (``top1``) or among the top three (``top3``)."""

    top1: float
    top3: float


class Evaluation(_Model):
    """``POST /vectors/{name}/evaluate``: Todd et al.'s five settings on ``n`` held-out pairs.

    ``zero_shot`` / ``zero_shot_fv``: ``"Q: x\nA:"`` without / with the vector; ``icl``: 10-shot prompts;
    ``icl_shuffled`` / ``icl_shuffled_fv``: shuffled-label 10-shot prompts without / with the vector.
    ``n_dropped`` counts pairs left out because the model gets them wrong even with clean 10-shot prompts.
    """

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


class DecodedToken(_Model):
    token: str
    prob: float


class Analogy(_Model):
    """``POST /analogies``: the answer to ``a : b :: c : ?``, the composite weight of each bank relation, and the
    relation scores ``log p(b | a, vector)`` they were inferred from. ``combiner`` is ``"affine"`` (the fitted
    combiner) or ``"softmax"``; ``choice_scores`` is set when choices were given."""

    a: str
    b: str
    c: str
    answer: str
    choice_scores: list[float] | None = None
    weights: dict[str, float]
    scores: dict[str, float]
    combiner: Literal["affine", "softmax"]

    def top_relations(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` relations with the largest weights, largest first."""
        return sorted(self.weights.items(), key=lambda item: item[1], reverse=True)[:k]


class DecodedVector(_Model):
    """``GET /vectors/{name}/decode``: logit lens, the tokens the vector promotes most, most probable first."""

    name: str
    layer: int
    tokens: list[DecodedToken]


class ScoredToken(_Model):
    """One token of a scored continuation: its text, its vocabulary id, and ``log p(token | all before it)``."""

    token: str
    id: int
    logprob: float


class ContinuationScore(_Model):
    """``log p(continuation | prompt)`` (``logprob``, the sum over ``tokens``); ``greedy`` says every token is the
    model's most likely one at its position."""

    continuation: str
    logprob: float
    tokens: list[ScoredToken]
    greedy: bool


class ScoreUsage(_Model):
    """Tokens of the prompt, and of the continuations summed."""

    prompt_tokens: int
    continuation_tokens: int


class Score(_Model):
    """``POST /score``: one ``ContinuationScore`` per continuation, in the order given; ``best`` is the index of the
    most likely one. ``steering`` is None exactly when the scoring ran unsteered."""

    model: str
    scores: list[ContinuationScore]
    best: int
    steering: Steering | None
    usage: ScoreUsage

    @property
    def best_score(self) -> ContinuationScore:
        """The score of the most likely continuation (``scores[best]``)."""
        return self.scores[self.best]

    def ranked(self) -> list[tuple[int, ContinuationScore]]:
        """``(index, score)`` of every continuation, most likely first (ties keep the order given)."""
        return sorted(enumerate(self.scores), key=lambda item: -item[1].logprob)


class Preset(_Model):
    """A steering preset (``GET /admin/presets``, ``PUT /admin/presets/{name}``): relation weights, scale, layer and
    positions saved under ``name``, usable as a model id. ``status`` is ``"broken"`` while vectors it names
    (``missing``) are gone from the registry; it is refused until they are back."""

    name: str
    relations: dict[str, float]
    scale: float
    layer: int | None = None
    positions: Literal["fv", "all"]
    description: str | None = None
    created: datetime
    updated: datetime
    status: Literal["ok", "broken"]
    missing: list[str]


class PresetListing(_Model):
    """``GET /admin/presets``: every preset, by name (``admin.list_presets()`` returns the list inside)."""

    presets: list[Preset]
