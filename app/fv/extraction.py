"""The causal-mediation extraction pipeline: prompts → head means → AIE → top-k heads → FV → layer, each of the
head means, the AIE and the layer sweep cached (``app/cache``), so a repeat recomputes only what its options change.

Every model forward goes through ``run`` so a job can execute them on the engine's thread between
decode steps; ``report`` receives (phase, fraction) progress and may raise to cancel.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from app.cache.extraction_results import (
    AieKey,
    LayerSweep,
    SweepKey,
    get_aie,
    get_sweep,
    heads_sha256,
    put_aie,
    put_sweep,
)
from app.cache.head_means import HeadMeanCache, HeadMeanKey
from app.errors import InvalidInput
from app.fv.activations import mean_head_outputs
from app.fv.mediation import ScoredPrompt, aie_fast, all_heads, top_heads
from app.fv.options import ExtractionOptions
from app.fv.pairs import Pair, Split, dataset_sha256, split_pairs
from app.fv.prompts import (
    DEFAULT_SHOTS,
    Template,
    bos_prefix,
    check_prompt_bound,
    icl_prompt_bound,
    icl_prompts,
    zero_shot_prompts,
)
from app.fv.sweep import sweep_layers
from app.fv.vector import function_vector
from app.model.adapter import ModelAdapter
from app.model.handle import ModelHandle
from app.model.runner import Runner, run_here

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

# Weights of each phase in the job's overall progress fraction.
PHASES = {"means": 0.25, "scoring": 0.6, "layer_sweep": 0.15}
SWEEP_TRAIN_PAIRS = 24


@dataclass(frozen=True)
class ExtractionSpec(ExtractionOptions):
    pairs: list[Pair] = field(default_factory=list)
    shots: int = DEFAULT_SHOTS
    template: Template = field(default_factory=Template)

    @classmethod
    def of(cls, pairs: list[Pair], options: ExtractionOptions) -> ExtractionSpec:
        return cls(pairs=pairs, **dataclasses.asdict(options))


@dataclass
class ExtractionResult:
    vector: Tensor
    layer: int
    heads: list[tuple[int, int, float]]
    aie: Tensor
    sweep: dict[int, float]
    metrics: dict[str, Any]
    dataset_sha256: str
    phase_seconds: dict[str, float]
    cache_hit: bool
    aie_cache_hit: bool
    sweep_cache_hit: bool

    def metadata(self, name: str, relation: str, spec: ExtractionSpec) -> dict[str, str]:
        return {
            "name": name,
            "relation": relation,
            "layer": str(self.layer),
            "method": "cma",
            "heads": json.dumps([[layer, head, round(aie, 6)] for layer, head, aie in self.heads]),
            "dataset_sha256": self.dataset_sha256,
            "n_pairs": str(len(spec.pairs)),
            "template": spec.template.describe(),
            "metrics": json.dumps(self.metrics),
        }


def check_spec(spec: ExtractionSpec, adapter: ModelAdapter) -> None:
    """Refuse parameters the model cannot satisfy, naming the limit."""
    total_heads = adapter.n_layers * adapter.n_heads
    if not 1 <= spec.n_heads <= total_heads:
        raise InvalidInput(f"n_heads is {spec.n_heads}; the model has {total_heads} heads", param="n_heads")
    if spec.layer != "auto" and not 0 <= spec.layer < adapter.n_layers:
        raise InvalidInput(f"layer {spec.layer} is outside the model's 0..{adapter.n_layers - 1}", param="layer")


def check_prompt_lengths(spec: ExtractionSpec, model: ModelHandle, limit: int) -> None:
    """Refuse (422, naming ``shots`` and the limit) pairs whose in-context prompts may run over ``limit`` tokens:
    before any forward, as a completion's prompt is refused."""
    split = split_pairs(spec.pairs, spec.seed)
    shots = min(spec.shots, len(split.train) - 1)
    prefix = bos_prefix(model.tokenizer, model.adapter.adds_bos)
    check_prompt_bound(icl_prompt_bound(model.tokenizer, spec.template, prefix, split.train, spec.pairs, shots),
                       limit, shots)


def extract(
    model: ModelHandle,
    spec: ExtractionSpec,
    cache: HeadMeanCache,
    *,
    run: Runner[Any] = run_here,
    report: Progress = lambda phase, fraction: None,
) -> ExtractionResult:
    adapter, tokenizer = model.adapter, model.tokenizer
    check_spec(spec, adapter)
    split = split_pairs(spec.pairs, spec.seed)
    shots = min(spec.shots, len(split.train) - 1)
    prefix = bos_prefix(tokenizer, adapter.adds_bos)
    rng = random.Random(spec.seed)
    digest = dataset_sha256(spec.pairs)
    timings: dict[str, float] = {}
    done = 0.0

    def progress(phase: str) -> Callable[[int, int], None]:
        return lambda step, total: report(phase, done + PHASES[phase] * step / total)

    # Phase 1: mean head outputs over N clean prompts (cached).
    started = time.monotonic()
    report("means", 0.0)
    key = HeadMeanKey(model.fingerprint, spec.template.describe(), digest, shots, spec.n_prompts, spec.seed)
    shape = (adapter.n_layers, adapter.n_heads, adapter.head_dim)
    means = cache.get(key, shape)
    cache_hit = means is not None
    if means is None:
        queries = [rng.choice(split.train) for _ in range(spec.n_prompts)]
        clean = icl_prompts(tokenizer, spec.template, prefix, split.train, queries, rng, shots)
        means = mean_head_outputs(adapter, tokenizer, [item.text for item in clean], run=run,
                                  on_batch=progress("means"))
        cache.put(key, means)
    timings["means"] = time.monotonic() - started
    done += PHASES["means"]

    # Phase 2: AIE of every head on corrupted prompts (cached: a repeat with another n_heads reuses it).
    started = time.monotonic()
    heads_scored = all_heads(adapter)
    aie_key = AieKey(key, spec.seed + 1, spec.n_trials, heads_sha256(heads_scored))
    aie = get_aie(cache, aie_key, (adapter.n_layers, adapter.n_heads))
    aie_hit = aie is not None
    if aie is None:
        trial_rng = random.Random(aie_key.trials_seed)
        trial_queries = [trial_rng.choice(split.train) for _ in range(spec.n_trials)]
        corrupted = icl_prompts(tokenizer, spec.template, prefix, split.train, trial_queries, trial_rng, shots,
                                shuffle_labels=True)
        scored = [ScoredPrompt(tokenizer(item.text).input_ids, item.answer_token) for item in corrupted]
        aie = aie_fast(adapter, scored, means, heads_scored, run=run, on_prompt=progress("scoring"))
        put_aie(cache, aie_key, aie)
    heads = top_heads(aie, spec.n_heads)
    vector = function_vector(adapter, means, heads)
    timings["scoring"] = time.monotonic() - started
    done += PHASES["scoring"]

    # Phase 3: the layer, swept unless given (cached with everything that makes the vector).
    started = time.monotonic()
    layers = list(range(adapter.n_layers)) if spec.layer == "auto" else [spec.layer]
    sweep_key = SweepKey(aie_key, spec.n_heads, tuple(layers), spec.seed + 2, SWEEP_TRAIN_PAIRS)
    sweep = get_sweep(cache, sweep_key)
    sweep_hit = sweep is not None
    if sweep is None:
        sweep = _sweep_layers(model, spec, split, sweep_key, vector, run=run, on_layer=progress("layer_sweep"))
        put_sweep(cache, sweep_key, sweep)
    best, baseline = sweep.best, sweep.baseline
    timings["layer_sweep"] = time.monotonic() - started
    report("done", 1.0)
    metrics = {
        "sweep_zero_shot_top1": baseline,
        "sweep_zero_shot_fv_top1": sweep.scores[best],
        "n_sweep": len(split.valid) + min(SWEEP_TRAIN_PAIRS, len(split.train)),
        "layer_sweep": {str(layer): score for layer, score in sweep.scores.items()},
        "aie": [[round(float(value), 6) for value in row] for row in aie],
        "n_prompts": spec.n_prompts,
        "n_trials": spec.n_trials,
        "shots": shots,
        "seed": spec.seed,
    }
    log.info("extracted FV: layer %d, heads %s, sweep top-1 %.2f → %.2f (cache: means %s, AIE %s, sweep %s)", best,
             [(layer, head) for layer, head, _ in heads], baseline, sweep.scores[best], _word(cache_hit),
             _word(aie_hit), _word(sweep_hit))
    return ExtractionResult(vector, best, heads, aie, sweep.scores, metrics, digest, timings, cache_hit, aie_hit,
                            sweep_hit)


def _word(hit: bool) -> str:
    return "hit" if hit else "miss"


def _sweep_layers(
    model: ModelHandle, spec: ExtractionSpec, split: Split, key: SweepKey, vector: Tensor, *, run: Runner[Any],
    on_layer: Callable[[int, int], None],
) -> LayerSweep:
    """Zero-shot top-1 with the vector at each layer of ``key.layers``; ties go to the answers' log-probability.

    The validation split of a 60-100 pair dataset holds only 5-9 pairs, too few to tell layers apart, so
    training pairs asked zero-shot join it (never test pairs).
    """
    adapter, tokenizer = model.adapter, model.tokenizer
    prefix = bos_prefix(tokenizer, adapter.adds_bos)
    extra = random.Random(key.pairs_seed).sample(split.train, min(key.train_pairs, len(split.train)))
    valid = zero_shot_prompts(tokenizer, spec.template, prefix, split.valid + extra)
    layers = list(key.layers)
    swept = sweep_layers(adapter, tokenizer, valid, vector, layers, run=run, on_batch=on_layer)
    top = max(swept.top1.values())
    # A handful of validation pairs ties often: the answers' log-probability decides.
    best = max((layer for layer in layers if swept.top1[layer] == top), key=lambda layer: swept.log_prob[layer])
    return LayerSweep(swept.top1, best, swept.baseline_top1)
