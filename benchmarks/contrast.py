"""The shipped sentiment contrast (``fvsteer_lab/contrasts/sentiment.json``) on the embedded model: does a contrastive
control vector move the next word of everyday sentence stems toward positive opinions?

Margin of a stem: ``log Σ p(positive first tokens) − log Σ p(negative first tokens)`` at the next token. The effect
is the steered margin minus the unsteered one, with the vector at every position (``positions: all``, as llama.cpp
and repeng apply it). The layer, the method and the weight are chosen on the dev stems only; the test stems are
scored once with that choice: mean effect with a bootstrap interval, and the share of stems moved the positive way
with an exact binomial interval; and once with the vector negated, which should move them the other way.

    .venv/bin/python benchmarks/contrast.py        # ~2 min on 2 CPU cores; writes benchmarks/results/contrast.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from app.fv.contrast import ContrastOptions, contrast_vectors
from app.fv.forward import encode_left_padded
from app.model.adapter import ModelAdapter, adapt
from app.model.loading import load_model
from app.model.steering import BatchSteering, steered
from app.settings import Settings

try:
    from benchmarks.intervals import bootstrap_interval, exact_binomial
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from intervals import bootstrap_interval, exact_binomial  # type: ignore[no-redef]

EXAMPLE = Path(__file__).resolve().parent.parent / "fvsteer_lab" / "contrasts" / "sentiment.json"
RESULTS = Path(__file__).resolve().parent / "results" / "contrast.json"
LAYERS = (6, 9, 12, 15, 18)
WEIGHTS = (4.0, 8.0, 16.0)  # the vectors are normalised to norm 1 first, so this is the added norm
METHODS = ("mean_diff", "pca")


def first_tokens(tokenizer: Any, words: list[str]) -> list[int]:
    return sorted({tokenizer(word, add_special_tokens=False).input_ids[0] for word in words})


def margins(adapter: ModelAdapter, tokenizer: Any, stems: list[str], positive: list[int], negative: list[int],
            layer: int | None = None, vector: Tensor | None = None) -> Tensor:
    """Per stem, log p(positive) − log p(negative) at the next token, steered at every position when given."""
    ids, mask = encode_left_padded(tokenizer, stems, next(adapter.model.parameters()).device)
    steering = None
    if layer is not None and vector is not None:
        steering = BatchSteering({layer: vector.reshape(1, -1).expand(len(stems), -1)}, mask.bool())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode(), steered(adapter, steering):
        logits = adapter.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
    logp = logits.log_softmax(-1)
    return torch.logsumexp(logp[:, positive], -1) - torch.logsumexp(logp[:, negative], -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    example = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    settings = Settings()
    loaded = load_model(settings.model, "cpu", "float32", settings.cache_dir)
    adapter, tokenizer = adapt(loaded.model, loaded.tokenizer), loaded.tokenizer
    template: str = example["template"]
    positives = [template.replace("{}", pos) for pos, _ in example["pairs"]]
    negatives = [template.replace("{}", neg) for _, neg in example["pairs"]]
    positive, negative = first_tokens(tokenizer, example["positive_words"]), first_tokens(tokenizer,
                                                                                          example["negative_words"])
    dev, test = example["dev_stems"], example["test_stems"]
    base_dev = margins(adapter, tokenizer, dev, positive, negative)
    grid: list[dict[str, Any]] = []
    vectors: dict[tuple[str, int], Tensor] = {}
    for method in METHODS:
        made = contrast_vectors(adapter, tokenizer, positives, negatives,
                                ContrastOptions(LAYERS, method, "unit"))  # type: ignore[arg-type]
        for layer in LAYERS:
            vectors[(method, layer)] = made.vectors[layer]
            for weight in WEIGHTS:
                effect = margins(adapter, tokenizer, dev, positive, negative, layer,
                                 weight * made.vectors[layer]) - base_dev
                grid.append({"method": method, "layer": layer, "weight": weight,
                             "dev_effect": round(float(effect.mean()), 4),
                             "separation": round(made.separation[layer], 4)})
                print(grid[-1], flush=True)
    best = max(grid, key=lambda row: row["dev_effect"])
    vector = best["weight"] * vectors[(best["method"], best["layer"])]
    base = margins(adapter, tokenizer, test, positive, negative)
    moved = margins(adapter, tokenizer, test, positive, negative, best["layer"], vector)
    effect = (moved - base).double()
    low, high = bootstrap_interval(effect.tolist())
    up = int((effect > 0).sum())
    up_low, up_high = exact_binomial(up, len(test))
    reverse = (margins(adapter, tokenizer, test, positive, negative, best["layer"], -vector) - base).double()
    r_low, r_high = bootstrap_interval(reverse.tolist())
    down = int((reverse < 0).sum())
    down_low, down_high = exact_binomial(down, len(test))
    report = {
        "example": str(EXAMPLE.relative_to(EXAMPLE.parent.parent.parent)), "model": loaded.name,
        "chosen_on_dev": best, "grid": grid,
        "test": {"n": len(test), "mean_effect": round(float(effect.mean()), 4),
                 "mean_effect_95": [round(low, 4), round(high, 4)],
                 "unsteered_margin": round(float(base.mean()), 4), "steered_margin": round(float(moved.mean()), 4),
                 "moved_positive": up, "moved_positive_share": round(up / len(test), 4),
                 "moved_positive_95": [round(up_low, 4), round(up_high, 4)],
                 "negated_mean_effect": round(float(reverse.mean()), 4),
                 "negated_mean_effect_95": [round(r_low, 4), round(r_high, 4)],
                 "negated_moved_negative": down,
                 "negated_moved_negative_95": [round(down_low, 4), round(down_high, 4)]},
        "seconds": round(time.perf_counter() - started, 1),
        "measured": time.strftime("%Y-%m-%d"),
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report["test"], indent=1))
    print(f"chosen on dev: {best}")


if __name__ == "__main__":
    main()
