"""Building bank vectors one at a time (``make_finetuned`` per relation, how ``make vectors`` built the bank before)
against all at once (``make_finetuned_many``: the trainings batched over cached prompt prefixes), in one run, on
the embedded model, with the same relations and options.

Each path gets its own empty head-mean cache (so neither reuses the other's mediation work) and writes nothing.
Phase times (mediation init, training, the rest: the 10-shot bar) come out separately, so the figure at the
bank's epochs can be projected from a short run: init and the rest do not depend on the epochs; training is a
fixed part (the batched path runs every prompt's prefix once; one-at-a-time only scores the hold-out before
training) plus the same time every epoch, both timed from the first and last epochs' progress reports. Per relation,
the hold-out top-1 before and after training, the chosen epoch, and how far the two paths' vectors are apart.

    .venv/bin/python benchmarks/bank_build.py [--relations antonym,...] [--epochs 10] [--batch-relations 16]
                                              [--threads 1] [--old-first]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from app.bundle import load_bundle
from app.cache.head_means import MemoryHeadMeanCache
from app.fv.finetuned import FinetunedVector, make_finetuned, make_finetuned_many
from app.fv.options import DEFAULT_EPOCHS, FinetuneOptions
from app.fv.pairs import relation_pairs

RELATIONS = "antonym,country-capital,present-past,synonym,english-french,animal-young"


@dataclass
class TrainingClock:
    """When training started and when its first and last epochs ended (one training: a batch, or one vector)."""

    started: float = 0.0
    first: float = 0.0
    last: float = 0.0

    def fixed_and_per_epoch(self, epochs: int) -> tuple[float, float]:
        per_epoch = (self.last - self.first) / (epochs - 1)
        return self.first - self.started - per_epoch, per_epoch


def phases(made: list[FinetunedVector], total: float, clocks: list[TrainingClock], epochs: int) -> dict[str, float]:
    init = sum(vector.seconds["init"] for vector in made)
    training = sum(vector.seconds["training"] for vector in made)
    parts = [clock.fixed_and_per_epoch(epochs) for clock in clocks]
    return {"init": init, "training": training, "rest": total - init - training, "total": total,
            "training_fixed": sum(fixed for fixed, _ in parts), "per_epoch": sum(each for _, each in parts)}


def projected(seconds: dict[str, float]) -> float:
    """Seconds of the same build at the bank's epochs: init, the rest and training's fixed part as measured, plus
    the measured time of one epoch for every epoch."""
    return seconds["init"] + seconds["rest"] + seconds["training_fixed"] + seconds["per_epoch"] * DEFAULT_EPOCHS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relations", default=RELATIONS)
    parser.add_argument("--epochs", type=int, default=10, help="for both paths, at least 2 (the bank uses 80)")
    parser.add_argument("--batch-relations", type=int, default=16)
    parser.add_argument("--old-first", action="store_true", help="run the one-at-a-time path first (drift check)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 on a machine shared with other work, where "
                             "spinning OpenMP threads of two processes slow each other down many times over")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first and last epochs time one epoch")
    if args.threads:
        torch.set_num_threads(args.threads)
    relations = args.relations.split(",")
    model = load_bundle().model
    options = replace(FinetuneOptions(), epochs=args.epochs)
    datasets = [relation_pairs(name) for name in relations]
    print(f"{len(relations)} relations, {args.epochs} epochs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    def run_batched() -> tuple[list[FinetunedVector], dict[str, float]]:
        started = time.monotonic()
        made: list[FinetunedVector] = []
        clocks: list[TrainingClock] = []
        for start in range(0, len(datasets), args.batch_relations):
            group = datasets[start : start + args.batch_relations]
            clock = TrainingClock()
            clocks.append(clock)

            def report(line: str, clock: TrainingClock = clock, n: int = len(group)) -> None:
                now = time.monotonic()
                if line.startswith(f"init {n}/{n}:"):
                    clock.started = now
                if line == f"epoch 1/{args.epochs}":
                    clock.first = now
                if line == f"epoch {args.epochs}/{args.epochs}":
                    clock.last = now

            made += make_finetuned_many(model, group, options, MemoryHeadMeanCache(), report=report)
        return made, phases(made, time.monotonic() - started, clocks, args.epochs)

    def run_alone() -> tuple[list[FinetunedVector], dict[str, float]]:
        started = time.monotonic()
        cache = MemoryHeadMeanCache()
        made: list[FinetunedVector] = []
        clocks: list[TrainingClock] = []
        for pairs in datasets:
            clock = TrainingClock(started=time.monotonic())
            clocks.append(clock)

            def report(phase: str, fraction: float, detail: dict[str, Any] | None,
                       clock: TrainingClock = clock) -> None:
                if phase == "training" and detail is not None:
                    if detail["epoch"] == 1:
                        clock.first = time.monotonic()
                    if detail["epoch"] == args.epochs:
                        clock.last = time.monotonic()

            made.append(make_finetuned(model, pairs, options, cache, report=report))
            clock.started += made[-1].seconds["init"]  # training starts when the init is done
        return made, phases(made, time.monotonic() - started, clocks, args.epochs)

    for path in ("old", "new") if args.old_first else ("new", "old"):
        if path == "new":
            batched, new = run_batched()
            print(f"batched: {new}, load average {os.getloadavg()[0]:.1f}", flush=True)
        else:
            alone, old = run_alone()
            print(f"one at a time: {old}, load average {os.getloadavg()[0]:.1f}", flush=True)

    print(f"\n{'relation':<18} {'n':>3} {'before':>6} {'after old':>9} {'after new':>9} {'epoch old/new':>13} "
          f"{'max |dv|':>9} {'|v|':>7}")
    for name, one, many in zip(relations, alone, batched, strict=True):
        a, b = one.result, many.result
        print(f"{name:<18} {a.n_holdout:>3} {a.holdout_before:>6.2f} {a.holdout_after:>9.2f} {b.holdout_after:>9.2f} "
              f"{a.best_epoch:>6}/{b.best_epoch:<6} {float((a.vector - b.vector).abs().max()):>9.2e} "
              f"{float(a.vector.norm()):>7.2f}")

    n = len(relations)
    per_hour = {path: 3600 * n / seconds["total"] for path, seconds in (("old", old), ("new", new))}
    at_default = {path: 3600 * n / projected(seconds) for path, seconds in (("old", old), ("new", new))}
    training = old["training"] / new["training"]
    print(f"\nvectors/hour at {args.epochs} epochs: old {per_hour['old']:.0f}, new {per_hour['new']:.0f}, "
          f"ratio {per_hour['new'] / per_hour['old']:.1f}x (training phase alone {training:.1f}x)")
    print(f"one epoch of all {n}: old {old['per_epoch']:.1f} s, new {new['per_epoch']:.1f} s "
          f"({old['per_epoch'] / new['per_epoch']:.1f}x); training's fixed part: old {old['training_fixed']:.0f} s, "
          f"new {new['training_fixed']:.0f} s")
    print(f"projected at {DEFAULT_EPOCHS} epochs: old {at_default['old']:.0f}, new {at_default['new']:.0f}, "
          f"ratio {at_default['new'] / at_default['old']:.1f}x")
    # Both paths compute the same mediation inits: their time ratio shows how much the machine's load drifted.
    print(f"drift: init seconds old/new {old['init'] / new['init']:.2f} (1.00 = same machine speed for both)")


if __name__ == "__main__":
    main()
