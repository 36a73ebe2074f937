"""The offline evaluations behind ``fvsteer analogies`` and ``fvsteer alignment``, run in-process on the served model
and its registry (thousands of scored rows; no HTTP in between).

Alignment (Kang et al.'s claim of stronger agreement with human relation judgments): for each SemEval-2012
Task 2 subcategory that a bank relation matches, the Spearman correlation between the human prototypicality
rating of each pair X:Y and ``log p(Y | "Q: X\\nA:", v)`` — for the fine-tuned vector, the mediation FV of the same
relation, and no vector at all.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from app.analogy.basis import query
from app.analogy.combiner import bank_in_force
from app.analogy.continuations import ScoreRow, score_rows
from app.bundle import ModelBundle
from app.errors import InvalidInput, NotFound
from app.fv.extraction import ExtractionSpec, extract
from app.fv.pairs import relation_pairs
from fvsteer_lab.datasets import SEMEVAL_RELATIONS, read_analogies, read_semeval, spearman
from fvsteer_lab.evaluation import evaluate_analogies

Say = Callable[[str], None]


def analogy_accuracy(local: ModelBundle, dataset: Path, *, limit: int | None = None, seed: int = 0,
                     say: Say = lambda line: None) -> dict[str, Any]:
    """Baseline / softmax / composite / oracle accuracy on a UCLA VAT CSV or multiple-choice JSONL file."""
    problems = read_analogies(dataset)
    if limit is not None and limit < len(problems):
        problems = sorted(random.Random(seed).sample(problems, limit), key=problems.index)
    bank, combiner = bank_in_force(local.registry, local.model.fingerprint)
    say(f"{dataset.name}: {len(problems)} problems, bank of {len(bank)} ({combiner.kind} combiner)")
    report = evaluate_analogies(local.model, bank, combiner, problems,
                                progress=lambda done, total: say(f"  {done}/{total}"))
    return {"dataset": str(dataset), "combiner": combiner.kind, "bank": len(bank), **report.as_dict()}


MediationSource = Callable[[str], tuple[int, Tensor]]


def registry_or_extracted(local: ModelBundle, say: Say) -> MediationSource:
    """``<relation>-cma`` from the registry, else extracted now with the default settings (head means cached)."""
    made: dict[str, tuple[int, Tensor]] = {}

    def source(relation: str) -> tuple[int, Tensor]:
        if relation not in made:
            try:
                stored = local.registry.get(f"{relation}-cma")
                made[relation] = (stored.layer, stored.vector)
            except NotFound:
                say(f"  extracting the mediation FV of {relation} (not in the registry as {relation}-cma)")
                result = extract(local.model, ExtractionSpec(pairs=relation_pairs(relation)), local.cache)
                made[relation] = (result.layer, result.vector)
        return made[relation]

    return source


def alignment(local: ModelBundle, semeval: Path, *, mediation: MediationSource | None = None,
              say: Say = lambda line: None) -> dict[str, Any]:
    subcategories = [sub for sub in read_semeval(semeval) if sub.id in SEMEVAL_RELATIONS]
    loaded = {stored.name: stored for stored in local.registry.list()}
    missing = sorted({SEMEVAL_RELATIONS[sub.id] for sub in subcategories} - set(loaded))
    if missing:
        raise InvalidInput(f"alignment needs the fine-tuned vectors {', '.join(missing)} (run `make vectors`)",
                           param="semeval")
    mediation = mediation or registry_or_extracted(local, say)
    rows: list[dict[str, Any]] = []
    model = local.model
    for sub in subcategories:
        relation = SEMEVAL_RELATIONS[sub.id]
        layer, vector = mediation(relation)
        finetuned = loaded[relation]
        conditions: dict[str, dict[int, Tensor] | None] = {
            "finetuned": {finetuned.layer: finetuned.vector},
            "mediation": {layer: vector},
            "unsteered": None,
        }
        row: dict[str, Any] = {"subcategory": sub.id, "name": f"{sub.category}: {sub.name}", "relation": relation,
                               "n": len(sub.pairs)}
        for condition, vectors in conditions.items():
            scored = [ScoreRow(query(model, x), y, vectors) for x, y in sub.pairs]
            scores = score_rows(model.adapter, model.tokenizer, scored, batch_size=64).tolist()
            row[condition] = spearman(sub.ratings, scores)
        say(f"  {sub.id} {relation}: fine-tuned {row['finetuned']:+.3f}, mediation {row['mediation']:+.3f}, "
            f"unsteered {row['unsteered']:+.3f} (n={row['n']})")
        rows.append(row)

    def mean(key: str) -> float:
        values = [row[key] for row in rows if row[key] == row[key]]  # nan != nan
        return sum(values) / len(values) if values else float("nan")

    return {"subcategories": rows,
            "mean": {key: mean(key) for key in ("finetuned", "mediation", "unsteered")}}
