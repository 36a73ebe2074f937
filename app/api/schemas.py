"""Request and response bodies of the v1 HTTP contract (README, "HTTP API"). Unknown request fields are refused.

Request models convert themselves into the services' typed inputs (``to_input``); response bodies are the models
the services return (:mod:`app.services.results`, :mod:`app.registry.metadata`), re-exported here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.engine.requests import MAX_ABS_WEIGHT, MAX_RELATIONS
from app.errors import InvalidInput
from app.fv.options import (
    DEFAULT_EPOCHS,
    DEFAULT_L2,
    DEFAULT_LR,
    DEFAULT_PATIENCE,
    LIMITS,
    ContrastMethod,
    ExtractionOptions,
    FinetuneOptions,
    Normalization,
)
from app.fv.pairs import MAX_ANSWERS, MAX_TEXT_CHARS
from app.registry.metadata import VectorInfo, VectorMetadata, VectorSummary
from app.services.completions import ChatLine, CompletionInput
from app.services.inputs import (
    MAX_CHOICES,
    MAX_CONTINUATIONS,
    MAX_CONTRAST_CHARS,
    MAX_CONTRAST_PAIRS,
    MAX_TERM_CHARS,
    MIN_CONTRAST_PAIRS,
    AnalogyInput,
    ContrastInput,
    EvaluationInput,
    ExtractionInput,
    FinetuneInput,
    PairSource,
    ScoreInput,
)
from app.services.results import (
    AnalogyResponse,
    CompleteResponse,
    DecodedVector,
    ErrorBody,
    ErrorEnvelope,
    EvaluationResult,
    JobView,
    ScoreResponse,
)

__all__ = [
    "AnalogyResponse", "CompleteResponse", "DecodedVector", "ErrorBody", "ErrorEnvelope", "EvaluationResult",
    "JobView", "ScoreResponse", "VectorInfo", "VectorMetadata", "VectorSummary",
]
EXTRACTION_DEFAULTS = ExtractionOptions()

MAX_PROMPT_CHARS = 100_000
MAX_STOP = 8
MAX_TURNS = 256
MAX_STOP_CHARS = 64

Weight = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_WEIGHT, le=MAX_ABS_WEIGHT)]
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Answer = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types exactly: no "1" for 1, no false for 0.0


class ChatTurn(Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


class CompleteRequest(Strict):
    prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS,
                               description="Text to continue; or give 'messages'.")
    messages: list[ChatTurn] | None = Field(
        None, min_length=1, max_length=MAX_TURNS,
        description="A conversation, rendered by the model's chat template (ending with the assistant's turn), "
                    "instead of 'prompt'.",
    )
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
    stream: bool = Field(False, description="Server-sent events: 'token' events ({text}) for the steered text and, "
                         "with return_baseline, 'baseline' events ({text}) for the baseline's, then 'done' with the "
                         "whole response, or 'error' with the error envelope.")
    return_baseline: bool = Field(False, description="Also return the unsteered text, generated in the same batch.")

    def to_input(self) -> CompletionInput:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidInput("give exactly one of 'prompt' and 'messages'", param="prompt")
        turns = tuple(ChatLine(turn.role, turn.content) for turn in self.messages) if self.messages else None
        return CompletionInput(**{**self.model_dump(exclude={"stream", "messages"}), "messages": turns,
                                  "prompt": self.prompt or "", "relations": dict(self.relations or {}),
                                  "stop": tuple(self.stop or ())})


class ScoreRequest(Strict):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="Text the continuations follow.")
    continuations: list[Annotated[str, Field(min_length=1, max_length=1000)]] = Field(
        min_length=1, max_length=MAX_CONTINUATIONS,
        description="Candidates, each tokenized on its own and appended to the prompt (write a leading space "
        "where the text needs one).",
    )
    relations: dict[str, Weight] | None = Field(
        None, max_length=MAX_RELATIONS, description="Vector name → weight; empty or absent = unsteered."
    )
    layer: int | None = Field(None, ge=0, description="Put every vector at this layer instead of its own.")
    scale: float = Field(1.0, allow_inf_nan=False, ge=-100.0, le=100.0, description="Multiplies the composite.")
    positions: Literal["fv", "all"] = Field(
        "fv", description="'fv': the prompt's last token and every continuation token; 'all': every token."
    )

    def to_input(self) -> ScoreInput:
        return ScoreInput(self.prompt, list(self.continuations), dict(self.relations or {}), self.scale, self.layer,
                          self.positions)


class VectorList(BaseModel):
    vectors: list[VectorSummary]


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
    registry: Literal["local", "redis", "degraded"] = Field(
        "local", description="How other replicas' vector changes reach this one: local (no Redis), redis, or "
        "degraded (Redis lost: only the folder rescan every FVSTEER_REGISTRY_RESYNC_S brings them).")


class PairIn(Strict):
    input: str = Field(min_length=1, max_length=200)
    output: Answer | list[Answer] = Field(
        description=f"The answer, or a list of 1 to {MAX_ANSWERS} accepted answers (the primary one, used in "
                    "demonstrations, first).")

    @field_validator("output")
    @classmethod
    def _answer_count(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= MAX_ANSWERS:
            raise ValueError(f"a pair accepts 1 to {MAX_ANSWERS} answers; {len(value)} given")
        return value


class WithPairs(Strict):
    relation: str | None = Field(None, description="A shipped relation (see the README); or give 'pairs'.")
    pairs: list[PairIn] | None = Field(None, max_length=10_000, description="Your own pairs (at least 12).")

    def pair_source(self) -> PairSource:
        pairs = None if self.pairs is None else [pair.model_dump() for pair in self.pairs]
        return PairSource(self.relation, pairs)


class ExtractRequest(WithPairs):
    name: str = Field(description="Name of the vector to create.")
    n_prompts: int = Field(EXTRACTION_DEFAULTS.n_prompts, ge=1, le=1000,
                           description="Clean 10-shot prompts averaged for head means (N).")
    n_trials: int = Field(EXTRACTION_DEFAULTS.n_trials, ge=1, le=500,
                          description="Corrupted prompts over which each head's AIE is averaged.")
    n_heads: int = Field(EXTRACTION_DEFAULTS.n_heads, ge=1, description="Heads summed into the vector (top-k by AIE).")
    layer: int | Literal["auto"] = Field(EXTRACTION_DEFAULTS.layer,
                                         description="Block to add the vector at; 'auto' sweeps them all.")
    seed: int = Field(EXTRACTION_DEFAULTS.seed, ge=0, le=2**31 - 1,
                      description="Seeds the split, prompts and shuffles.")

    def to_input(self) -> ExtractionInput:
        options = ExtractionOptions(**self.model_dump(exclude={"name", "relation", "pairs"}))
        return ExtractionInput(self.name, self.pair_source(), options)


class FinetuneRequest(WithPairs):
    name: str = Field(description="Name of the vector to create.")
    init: Literal["mediation", "zero", "random", "vector"] = Field(
        "mediation", description="Start from the mediation FV of the same pairs, zeros, a seeded random vector, "
        "or the stored vector named by init_vector."
    )
    init_vector: str | None = Field(None, description="With init 'vector': the stored vector to start from.")
    layer: int | None = Field(None, ge=0, description="Block the vector is trained at; default ≈ 30 % of the depth.")
    epochs: int = Field(DEFAULT_EPOCHS, ge=LIMITS["epochs"][0], le=LIMITS["epochs"][1],
                        description="Full-batch training steps at most (the cosine schedule's length).")
    patience: int = Field(DEFAULT_PATIENCE, ge=LIMITS["patience"][0], le=LIMITS["patience"][1],
                          description="Stop once this many epochs have not beaten the best hold-out score.")
    lr: float = Field(DEFAULT_LR, allow_inf_nan=False, ge=LIMITS["lr"][0], le=LIMITS["lr"][1],
                      description="Adam's learning rate (cosine schedule).")
    l2: float = Field(DEFAULT_L2, allow_inf_nan=False, ge=LIMITS["l2"][0], le=LIMITS["l2"][1],
                      description="Weight of ‖v − v₀‖² in the loss.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the split, the hold-out and a random init.")
    chat: bool = Field(True, description="Also train (and pick the checkpoint) on the pairs rendered by the model's "
                       "chat template, so the vector steers chat turns too; ignored for a model without one.")

    def to_input(self) -> FinetuneInput:
        options = FinetuneOptions(**self.model_dump(exclude={"name", "relation", "pairs", "init_vector"}))
        return FinetuneInput(self.name, self.pair_source(), options, self.init_vector)


class ContrastPair(Strict):
    positive: str = Field(min_length=1, max_length=MAX_CONTRAST_CHARS, description="A prompt showing the behaviour.")
    negative: str = Field(min_length=1, max_length=MAX_CONTRAST_CHARS, description="Its contrast: the opposite.")


class ContrastRequest(Strict):
    name: str = Field(description="Name of the vector to create.")
    pairs: list[ContrastPair] = Field(min_length=MIN_CONTRAST_PAIRS, max_length=MAX_CONTRAST_PAIRS,
                                      description="Prompt pairs: the vector is what separates positive from negative.")
    template: str | None = Field(None, max_length=MAX_CONTRAST_CHARS, description="Put each side into this text "
                                 "where '{}' stands (once), e.g. 'Act as if you are extremely {}. Tell me a story.'")
    layer: int = Field(ge=0, description="Block whose output the vector is taken from and added to.")
    method: ContrastMethod = Field("mean_diff", description="'mean_diff': the mean of the paired differences "
                                   "(CAA); 'pca': their first principal axis, scaled to the mean (repeng).")
    normalize: Normalization = Field("none", description="'unit': norm 1 (the weight sets the size); 'none': the "
                                     "size the activations give.")
    relation: str | None = Field(None, max_length=64, description="What it encodes (default: the name).")

    @field_validator("template")
    @classmethod
    def _one_slot(cls, value: str | None) -> str | None:
        if value is not None and value.count("{}") != 1:
            raise ValueError("template must hold '{}' exactly once")
        return value

    def to_input(self) -> ContrastInput:
        fill = (lambda side: side) if self.template is None else (lambda side: self.template.replace("{}", side))
        return ContrastInput(self.name, tuple(fill(pair.positive) for pair in self.pairs),
                             tuple(fill(pair.negative) for pair in self.pairs), self.layer, self.method,
                             self.normalize, self.relation)


class AnalogyRequest(Strict):
    a: str = Field(min_length=1, max_length=MAX_TERM_CHARS, description="Source term A of A:B :: C:?")
    b: str = Field(min_length=1, max_length=MAX_TERM_CHARS, description="Source term B: A:B shows the relation.")
    c: str = Field(min_length=1, max_length=MAX_TERM_CHARS, description="Query term C.")
    choices: list[Annotated[str, Field(min_length=1, max_length=MAX_TERM_CHARS)]] | None = Field(
        None, min_length=2, max_length=MAX_CHOICES, description="Candidate answers D; the best-scoring one is "
        "returned. Without choices the answer is generated."
    )
    max_new_tokens: int = Field(8, ge=1, le=64, description="Tokens generated for an answer without choices.")

    def to_input(self) -> AnalogyInput:
        return AnalogyInput(**self.model_dump())


class EvaluateRequest(WithPairs):
    seed: int = Field(0, ge=0, le=2**31 - 1)
    shots: int = Field(10, ge=1, le=20, description="Demonstrations per in-context prompt.")

    def to_input(self) -> EvaluationInput:
        return EvaluationInput(self.pair_source(), self.seed, self.shots)
