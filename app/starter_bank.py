"""``make vectors``: the starter bank — one fine-tuned vector per shipped relation for the served model, and the
analogy combiner fitted over them — written to the registry folder (``vectors/<model>/``), so relation weights
and ``POST /analogies`` work right after ``make serve``.

Each vector is made exactly as ``POST /vectors/finetune`` makes it (:func:`app.fv.finetuned.make_finetuned`,
default options, seed 0), so the bank is reproducible; a relation whose vector is already there with the same
dataset and options is skipped, so an interrupted build resumes. ``--force`` rebuilds.

    .venv/bin/python -m app.starter_bank [--relations antonym,synonym] [--force] [--combiner-only]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from app.analogy.bank import Bank
from app.analogy.combiner import FILE_NAME, FitOptions, fit_combiner
from app.bundle import load_bundle
from app.fv.finetuned import FinetuneOptions, make_finetuned
from app.fv.pairs import dataset_sha256, relation_pairs, shipped_relations
from app.registry.registry import VectorRegistry


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _up_to_date(registry: VectorRegistry, relation: str, options: FinetuneOptions) -> bool:
    try:
        stored = registry.get(relation)
    except Exception:
        return False
    metrics = stored.meta.metrics
    return (stored.meta.method == "finetuned"
            and stored.meta.dataset_sha256 == dataset_sha256(relation_pairs(relation))
            and all(metrics.get(key) == getattr(options, key) for key in ("epochs", "lr", "l2", "seed"))
            and metrics.get("init") == options.init)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relations", help="comma-separated subset (default: every shipped relation)")
    parser.add_argument("--force", action="store_true", help="rebuild vectors that are already there")
    parser.add_argument("--combiner-only", action="store_true", help="refit the combiner over the existing bank")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    local = load_bundle()
    model, registry, cache = local.model, local.registry, local.cache
    relations = args.relations.split(",") if args.relations else shipped_relations()
    options = FinetuneOptions()

    if not args.combiner_only:
        for index, relation in enumerate(relations, start=1):
            if not args.force and _up_to_date(registry, relation, options):
                _say(f"[{index}/{len(relations)}] {relation}: up to date")
                continue
            started = time.monotonic()
            pairs = relation_pairs(relation)
            made = make_finetuned(model, pairs, options, cache)
            if any(stored.name == relation for stored in registry.list()):
                registry.delete(relation)
            registry.add(made.vector, made.metadata(relation, relation, pairs, options))
            result = made.result
            _say(f"[{index}/{len(relations)}] {relation}: layer {made.layer}, hold-out top-1 "
                 f"{result.holdout_before:.2f} -> {result.holdout_after:.2f} (10-shot {made.icl_holdout_top1:.2f}, "
                 f"n={result.n_holdout}), {time.monotonic() - started:.0f} s")

    bank_names = [name for name in shipped_relations() if any(s.name == name for s in registry.list())]
    bank = Bank.from_registry(registry, bank_names)
    started = time.monotonic()
    combiner = fit_combiner(model, bank, FitOptions(), report=_say)
    combiner.save(registry.folder / FILE_NAME, model.fingerprint)
    _say(f"combiner over {len(bank)} relations saved to {registry.folder / FILE_NAME} "
         f"({time.monotonic() - started:.0f} s): {combiner.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
