"""What serving hands a generation backend and what it gets back: the types of the generation seam.

Steering crosses the seam as weights over named bank vectors (:class:`BankSteering`), never as summed tensors, so
a backend can keep the bank on its device and build each row's composite itself. Nothing here imports torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from app.errors import InvalidInput
from app.model.tokens import TokenLogprob

T = TypeVar("T")
FinishReason = Literal["stop", "length", "timeout", "cancelled"]
Positions = Literal["fv", "all"]
MAX_RELATIONS = 64
MAX_ABS_WEIGHT = 1000.0
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k: each generated token's log-probability and the k likeliest


@dataclass(frozen=True)
class BankSteering:
    """``scale · Σ wᵢ · vᵢ`` over bank vectors named in ``weights``, each added at its own layer (or all at
    ``layer``), at the positions the FV policy steers (``"fv"``: the last prompt token and every generated token;
    ``"all"``: every prompt token too). Zero weights are kept here (their names must still exist) and add nothing.
    """

    weights: Mapping[str, float]
    scale: float = 1.0
    layer: int | None = None
    positions: Positions = "fv"

    @classmethod
    def checked(cls, weights: Mapping[str, float], *, scale: float = 1.0, layer: int | None = None,
                positions: Positions = "fv") -> BankSteering:
        """Refuse what no backend can apply, naming the parameter and the limit."""
        if len(weights) > MAX_RELATIONS:
            raise InvalidInput(f"relations has {len(weights)} entries; the limit is {MAX_RELATIONS}",
                               param="relations")
        if not math.isfinite(scale):
            raise InvalidInput("scale must be a finite number", param="scale")
        for name, weight in weights.items():
            if not math.isfinite(weight) or abs(weight) > MAX_ABS_WEIGHT:
                raise InvalidInput(f"weight of {name!r} must be finite and within ±{MAX_ABS_WEIGHT:g}",
                                   param=f"relations.{name}")
        return cls(dict(weights), scale, layer, positions)

    @property
    def applied(self) -> dict[str, float]:
        """The weights that add something (zero weights dropped)."""
        return {name: weight for name, weight in self.weights.items() if weight != 0.0}


@dataclass(frozen=True)
class AppliedVector:
    """One bank vector as a row got it: its content ``digest`` (16 hex digits of the SHA-256 of its float32 values,
    the key the vLLM plugin pins) and its ``weight`` with the request's scale already multiplied in."""

    name: str
    digest: str
    weight: float


@dataclass(frozen=True)
class AppliedLayer:
    vectors: tuple[AppliedVector, ...]
    norm: float  # L2 norm of the composite added at this layer


@dataclass(frozen=True)
class SteeringReceipt:
    """What a backend added to a row, made at the moment it took the vectors (so a vector replaced a moment later
    never shows up here): per layer, the vectors by name and digest and the composite's norm, and the positions."""

    layers: Mapping[int, AppliedLayer]
    positions: Positions


@dataclass
class GenerationRequest:
    """One row to generate; ``steering`` None = unsteered.

    The backend resolves ``admitted`` when the row joins a batch and ``future`` when it ends; ``on_text`` (streaming)
    is called from the backend's thread with each new piece of text; :meth:`cancel` asks it to drop the row.
    """

    prompt_ids: list[int]
    params: SamplingParams
    steering: BankSteering | None = None
    deadline: float | None = None
    on_text: Callable[[str], None] | None = None
    future: Future[GenerationResult] = field(default_factory=Future)
    admitted: Future[None] = field(default_factory=Future)
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        """Ask the backend to drop this row at its next step (e.g. the client went away)."""
        self.cancelled = True

    def fail(self, error: BaseException) -> None:
        """End the row with an error, also while it still waits to be admitted."""
        settle(self.admitted, error=error)
        settle(self.future, error=error)


@dataclass(frozen=True)
class GenerationResult:
    """``receipt``: what the backend added (None for an unsteered row), made by the backend that applied it, so
    that a response never claims steering that did not happen."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    batch_sizes: tuple[int, ...]
    receipt: SteeringReceipt | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per token id, when the params asked for them

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def settle(future: Future[T], result: T | None = None, error: BaseException | None = None) -> None:
    """Set a future's outcome unless it already has one — also when its waiter cancelled it a moment ago (a
    client that went away): that must never become an error of the backend."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass
