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


class CompletionChunk(_Model):
    """One event of a streamed ``POST /complete``: ``text`` is the next piece of the text; the last chunk has
    ``text == ""`` and ``completion`` set (the whole response: text, finish_reason, usage, steering)."""

    text: str
    completion: Completion | None = None


class VectorSummary(_Model):
    """One entry of ``GET /vectors``."""

    name: str
    relation: str | None = None
    layer: int
    norm: float
    method: str
    model: str


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
    cache: str | None = None
    """Head-mean cache backend: ``memory``, ``redis``, or ``degraded`` (then ``status`` is ``degraded`` too)."""


JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})


class Job(_Model):
    """A background job (``POST /vectors/extract``, ``GET /jobs/{id}``): one snapshot of it.

    ``state`` is one of ``queued | running | succeeded | failed | cancelled``; ``progress`` is in [0, 1];
    ``detail`` holds the phase's figures (a fine-tuning epoch: ``epoch``, ``loss``, ``holdout_top1``);
    ``result`` is set once it ``succeeded`` (``result["vector"]`` names the vector it saved), ``error``
    (``{"type", "message", "param"}``) once it ``failed``.
    """

    id: str
    kind: str
    state: str
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
    combiner: str

    def top_relations(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` relations with the largest weights, largest first."""
        return sorted(self.weights.items(), key=lambda item: item[1], reverse=True)[:k]


class DecodedVector(_Model):
    """``GET /vectors/{name}/decode``: logit lens, the tokens the vector promotes most, most probable first."""

    name: str
    layer: int
    tokens: list[DecodedToken]
