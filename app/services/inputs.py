"""What the fronts validate a request into, before any service runs: typed inputs and their limits. Torch-free, so
the HTTP layer's schemas (and anything else that only checks a request) never load the science code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from app.errors import InvalidInput
from app.fv.options import ContrastMethod, ExtractionOptions, FinetuneOptions, Normalization
from app.fv.pairs import Pair, relation_pairs, validate_pairs
from app.jobs.queue import Payload

MAX_CONTINUATIONS = 32
MAX_CHOICES = 32
MAX_TERM_CHARS = 200
MIN_CONTRAST_PAIRS = 2
MAX_CONTRAST_PAIRS = 1000
MAX_CONTRAST_CHARS = 2000


@dataclass(frozen=True)
class AnalogyInput:
    a: str
    b: str
    c: str
    choices: list[str] | None = None
    max_new_tokens: int = 8


@dataclass(frozen=True)
class ScoreInput:
    prompt: str
    continuations: list[str]
    relations: dict[str, float] = field(default_factory=dict)
    scale: float = 1.0
    layer: int | None = None
    positions: Literal["fv", "all"] = "fv"


@dataclass(frozen=True)
class PairSource:
    """Exactly one of a shipped relation's name or the user's own pairs."""

    relation: str | None = None
    pairs: list[dict[str, str]] | None = None

    def resolve(self) -> tuple[str, list[Pair]]:
        """(relation label, validated pairs)."""
        if (self.relation is None) == (self.pairs is None):
            raise InvalidInput("give exactly one of 'relation' (a shipped relation) or 'pairs' (a list)",
                               param="relation")
        if self.relation is not None:
            return self.relation, relation_pairs(self.relation)
        return "custom", validate_pairs(self.pairs)


@dataclass(frozen=True)
class ExtractionInput:
    name: str
    source: PairSource
    options: ExtractionOptions = field(default_factory=ExtractionOptions)

    @classmethod
    def from_payload(cls, payload: Payload) -> ExtractionInput:
        return cls(payload["name"], PairSource(**payload["source"]), ExtractionOptions(**payload["options"]))


@dataclass(frozen=True)
class FinetuneInput:
    name: str
    source: PairSource
    options: FinetuneOptions = field(default_factory=FinetuneOptions)
    init_vector: str | None = None  # with init "vector": the stored vector to start from

    @classmethod
    def from_payload(cls, payload: Payload) -> FinetuneInput:
        return cls(payload["name"], PairSource(**payload["source"]), FinetuneOptions(**payload["options"]),
                   payload.get("init_vector"))


@dataclass(frozen=True)
class ContrastInput:
    """Prompt pairs (``positives[i]`` against ``negatives[i]``, already put into any template) and how to turn the
    difference of their residuals at ``layer`` into a control vector."""

    name: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    layer: int
    method: ContrastMethod = "mean_diff"
    normalize: Normalization = "none"
    relation: str | None = None

    def payload(self) -> Payload:
        return {"name": self.name, "positives": list(self.positives), "negatives": list(self.negatives),
                "layer": self.layer, "method": self.method, "normalize": self.normalize, "relation": self.relation}

    @classmethod
    def from_payload(cls, payload: Payload) -> ContrastInput:
        return cls(payload["name"], tuple(payload["positives"]), tuple(payload["negatives"]), payload["layer"],
                   payload["method"], payload["normalize"], payload.get("relation"))


@dataclass(frozen=True)
class EvaluationInput:
    source: PairSource
    seed: int = 0
    shots: int = 10
