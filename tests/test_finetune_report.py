"""The report's markdown is written from the figures file alone: targets judged from the figures, families weighted
by problems, a partial relations part said to be partial (benchmarks/finetune_report.py; no model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.fv.pairs import shipped_relations
from benchmarks.finetune_report import BANK27, Results, choices_lines, family_lines, section


def counts(n: int, baseline: float, composite: float, oracle: float | None = None,
           first: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"n": n, "baseline": baseline, "softmax": baseline, "composite": composite}
    if oracle is not None:
        row |= {"oracle": oracle, "oracle_first": first}
    return row


def analogy(n: int, baseline: float, composite: float, first: float, by_relation: dict[str, Any]) -> dict[str, Any]:
    return {"n": n, "bank": 103, "combiner": "affine", "baseline": baseline, "softmax": baseline,
            "composite": composite, "oracle": 0.9, "n_oracle": n, "weights_pick_oracle": first,
            "by_relation": by_relation}


def relation_row(name: str) -> dict[str, Any]:
    return {"relation": name, "n": 10, "mediation_layer": 12, "finetuned_layer": 9, "zero_shot": 0.0,
            "mediation": 0.3, "finetuned": 0.8, "icl": 0.8, "only_finetuned": 5, "only_mediation": 0}


def test_targets_are_judged_from_the_figures() -> None:
    data = {"analogies": {
        "ucla": analogy(80, 0.60, 0.85, 0.70, {"Synonym": counts(80, 0.6, 0.85, 0.9, 0.7)}),
        "bats": analogy(600, 0.55, 0.69, 0.40, {"I01 [noun - plural_reg]": counts(600, 0.55, 0.69, 0.9, 0.4)}),
        "google": analogy(500, 0.70, 0.74, 0.90, {"currency": counts(500, 0.7, 0.74, 0.9, 0.9)})}}
    data["analogies"]["ucla"]["first_relations"] = {"Synonym": {"antonym": 2, "synonym": 70, "informal-formal": 8}}
    text = "\n".join(section(data, json.loads(BANK27.read_text()), "m", {"bats_limit": 600}))
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| UCLA")
            or line.startswith("| BATS") or line.startswith("| Google")}
    assert rows["| UCLA VAT"].endswith("| ≥ 0.85 | met | met |")
    assert rows["| BATS (multiple choice, test)"].endswith("| ≥ 0.70 | **missed** | **missed** |")
    assert "≥ unsteered + 0.05 = 0.75 | **missed** | met |" in rows["| Google (multiple choice, test)"]
    assert "0.78 → **0.85**" in rows["| UCLA VAT"]  # the 27-bank figure beside the new one
    # What the weights chose instead of the oracle, most often first; sets without the record have no such column.
    assert "| synonym 70, informal-formal 8, antonym 2 |" in text
    assert sum("largest weight most often on" in line for line in text.splitlines()) == 1


def test_families_weigh_labels_by_their_problems() -> None:
    result = analogy(30, 0.5, 0.5, 0.5, {
        "I01 [noun - plural_reg]": counts(10, 1.0, 1.0, 1.0, 1.0),
        "I04 [adj - superlative]": counts(20, 0.25, 0.5, None),
        "L01 [hypernyms - animals]": counts(5, 0.0, 0.4, 0.6, 0.2)})
    lines = family_lines("bats", result)
    inflection = next(line for line in lines if line.startswith("| inflection"))
    # (10·1.0 + 20·0.25) / 30 unsteered (and softmax), (10·1.0 + 20·0.5) / 30 composite; the oracle over the 10
    # problems that have one.
    assert inflection == "| inflection | 30 | 0.50 | 0.50 | **0.67** | 1.00 (10) | 1.00 |"
    assert any(line.startswith("| lexicography | 5 | 0.00 |") for line in lines)


def test_a_partial_relations_part_says_so(tmp_path: Path) -> None:
    store = Results(tmp_path / "figures.json")
    store.save("relations", {"antonym": relation_row("antonym")})
    again = Results(tmp_path / "figures.json")  # what a later run (or --parts none) reads
    assert again.data["relations"]["antonym"]["finetuned"] == 0.8 and "relations" in again.data["measured"]
    text = "\n".join(section(again.data, json.loads(BANK27.read_text()), "m", {}))
    assert f"Measured for 1 of the {len(shipped_relations())} relations so far" in text
    assert "| antonym | lexicography | 10 | 0.00 | 0.30 (12) | **0.80** | 0.80 | 5 / 0 (0.062) |" in text


def choices(fallback: float, alpha_gain: float) -> dict[str, Any]:
    ensemble = [{"alpha": alpha, "in_bank": 0.8 + gain, "without_own": 0.6 + gain}
                for alpha, gain in ((0.0, 0.0), (0.5, alpha_gain))]
    return {"n": 100, "accuracy": {"unsteered": 0.5, "in_bank": 0.8, "without_own": 0.6},
            "oracle_per_item": {"in_bank": 0.9, "without_own": 0.7},
            "fallback": {"tau": 0.3, "in_bank": 0.8 + fallback, "without_own": 0.6 + fallback, "fired_in_bank": 0.1,
                         "fired_without_own": 0.2},
            "ensemble": ensemble, "templates": {"colon": 0.3, "trained query": 0.5, "trained query + colon": 0.4},
            "combiner_oracle_first": 0.5}


def test_a_choice_is_called_a_candidate_only_past_the_margin() -> None:
    small = "\n".join(choices_lines(choices(0.004, 0.002)))
    assert "the fallback +0.004" in small and "(α = 0.5) +0.002" in small and "none is adopted" in small
    large = "\n".join(choices_lines(choices(0.0, 0.02)))
    assert "a candidate for the combiner" in large and "none is adopted" not in large
    rows = [line for line in small.splitlines() if line.startswith("| trained query") or line.startswith("| colon")]
    assert [row.split(" | ")[0] for row in rows] == ["| trained query", "| colon", "| trained query + colon"]
