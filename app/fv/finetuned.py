"""A fine-tuned vector made from a relation's pairs, end to end: the split, the initial vector, the training, the
10-shot comparison on the same hold-out, and the metadata that records all of it.

The fine-tuning job calls :func:`make_finetuned`; ``make vectors`` (the starter bank) calls
:func:`make_finetuned_many`, the same steps with the trainings batched, so a bank vector and a user's vector are
made the same way. The pairs' test split (the one ``POST /vectors/{name}/evaluate``
scores) is never trained on: training uses train + valid, and a seeded hold-out of those picks the checkpoint.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from app.cache.head_means import HeadMeanCache
from app.errors import InvalidInput
from app.fv.batched_finetune import ROWS_PER_FORWARD, finetune_many
from app.fv.evaluation import accuracy, ranks_of_answers
from app.fv.extraction import ExtractionSpec, extract
from app.fv.finetune import FinetuneSpec, TrainedCheckpoint, finetune, split_holdout
from app.fv.options import DEFAULT_LAYER_FRACTION, LIMITS, FinetuneOptions
from app.fv.pairs import Pair, dataset_sha256, split_pairs
from app.fv.prompts import DEFAULT_SHOTS, Template, bos_prefix, icl_prompts
from app.model.handle import ModelHandle
from app.model.runner import Runner, run_here

Report = Callable[[str, float, dict[str, Any] | None], None]

# The mediation FV is only a starting point here, so it is averaged over fewer prompts than a standalone
# extraction (100 / 25): at the training layer it scores near zero anyway; training does the work.
INIT_PROMPTS = 40
INIT_TRIALS = 10
# Progress shares of the job's phases when the mediation FV is computed first.
MEDIATION_SHARE = 0.4


@dataclass
class FinetunedVector:
    vector: Tensor
    layer: int
    result: TrainedCheckpoint
    heads: list[tuple[int, int, float]]
    icl_holdout_top1: float
    seconds: dict[str, float]
    cache_hit: bool | None

    def metrics(self, options: FinetuneOptions) -> dict[str, Any]:
        result = self.result
        return {
            "init": options.init if options.init != "vector" else f"vector:{options.init_name}",
            "epochs": options.epochs,
            "lr": options.lr,
            "l2": options.l2,
            "seed": options.seed,
            "chat": options.chat,
            "patience": options.patience,
            "n_train": result.n_train,
            "n_holdout": result.n_holdout,
            "best_epoch": result.best_epoch,
            "holdout_top1_before": result.holdout_before,
            "holdout_top1_after": result.holdout_after,
            "holdout_icl_top1": self.icl_holdout_top1,
            **({"holdout_chat_top1_before": result.chat_before, "holdout_chat_top1_after": result.chat_after}
               if result.chat_after is not None else {}),
            "shots": DEFAULT_SHOTS,
            "history": [{key: round(value, 4) for key, value in record.items()} for record in result.history],
            "seconds": {key: round(value, 2) for key, value in self.seconds.items()},
        }

    def metadata(self, name: str, relation: str, pairs: list[Pair], options: FinetuneOptions) -> dict[str, str]:
        return {
            "name": name,
            "relation": relation,
            "layer": str(self.layer),
            "method": "finetuned",
            "heads": json.dumps([[layer, head, round(aie, 6)] for layer, head, aie in self.heads]),
            "dataset_sha256": dataset_sha256(pairs),
            "n_pairs": str(len(pairs)),
            "template": Template().describe(),
            "metrics": json.dumps(self.metrics(options)),
        }


def default_layer(n_layers: int) -> int:
    return min(n_layers - 1, round(DEFAULT_LAYER_FRACTION * n_layers))


def check_options(options: FinetuneOptions, n_layers: int, d_model: int) -> None:
    """Refuse what the training cannot do, naming the parameter and its range."""
    for param, (low, high) in LIMITS.items():
        value = getattr(options, param)
        if not low <= value <= high:
            raise InvalidInput(f"{param} is {value}; it must be within [{low:g}, {high:g}]", param=param)
    if options.layer is not None and not 0 <= options.layer < n_layers:
        raise InvalidInput(f"layer {options.layer} is outside the model's 0..{n_layers - 1}", param="layer")
    if (options.init == "vector") != (options.init_vector is not None):
        raise InvalidInput("init 'vector' needs init_vector (a stored vector's name), and only it", param="init_vector")
    if options.init_vector is not None and options.init_vector.shape != (d_model,):
        raise InvalidInput(f"init_vector has shape {list(options.init_vector.shape)}; the model needs [{d_model}]",
                           param="init_vector")


def init_spec(pairs: list[Pair], options: FinetuneOptions, layer: int) -> ExtractionSpec:
    """The extraction the mediation start runs (fewer prompts than a standalone extraction)."""
    return ExtractionSpec(pairs=pairs, n_prompts=INIT_PROMPTS, n_trials=INIT_TRIALS, layer=layer, seed=options.seed)


def random_init(model: ModelHandle, seed: int) -> Tensor:
    """A seeded Gaussian direction with the mean norm of the model's token embeddings (the scale of one token)."""
    embedding: torch.nn.Module = model.adapter.model.get_input_embeddings()
    weight = embedding.get_parameter("weight").detach().float()
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(model.adapter.d_model, generator=generator)
    scale = float(weight.norm(dim=-1).mean())
    return direction * (scale / float(direction.norm()))


@dataclass(frozen=True)
class Init:
    """Where training starts, the heads that made it (mediation) and its seconds, recorded in the metadata."""

    vector: Tensor
    heads: list[tuple[int, int, float]]
    cache_hit: bool | None
    seconds: float


def initial_vector(
    model: ModelHandle,
    pairs: list[Pair],
    options: FinetuneOptions,
    layer: int,
    cache: HeadMeanCache,
    *,
    run: Runner[Any] = run_here,
    report: Callable[[str, float], None] = lambda phase, fraction: None,
) -> Init:
    """The vector training starts from (``options.init``); the mediation FV is extracted from all the pairs."""
    started = time.monotonic()
    heads: list[tuple[int, int, float]] = []
    cache_hit: bool | None = None
    if options.init == "mediation":
        extraction = extract(model, init_spec(pairs, options, layer), cache, run=run, report=report)
        init, heads, cache_hit = extraction.vector, extraction.heads, extraction.cache_hit
    elif options.init == "zero":
        init = torch.zeros(model.adapter.d_model)
    elif options.init == "random":
        init = random_init(model, options.seed)
    else:
        assert options.init_vector is not None
        init = options.init_vector
    return Init(init, heads, cache_hit, time.monotonic() - started)


def training_spec(pairs: list[Pair], options: FinetuneOptions, layer: int) -> FinetuneSpec:
    """Training uses train + valid of the 70/9/21 split; the test split is never trained on."""
    split = split_pairs(pairs, options.seed)
    return FinetuneSpec(split.train + split.valid, layer, epochs=options.epochs, lr=options.lr, l2=options.l2,
                        seed=options.seed, chat=options.chat, patience=options.patience)


def icl_holdout_top1(model: ModelHandle, training: FinetuneSpec, *, run: Runner[Any] = run_here) -> float:
    """10-shot prompting on the training's hold-out pairs, demonstrations from its training part: the bar to meet."""
    train_part, holdout = split_holdout(training.pairs, training.holdout_fraction, training.seed)
    prefix = bos_prefix(model.tokenizer, model.adapter.adds_bos)
    shots = min(DEFAULT_SHOTS, len(train_part) - 1)
    icl = icl_prompts(model.tokenizer, Template(), prefix, train_part, holdout, random.Random(training.seed), shots)
    return accuracy(ranks_of_answers(model.adapter, model.tokenizer, icl, run=run))


def make_finetuned(
    model: ModelHandle,
    pairs: list[Pair],
    options: FinetuneOptions,
    cache: HeadMeanCache,
    *,
    run: Runner[Any] = run_here,
    report: Report = lambda phase, fraction, detail: None,
) -> FinetunedVector:
    adapter = model.adapter
    check_options(options, adapter.n_layers, adapter.d_model)
    layer = default_layer(adapter.n_layers) if options.layer is None else options.layer
    share = MEDIATION_SHARE if options.init == "mediation" else 0.0
    init = initial_vector(model, pairs, options, layer, cache, run=run,
                          report=lambda phase, fraction: report(f"mediation:{phase}", share * fraction, None))

    started = time.monotonic()
    training = training_spec(pairs, options, layer)
    result = finetune(model, training, init.vector, run=run, report=lambda phase, fraction, detail: report(
        "training", share + (1 - share) * fraction, {**detail, "epochs": options.epochs}))
    seconds = {"init": init.seconds, "training": time.monotonic() - started}

    icl_top1 = icl_holdout_top1(model, training, run=run)
    report("done", 1.0, None)
    return FinetunedVector(result.vector, layer, result, init.heads, icl_top1, seconds, init.cache_hit)


def make_finetuned_many(
    model: ModelHandle,
    datasets: list[list[Pair]],
    options: FinetuneOptions,
    cache: HeadMeanCache,
    *,
    rows_per_forward: int = ROWS_PER_FORWARD,
    report: Callable[[str], None] = lambda line: None,
) -> list[FinetunedVector]:
    """:func:`make_finetuned` for several datasets with the same options (the starter bank): each init as alone,
    one after another, then one batched training (:func:`app.fv.batched_finetune.finetune_many`), then each
    10-shot bar. A vector's ``seconds["training"]`` is its share of the batch's training time."""
    adapter = model.adapter
    check_options(options, adapter.n_layers, adapter.d_model)
    layer = default_layer(adapter.n_layers) if options.layer is None else options.layer
    inits = []
    for index, pairs in enumerate(datasets, start=1):
        inits.append(initial_vector(model, pairs, options, layer, cache))
        report(f"init {index}/{len(datasets)}: {inits[-1].seconds:.0f} s")
    started = time.monotonic()
    specs = [training_spec(pairs, options, layer) for pairs in datasets]

    def epoch_done(epoch: int, epochs: int) -> None:
        if epoch == 1 or epoch % 10 == 0 or epoch == epochs:  # the first and last epochs time the training's phases
            report(f"epoch {epoch}/{epochs}")

    results = finetune_many(model, specs, [init.vector for init in inits], rows_per_forward=rows_per_forward,
                            report=epoch_done)
    share = (time.monotonic() - started) / len(datasets)
    return [FinetunedVector(result.vector, layer, result, init.heads, icl_holdout_top1(model, spec),
                            {"init": init.seconds, "training": share}, init.cache_hit)
            for init, spec, result in zip(inits, specs, results, strict=True)]
