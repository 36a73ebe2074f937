"""Regenerate the fine-tuned / composite part of docs/results.md (everything from its section marker on):

1. fine-tuned vs mediation FV vs 10-shot prompting on the six core relations' held-out test pairs;
2. analogy accuracy (unsteered, softmax composite, fitted composite, oracle relation) on ../shared/data's
   UCLA VAT and the BATS / Google multiple-choice sets;
3. alignment with SemEval-2012 Task 2 human prototypicality ratings.

Runs in-process on the served model and the registry (``FVSTEER_VECTORS_DIR``, the starter bank by default);
mediation FVs are extracted with fvsteer's defaults (head means from Redis when ``FVSTEER_REDIS_URL`` is set).
About 30 min on 2 CPU cores:

    .venv/bin/python benchmarks/finetune_report.py [--data ../shared/data] [--bats-limit 600]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torch import Tensor

from app.analogy.offline import alignment, analogy_accuracy
from app.fv.evaluation import accuracy, ranks_of_answers
from app.fv.extraction import ExtractionSpec, extract
from app.fv.pairs import relation_pairs, split_pairs
from app.fv.prompts import Template, bos_prefix, icl_prompts, zero_shot_prompts
from app.local import LocalModel, load_local

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- section: fine-tuned and composite vectors (benchmarks/finetune_report.py) -->"
CORE = ["antonym", "country-capital", "present-past", "singular-plural", "english-french", "capitalize"]


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Mediation:
    """Mediation FVs extracted once per relation with the extraction defaults (layer swept)."""

    def __init__(self, local: LocalModel) -> None:
        self.local = local
        self.made: dict[str, tuple[int, Tensor]] = {}

    def __call__(self, relation: str) -> tuple[int, Tensor]:
        if relation not in self.made:
            started = time.monotonic()
            result = extract(self.local.model, ExtractionSpec(relation_pairs(relation)), self.local.cache)
            self.made[relation] = (result.layer, result.vector)
            say(f"mediation FV of {relation}: layer {result.layer} ({time.monotonic() - started:.0f} s)")
        return self.made[relation]


def core_table(local: LocalModel, mediation: Mediation) -> list[dict[str, Any]]:
    model = local.model
    adapter, tokenizer = model.adapter, model.tokenizer
    prefix, template = bos_prefix(tokenizer, adapter.adds_bos), Template()
    rows = []
    for relation in CORE:
        split = split_pairs(relation_pairs(relation), 0)
        zero = zero_shot_prompts(tokenizer, template, prefix, split.test)
        icl = icl_prompts(tokenizer, template, prefix, split.train, split.test, random.Random(0), 10)
        layer, vector = mediation(relation)
        tuned = local.registry.get(relation)
        metrics = tuned.describe()["metrics"]
        row = {
            "relation": relation, "n": len(split.test), "mediation_layer": layer, "finetuned_layer": tuned.layer,
            "zero_shot": accuracy(ranks_of_answers(adapter, tokenizer, zero)),
            "mediation": accuracy(ranks_of_answers(adapter, tokenizer, zero, (layer, vector))),
            "finetuned": accuracy(ranks_of_answers(adapter, tokenizer, zero, (tuned.layer, tuned.vector))),
            "icl": accuracy(ranks_of_answers(adapter, tokenizer, icl)),
            "best_epoch": metrics.get("best_epoch"), "training_s": (metrics.get("seconds") or {}).get("training"),
        }
        say(f"{relation}: {row}")
        rows.append(row)
    return rows


def fmt(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "–"


def analogy_lines(title: str, result: dict[str, Any]) -> list[str]:
    lines = [f"**{title}** ({result['n']} problems, bank of {result['bank']}, {result['combiner']} combiner; "
             f"the weights put the oracle relation first in {fmt(result['weights_pick_oracle'])} of the problems "
             "that have one)", "",
             "| relation type | n | unsteered | softmax composite | fitted composite | oracle relation |",
             "|---|---:|---:|---:|---:|---:|"]
    for relation, counts in result["by_relation"].items():
        lines.append(f"| {relation} | {counts['n']} | {fmt(counts.get('baseline'))} | {fmt(counts.get('softmax'))} | "
                     f"{fmt(counts.get('composite'))} | {fmt(counts.get('oracle'))} |")
    lines.append(f"| **overall** | {result['n']} | **{fmt(result['baseline'])}** | {fmt(result['softmax'])} | "
                 f"**{fmt(result['composite'])}** | {fmt(result['oracle'])} (n = {result['n_oracle']}) |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--bats-limit", type=int, default=600, help="seeded sample of BATS test problems")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args()
    local = load_local()
    mediation = Mediation(local)
    core = core_table(local, mediation)
    datasets = [("UCLA VAT", args.data / "ucla_vat" / "UCLA_VAT.csv", None),
                ("BATS (multiple choice, test)", args.data / "bats_ushio2021_mc" / "bats_test.jsonl", args.bats_limit),
                ("Google (multiple choice, test)", args.data / "bats_ushio2021_mc" / "google_test.jsonl", None)]
    analogies = []
    for title, path, limit in datasets:
        started = time.monotonic()
        analogies.append((title, path, limit, analogy_accuracy(local, path, limit=limit, say=say)))
        say(f"{title}: {time.monotonic() - started:.0f} s")
    aligned = alignment(local, args.data / "semeval2012_task2", mediation=mediation, say=say)
    write(args.out, local, core, analogies, aligned, args)


def write(path: Path, local: LocalModel, core: list[dict[str, Any]], analogies: list[tuple[str, Path, Any, Any]],
          aligned: dict[str, Any], args: argparse.Namespace) -> None:
    tuned = local.registry.get("antonym").describe()["metrics"]
    lines = [MARKER, "", "## Fine-tuned function vectors", "",
             f"The starter bank (`make vectors`, committed in `vectors/{local.registry.folder.name}/`): one vector per "
             "shipped relation, trained with the model frozen (FV_METHOD.md §6) from the mediation FV of the same "
             f"pairs at block {core[0]['finetuned_layer']}: Adam (lr {tuned['lr']}, cosine schedule, "
             f"{tuned['epochs']} full-batch epochs, λ = {tuned['l2']}), on the train + valid split; a seeded quarter "
             "of those pairs picks the checkpoint. Below, every column is first-token top-1 on **all** held-out test "
             "pairs (split seed 0; no 10-shot filter), the mediation FV at its own swept layer.", "",
             "| relation | n | zero-shot | mediation FV (layer) | fine-tuned FV | 10-shot ICL | best epoch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in core:
        lines.append(f"| {row['relation']} | {row['n']} | {fmt(row['zero_shot'])} | {fmt(row['mediation'])} "
                     f"({row['mediation_layer']}) | **{fmt(row['finetuned'])}** | {fmt(row['icl'])} | "
                     f"{row['best_epoch']} |")
    # Accuracies are counts over n: compare in whole items so float noise cannot flip a tie (18/20 vs 19/20 − 5 pts).
    items = {key: {row["relation"]: round(row[key] * row["n"]) for row in core} for key in ("finetuned", "mediation",
                                                                                           "icl")}
    better = sum(items["finetuned"][r["relation"]] > items["mediation"][r["relation"]] for r in core)
    at_least = sum(items["finetuned"][r["relation"]] >= items["mediation"][r["relation"]] for r in core)
    near_icl = sum(items["finetuned"][r["relation"]] - items["icl"][r["relation"]] >= -0.05 * r["n"] - 1e-9
                   for r in core)
    lines += ["", f"Fine-tuned ≥ mediation on {at_least} of {len(core)} relations, better on {better}; within 5 "
              f"points of 10-shot prompting or above it on {near_icl}.", "",
              "## Analogies with composite vectors", "",
              "Weights from the source pair A:B: `sᵢ = log p(B | \"Q: A\\nA:\", vᵢ)` for every bank vector, a softmax, "
              "then the fitted affine combiner (`vectors/<model>/combiner.json`, fitted by `make vectors` on analogies "
              "built from the shipped relations' test pairs, never on these sets). The composite is added at the last "
              "token of `\"Q: C\\nA:\"` and each candidate D scored by `log p(D | ·)`. *Unsteered* scores "
              "`log p(D | \"A : B :: C :\")`; *oracle* uses the vector of the problem's labelled relation where a "
              "bank relation matches it (`ORACLE_RELATIONS` in `app/analogy/solver.py`).", ""]
    for title, _, limit, result in analogies:
        lines += analogy_lines(title + (f", seeded sample of {limit}" if limit else ""), result)
    lines += ["## Alignment with human relation judgments", "",
              "SemEval-2012 Task 2: per subcategory with a matching bank relation (`SEMEVAL_RELATIONS` in "
              "`app/analogy/datasets.py`), Spearman ρ between the human prototypicality rating of each pair X:Y "
              "and `log p(Y | \"Q: X\\nA:\", v)`.", "",
              "| subcategory | relation | n | fine-tuned | mediation | unsteered |", "|---|---|---:|---:|---:|---:|"]
    for row in aligned["subcategories"]:
        lines.append(f"| {row['subcategory']} {row['name']} | {row['relation']} | {row['n']} | "
                     f"{row['finetuned']:+.2f} | {row['mediation']:+.2f} | {row['unsteered']:+.2f} |")
    mean = aligned["mean"]
    lines.append(f"| **mean** | | | **{mean['finetuned']:+.2f}** | {mean['mediation']:+.2f} | "
                 f"{mean['unsteered']:+.2f} |")
    lines += ["", "### Regenerate", "", "```bash", "make vectors                       # the bank and the combiner",
              f".venv/bin/python benchmarks/finetune_report.py --bats-limit {args.bats_limit}",
              ".venv/bin/fvsteer analogies --dataset ../shared/data/ucla_vat/UCLA_VAT.csv   # one set, as a table",
              ".venv/bin/fvsteer alignment --semeval ../shared/data/semeval2012_task2", "```", "",
              f"Generated {datetime.now(UTC).date().isoformat()}.", ""]
    existing = path.read_text() if path.exists() else "# Results\n"
    head = existing.split(MARKER)[0].rstrip() + "\n\n"
    path.write_text(head + "\n".join(lines))


if __name__ == "__main__":
    main()
