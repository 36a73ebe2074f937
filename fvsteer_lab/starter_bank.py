"""``make vectors``: the starter bank — one fine-tuned vector per shipped relation for the served model, and the
analogy combiner fitted over them — written to the registry folder (``vectors/<model>/``), so relation weights
and ``POST /analogies`` work right after ``make serve``.

Each vector is made as ``POST /vectors/finetune`` makes it (default options, seed 0), the trainings of
``--batch-relations`` relations at a time batched into the same forwards
(:func:`app.fv.finetuned.make_finetuned_many`: per vector the same loss, optimizer and checkpoint rule as alone),
so the bank is reproducible; a relation whose vector is already there with the same dataset and options is
skipped. ``--force`` rebuilds. The last table gives every relation's hold-out top-1 (before training, after,
10-shot prompting, and on chat turns). The combiner is refit unless ``combiner.json`` was fitted over exactly these
vectors with the same options (``--combiner-only`` refits it anyway).

New vectors are made in a build folder beside the model's (``vectors/.bank-build/<model>/``), each batch saved when
done, so an interrupted build resumes (also on another machine, from a commit of that folder); the served folder
changes only at the end, when the combiner has been fitted over the new bank: the vectors and ``combiner.json``
move into place together, so the registry never holds vectors and a combiner fitted over others.

    .venv/bin/python -m fvsteer_lab.starter_bank [--relations antonym,synonym] [--force]
                                                 [--combiner-only | --vectors-only] [--batch-relations 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from app.analogy.basis import Bank
from app.analogy.combiner import FILE_NAME, Combiner
from app.bundle import load_bundle
from app.fv.finetuned import make_finetuned_many
from app.fv.options import FinetuneOptions
from app.fv.pairs import dataset_sha256, relation_pairs, shipped_relations
from app.registry.registry import VectorRegistry
from app.registry.vector_file import StoredVector
from fvsteer_lab.fitting import FitOptions, fit_combiner

# Relations trained per batch: the benchmark's choice (benchmarks/bank_build.py); memory grows with it
# (every training prompt's prefix KV cache is kept for the whole training, ~0.5 MB a prompt on the embedded model).
BATCH_RELATIONS = 16
BUILD_FOLDER = ".bank-build"  # beside the models' folders: a build's vectors until they move into place


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


RECORDED_OPTIONS = ("epochs", "lr", "l2", "seed", "chat", "patience")  # besides init, what a vector records


def _up_to_date(registry: VectorRegistry, relation: str, options: FinetuneOptions) -> bool:
    try:
        stored = registry.get(relation)
    except Exception:
        return False
    metrics = stored.meta.metrics
    return (stored.meta.method == "finetuned"
            and stored.meta.dataset_sha256 == dataset_sha256(relation_pairs(relation))
            and all(metrics.get(key) == getattr(options, key) for key in RECORDED_OPTIONS)
            and metrics.get("init") == options.init)


def _combiner_up_to_date(path: Path, fingerprint: str, bank: Bank, options: FitOptions) -> bool:
    """Whether ``path`` holds a combiner fitted over exactly ``bank`` (same relations, layers and vector values) with
    ``options``: refitting it would take ~30 minutes to give the same fit."""
    try:
        combiner = Combiner.load(path, fingerprint)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    recorded = combiner.metrics.get("options")
    return combiner.bank_sha256 == bank.sha256() and recorded == json.loads(json.dumps(asdict(options)))


def holdout_table(vectors: dict[str, StoredVector], relations: list[str]) -> str:
    """Every relation's hold-out top-1 as recorded in its vector: before training, after, 10-shot prompting, and
    after training on chat-rendered prompts (``-`` for a vector trained without them)."""
    lines = [f"{'relation':<20} {'layer':>5} {'n':>3} {'before':>6} {'after':>6} {'10-shot':>7} {'chat':>5} "
             f"{'epoch':>5}"]
    for name in relations:
        meta = vectors[name].meta
        metrics = meta.metrics
        chat = metrics.get("holdout_chat_top1_after")
        lines.append(f"{name:<20} {meta.layer:>5} {metrics['n_holdout']:>3} {metrics['holdout_top1_before']:>6.2f} "
                     f"{metrics['holdout_top1_after']:>6.2f} {metrics['holdout_icl_top1']:>7.2f} "
                     f"{'-' if chat is None else format(chat, '.2f'):>5} {metrics['best_epoch']:>5}")
    return "\n".join(lines)


def _bank_vectors(registry: VectorRegistry, building: VectorRegistry) -> dict[str, StoredVector]:
    """The bank the build gives: each shipped relation's vector from the build folder, else the served one."""
    held = {stored.name: stored for stored in registry.list()} | {stored.name: stored for stored in building.list()}
    return {name: held[name] for name in shipped_relations() if name in held}


def _move_into_place(registry: VectorRegistry, building: VectorRegistry) -> list[str]:
    """The build's vectors, then its combiner, replace the served ones (each file an atomic rename); the build
    folder goes. An interruption leaves the rest in the build folder, and the next run moves it."""
    moved = []
    for stored in building.list():
        registry.folder.mkdir(parents=True, exist_ok=True)
        os.replace(building.folder / f"{stored.name}.safetensors", registry.folder / f"{stored.name}.safetensors")
        moved.append(stored.name)
    os.replace(building.folder / FILE_NAME, registry.folder / FILE_NAME)
    shutil.rmtree(building.folder)
    if building.folder.parent.is_dir() and not any(building.folder.parent.iterdir()):
        building.folder.parent.rmdir()
    registry.load()
    return moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relations", help="comma-separated subset (default: every shipped relation)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild vectors that are already served (a build in progress still resumes)")
    parser.add_argument("--combiner-only", action="store_true", help="refit the combiner over the existing bank")
    parser.add_argument("--vectors-only", action="store_true",
                        help="train the missing or stale vectors into the build folder and stop (nothing served "
                             "changes until a run fits the combiner)")
    parser.add_argument("--batch-relations", type=int, default=BATCH_RELATIONS,
                        help=f"relations trained together (default {BATCH_RELATIONS})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    local = load_bundle()
    model, registry, cache = local.model, local.registry, local.cache
    building = VectorRegistry(registry.folder.parent / BUILD_FOLDER, registry.model)
    building.load()
    relations = args.relations.split(",") if args.relations else shipped_relations()
    options = FinetuneOptions()

    if not args.combiner_only:
        stale = [name for name in relations if not _up_to_date(building, name, options)
                 and (args.force or not _up_to_date(registry, name, options))]
        _say(f"{len(relations) - len(stale)} of {len(relations)} relations up to date; "
             f"training {len(stale)}, {args.batch_relations} at a time (into {building.folder})")
        for start in range(0, len(stale), args.batch_relations):
            group = stale[start : start + args.batch_relations]
            started = time.monotonic()
            datasets = [relation_pairs(name) for name in group]
            made = make_finetuned_many(model, datasets, options, cache, report=lambda line: _say(f"  {line}"))
            for name, pairs, vector in zip(group, datasets, made, strict=True):
                if any(stored.name == name for stored in building.list()):
                    building.delete(name)
                building.add(vector.vector, vector.metadata(name, name, pairs, options))
            _say(f"[{start + len(group)}/{len(stale)}] {', '.join(group)}: {time.monotonic() - started:.0f} s")
        _say(holdout_table(_bank_vectors(registry, building), relations))
        if args.vectors_only:
            return 0

    vectors = _bank_vectors(registry, building)
    bank = Bank(list(vectors), [stored.layer for stored in vectors.values()],
                torch.stack([stored.vector.float() for stored in vectors.values()]))
    built = bool(building.list())
    target = (building.folder if built else registry.folder) / FILE_NAME
    if not args.combiner_only and _combiner_up_to_date(target, model.fingerprint, bank, FitOptions()):
        _say(f"combiner {target} is up to date (fitted over these {len(bank)} vectors with these options); "
             "--combiner-only refits it")
    else:
        started = time.monotonic()
        combiner = fit_combiner(model, bank, FitOptions(), report=_say)
        target.parent.mkdir(parents=True, exist_ok=True)
        combiner.save(target, model.fingerprint)
        _say(f"combiner over {len(bank)} relations saved to {target} ({time.monotonic() - started:.0f} s): "
             f"{combiner.metrics}")
    if built:
        moved = _move_into_place(registry, building)
        _say(f"moved {len(moved)} vectors and the combiner into {registry.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
