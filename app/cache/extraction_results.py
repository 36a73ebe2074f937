"""What a repeat extraction reuses beyond the head means: the AIE matrix and the layer sweep.

A repeat with the same options reads the means, the AIE and the sweep and costs seconds; one with another
``n_heads`` reuses the means and the AIE and sweeps again (its vector differs). Each key extends the
head-means key with everything else that changes its result, so a changed option is another key: a miss.
Records live in the head-mean cache's store (a Redis hash per key, or the in-process LRU) and share its
fault tolerance; a record that does not decode is a miss, logged, never a wrong answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from app.cache.head_means import HeadMeanCache, HeadMeanKey

log = logging.getLogger(__name__)

AIE_PREFIX = "fvsteer:aie:v1:"
SWEEP_PREFIX = "fvsteer:layer-sweep:v1:"


def _sha256(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def heads_sha256(heads: list[tuple[int, int]]) -> str:
    """The scored head set, as part of a key."""
    return _sha256([list(head) for head in heads])


@dataclass(frozen=True)
class AieKey:
    """The head means' key, plus the corrupted prompts (their seed and number) and the heads scored."""

    means: HeadMeanKey
    trials_seed: int
    n_trials: int
    heads_sha256: str

    def digest(self) -> str:
        return AIE_PREFIX + _sha256(asdict(self))


@dataclass(frozen=True)
class SweepKey:
    """The AIE's key, plus what makes the vector (``n_heads``) and what the sweep asks (pairs, layers)."""

    aie: AieKey
    n_heads: int
    layers: tuple[int, ...]
    pairs_seed: int
    train_pairs: int

    def digest(self) -> str:
        return SWEEP_PREFIX + _sha256(asdict(self))


@dataclass(frozen=True)
class LayerSweep:
    """Zero-shot top-1 with the vector at each layer, the layer chosen (ties broken) and top-1 without it."""

    scores: dict[int, float]
    best: int
    baseline: float


def get_aie(cache: HeadMeanCache, key: AieKey, shape: tuple[int, int]) -> Tensor | None:
    fields = cache.get_record(key.digest())
    if fields is None:
        return None
    try:
        meta = json.loads(fields["meta"])
        if meta.get("shape") != list(shape):
            raise ValueError(f"cached shape {meta.get('shape')} != {list(shape)}")
        values = np.frombuffer(fields["aie"], dtype=np.float32)
        if values.size != shape[0] * shape[1] or not np.isfinite(values).all():
            raise ValueError("the matrix is truncated or not finite")
    except Exception as exc:  # whatever is wrong with a stored record, it is a miss, never a crash
        log.warning("AIE cache record is corrupt (%s); recomputing", exc)
        return None
    return torch.from_numpy(values.copy()).reshape(shape)


def put_aie(cache: HeadMeanCache, key: AieKey, aie: Tensor) -> None:
    array = aie.detach().to("cpu", torch.float32).numpy()
    cache.put_record(key.digest(), {"meta": json.dumps({"shape": list(array.shape)}).encode(),
                                    "aie": array.tobytes()})


def get_sweep(cache: HeadMeanCache, key: SweepKey) -> LayerSweep | None:
    fields = cache.get_record(key.digest())
    if fields is None:
        return None
    try:
        record = json.loads(fields["sweep"])
        scores = {int(layer): float(score) for layer, score in record["scores"].items()}
        if sorted(scores) != sorted(key.layers) or int(record["best"]) not in scores:
            raise ValueError("the layers do not match the key")
        baseline = float(record["baseline"])
        if not all(0.0 <= score <= 1.0 for score in [*scores.values(), baseline]):  # NaN fails this too
            raise ValueError("a score is not a proportion")
        return LayerSweep(scores, int(record["best"]), baseline)
    except Exception as exc:
        log.warning("layer-sweep cache record is corrupt (%s); sweeping again", exc)
        return None


def put_sweep(cache: HeadMeanCache, key: SweepKey, sweep: LayerSweep) -> None:
    record = {"scores": {str(layer): score for layer, score in sweep.scores.items()}, "best": sweep.best,
              "baseline": sweep.baseline}
    cache.put_record(key.digest(), {"sweep": json.dumps(record).encode()})
