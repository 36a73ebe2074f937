"""What the client methods take besides plain values: the option sets of the larger routes and argument aliases.

The option sets are ``TypedDict``s so that ``**options`` is checked by a type checker, and so that the field
names the server accepts are written down once (``_calls`` derives its allow-lists from them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TypedDict

from fvsteer_client.models import Job
from fvsteer_client.pairs import PairsSource

__all__ = [
    "CompletionOptions", "EvaluateOptions", "ExtractOptions", "FinetuneOptions", "JobRef", "ProgressCallback",
    "VectorSource",
]

VectorSource = str | os.PathLike[str] | bytes
"""A safetensors file to upload: its path, or its bytes."""
JobRef = str | Job
"""A job id, or a ``Job`` (its ``id`` is used), wherever a job is named."""
ProgressCallback = Callable[[Job], object]
"""Called with every job snapshot while waiting; an ``AsyncClient`` also awaits what it returns, if awaitable."""


class CompletionOptions(TypedDict, total=False):
    """Optional fields of ``POST /complete``; a field left out (or None) is not sent, so the server default applies.
    ``messages`` (``[{"role", "content"}, …]``, rendered by the model's chat template) replaces the prompt."""

    messages: Sequence[Mapping[str, str]] | None
    relations: Mapping[str, float] | None
    layer: int | None
    scale: float | None
    positions: Literal["fv", "all"] | None
    max_new_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: str | Sequence[str] | None
    return_baseline: bool | None


class ExtractOptions(TypedDict, total=False):
    """Fields of ``POST /vectors/extract`` besides ``name``: exactly one of ``relation`` (a shipped relation) or
    ``pairs`` (see ``PairsSource``); the rest default on the server (100 prompts, 25 trials, 10 heads,
    ``layer="auto"``, seed 0)."""

    relation: str | None
    pairs: PairsSource | None
    n_prompts: int | None
    n_trials: int | None
    n_heads: int | None
    layer: int | Literal["auto"] | None
    seed: int | None


class FinetuneOptions(TypedDict, total=False):
    """Fields of ``POST /vectors/finetune`` besides ``name``: exactly one of ``relation`` or ``pairs``; ``init`` is
    ``"mediation"`` (default), ``"zero"``, ``"random"`` or ``"vector"`` (with ``init_vector``, a stored vector's
    name); ``layer``, ``epochs``, ``lr``, ``l2``, ``seed``, ``chat`` (also train on chat-rendered prompts, default
    true) and ``patience`` default on the server (the tuned values)."""

    relation: str | None
    pairs: PairsSource | None
    init: Literal["mediation", "zero", "random", "vector"] | None
    init_vector: str | None
    layer: int | None
    epochs: int | None
    lr: float | None
    l2: float | None
    seed: int | None
    chat: bool | None
    patience: int | None


class EvaluateOptions(TypedDict, total=False):
    """Fields of ``POST /vectors/{name}/evaluate``: exactly one of ``relation`` or ``pairs``; ``seed`` and
    ``shots`` (demonstrations per in-context prompt, default 10) are optional."""

    relation: str | None
    pairs: PairsSource | None
    seed: int | None
    shots: int | None
