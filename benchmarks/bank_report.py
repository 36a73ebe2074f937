"""Write the starter bank's section of docs/results.md from what `make vectors` recorded — no model run: every
relation's hold-out top-1 (before training, after, 10-shot prompting; each vector's metadata), the means per relation
type (``app/fv/relations/README.md``), and the combiner's validation figures and selection grid (``combiner.json``).

    .venv/bin/python benchmarks/bank_report.py [--vectors vectors/smollm2-135m-instruct] [--out docs/results.md]

The section goes before the fine-tuned / composite section (benchmarks/finetune_report.py) and replaces its own
earlier version; the rest of the file is kept.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from safetensors import safe_open

from app.fv.pairs import shipped_relation_types, shipped_relations

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- section: starter bank (benchmarks/bank_report.py) -->"
SECTION_MARKER = "<!-- section: "
FINETUNE_MARKER = "<!-- section: fine-tuned and composite vectors (benchmarks/finetune_report.py) -->"


def vector_metrics(folder: Path, relation: str) -> tuple[int, dict[str, Any]]:
    with safe_open(str(folder / f"{relation}.safetensors"), framework="pt") as file:
        meta = file.metadata()
    return int(meta["layer"]), json.loads(meta["metrics"])


def fmt(value: object) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def section(folder: Path) -> list[str]:
    types = shipped_relation_types()
    rows = {name: vector_metrics(folder, name) for name in shipped_relations()}
    first = next(iter(rows.values()))[1]
    lines = [MARKER, "", "## Starter bank: 103 fine-tuned vectors", "",
             "`make vectors` on the embedded model: every shipped relation fine-tuned with the defaults "
             f"({first['epochs']} epochs, lr {first['lr']}, λ {first['l2']}, start `{first['init']}`, seed "
             f"{first['seed']}"
             + (", every pair also as a chat turn" if first.get("chat") else ", raw prompts only")
             + "), 16 relations trained together. First-token top-1 on each relation's hold-out pairs "
             "before training (the start vector), after, and with 10-shot prompting and no vector. The hold-out "
             "pairs are a seeded quarter of the training split that picks the checkpoint (by hold-out top-1"
             + (", the mean of the raw and chat forms'" if first.get("chat") else "") + ", then loss), so *after* is "
             "optimistic; the test split is untouched (benchmarks/finetune_report.py measures it).", "",
             "| type | relations | mean before | mean after | mean 10-shot | mean chat | after ≥ 10-shot |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, (_, metrics) in rows.items():
        by_type[types.get(name, "?")].append(metrics)
    everything = [metrics for _, metrics in rows.values()]
    for kind, group in [*sorted(by_type.items()), ("all", everything)]:
        def mean(key: str, group: list[dict[str, Any]] = group) -> float:
            return sum(float(m[key]) for m in group) / len(group)
        wins = sum(m["holdout_top1_after"] >= m["holdout_icl_top1"] for m in group)
        chat = [float(m["holdout_chat_top1_after"]) for m in group if m.get("holdout_chat_top1_after") is not None]
        lines.append(f"| {kind} | {len(group)} | {mean('holdout_top1_before'):.2f} | {mean('holdout_top1_after'):.2f} "
                     f"| {mean('holdout_icl_top1'):.2f} | {f'{sum(chat) / len(chat):.2f}' if chat else '–'} "
                     f"| {wins} |")
    lines += ["", "*chat*: the same hold-out pairs as chat turns (the user message is the word alone; the answer's "
              "first token, any accepted answer as written or capitalised, bare or after a space), for vectors "
              "trained on both forms.", "",
              "| relation | type | layer | n | before | after | 10-shot | chat | best epoch |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (layer, metrics) in rows.items():
        lines.append(f"| {name} | {types.get(name, '?')} | {layer} | {metrics['n_holdout']} | "
                     f"{metrics['holdout_top1_before']:.2f} | {metrics['holdout_top1_after']:.2f} | "
                     f"{metrics['holdout_icl_top1']:.2f} | {fmt(metrics.get('holdout_chat_top1_after'))} | "
                     f"{metrics['best_epoch']} |")
    combiner_path = folder / "combiner.json"
    if combiner_path.is_file():
        record = json.loads(combiner_path.read_text(encoding="utf-8"))
        metrics = record["metrics"]
        lines += ["", "### The combiner", "",
                  f"Fitted on {metrics['n_train']} training analogies over {len(record['relations'])} relations, "
                  f"{metrics['n_valid']} validation analogies (two test-split pairs of one shipped relation each; "
                  "never the evaluation sets). Validation figures: mean log p(D | \"Q: C\\nA:\", composite) and how "
                  "often the largest weight is on the analogy's own relation.", "",
                  "| stage | validation log p | oracle relation first |", "|---|---:|---:|",
                  f"| plain softmax (raw scores, T = 1) | {fmt(metrics.get('valid_log_prob_softmax'))} | "
                  f"{fmt(metrics.get('valid_oracle_first_softmax'))} |",
                  f"| selected mixture ({selection_text(metrics.get('selected'))}) | "
                  f"{fmt(metrics.get('valid_log_prob_selected'))} | – |",
                  f"| fitted W, b, T (epoch {metrics['best_epoch']}, T = {record['temperature']:.3f}) | "
                  f"{fmt(metrics.get('valid_log_prob_fitted'))} | {fmt(metrics.get('valid_oracle_first_fitted'))} |",
                  *curve_lines(metrics.get("valid_log_prob_by_epoch")),
                  "", "Selection grid (validation):", "",
                  "| normalisation | scores | T | top-k | validation log p | oracle relation first |",
                  "|---|---|---:|---:|---:|---:|"]
        for point in metrics.get("selection", []):
            lines.append(f"| {point.get('normalisation', 'sum')} | "
                         f"{'calibrated' if point['calibrated'] else 'raw'} | {point['temperature']} | "
                         f"{point['top_k'] or 'all'} | {point['valid_log_prob']:.3f} | "
                         f"{point['valid_oracle_first']:.3f} |")
    return [*lines, ""]


def curve_lines(curve: list[float] | None) -> list[str]:
    """Validation log p after each epoch (epoch 0: the selected mixture); the fit stops after its patience."""
    if not curve:
        return []
    return ["", "Validation log p by epoch (0 is the selected mixture; training stops once it has not improved for "
            "the fit's patience): " + ", ".join(f"{epoch}: {score:.3f}" for epoch, score in enumerate(curve)) + "."]


def selection_text(selected: dict[str, Any] | None) -> str:
    if not selected:
        return "–"
    return (f"{selected.get('normalisation', 'sum')} normalisation, "
            f"{'calibrated' if selected['calibrated'] else 'raw'} scores, T = {selected['temperature']}, "
            f"top-k {selected['top_k'] or 'all'}")


def write(path: Path, lines: list[str]) -> None:
    """Replace this section if it is there, else put it before the fine-tuned section (or at the end)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = "\n".join(lines)
    if MARKER in text:
        before, rest = text.split(MARKER, 1)
        after = rest[rest.index(SECTION_MARKER):] if SECTION_MARKER in rest else ""
        text = before + block + ("\n" + after if after else "")
    elif FINETUNE_MARKER in text:
        before, after = text.split(FINETUNE_MARKER, 1)
        text = before + block + "\n" + FINETUNE_MARKER + after
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=Path, default=ROOT / "vectors" / "smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args()
    write(args.out, section(args.vectors))


if __name__ == "__main__":
    main()
