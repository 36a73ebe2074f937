"""The report's markdown is written from the figures file alone: targets judged from the figures, families weighted
by problems, a partial relations part said to be partial (benchmarks/finetune_report.py; no model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.fv.pairs import shipped_relations
from benchmarks.finetune_report import Results, choices_lines, current_only, group_lines, section


def counts(n: int, baseline: float, composite: float, oracle: float | None = None,
           first: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"n": n, "baseline": baseline, "softmax": baseline, "composite": composite}
    if oracle is not None:
        row |= {"oracle": oracle, "oracle_first": first}
    return row


def analogy(n: int, baseline: float, composite: float, first: float, by_relation: dict[str, Any],
            family: float | None = None) -> dict[str, Any]:
    return {"n": n, "bank": 103, "combiner": "affine", "baseline": baseline, "softmax": baseline,
            "composite": composite, "oracle": 0.9, "n_oracle": n, "weights_pick_oracle": first,
            "weights_pick_family": first if family is None else family, "by_relation": by_relation}


def relation_row(name: str) -> dict[str, Any]:
    return {"relation": name, "n": 10, "mediation_layer": 12, "finetuned_layer": 9, "zero_shot": 0.0,
            "mediation": 0.3, "finetuned": 0.8, "icl": 0.8, "only_finetuned": 5, "only_mediation": 0}


def test_targets_are_judged_from_the_figures() -> None:
    data: dict[str, Any] = {"analogies": {
        "ucla": analogy(80, 0.60, 0.85, 0.30, {"Synonym": counts(80, 0.6, 0.85, 0.9, 0.7)}, family=0.70),
        "bats": analogy(600, 0.55, 0.71, 0.40, {"I01 [noun - plural_reg]": counts(600, 0.55, 0.71, 0.9, 0.4)}),
        "google": analogy(500, 0.70, 0.90, 0.90, {"currency": counts(500, 0.7, 0.9, 0.9, 0.9)})},
        "relations": {"antonym": {**relation_row("antonym"), "n": 20, "finetuned": 0.55}}}
    data["analogies"]["ucla"]["first_relations"] = {"Synonym": {"antonym": 2, "synonym": 70, "informal-formal": 8}}
    text = "\n".join(section(data, "m", {"bats_limit": 600}))
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if " ≥ " in line and line.startswith("| ")}
    # Each target with its exact interval: 68/80 right, Clopper–Pearson [0.75, 0.92].
    assert rows["UCLA VAT: fitted composite ≥ 0.85"].endswith("| 0.85 [0.75, 0.92] | 80 | met |")
    assert rows["BATS (multiple choice, test): fitted composite ≥ 0.72"].endswith("| 600 | **missed** |")
    assert rows["Google (multiple choice, test): fitted composite ≥ 0.90"].endswith("| 500 | met |")
    assert rows["UCLA VAT: family top-1 ≥ 0.70"].endswith("| met |")
    assert rows["BATS (multiple choice, test): family top-1 ≥ 0.70"].startswith(
        "| BATS (multiple choice, test): family top-1 ≥ 0.70 | 0.40 [")
    assert rows["antonym vector, test top-1 ≥ 0.60 (any accepted answer)"].endswith("| 20 | **missed** |")
    # Parts not measured say so instead of passing or failing.
    assert "| – | – subcategories | not measured yet |" in text and text.count("not measured yet") == 2
    assert "27" not in text.split("### Against issue 30's targets")[1].split("| target |")[0]
    # What the weights chose instead of the oracle, most often first; sets without the record have no such column.
    assert "| synonym 70, informal-formal 8, antonym 2 |" in text
    assert sum("largest weight most often on" in line for line in text.splitlines()) == 1


def test_controls_and_regret_come_from_the_per_problem_outcomes() -> None:
    result = analogy(4, 0.25, 0.75, 0.5, {"Synonym": counts(4, 0.25, 0.75, 1.0, 0.5)}, family=1.0)
    result |= {"controls": {"uniform": 0.5, "bias_only": 0.25, "shuffled_source": 0.25}, "oracle": 1.0,
               "oracle_mrr": 0.75, "outcomes": {"baseline": [0, 0, 1, 0], "composite": [1, 1, 1, 0],
                                                "shuffled_source": [0, 1, 0, 0], "oracle": [1, 1, 1, 1]}}
    text = "\n".join(section({"analogies": {"ucla": result}}, "m", {}))
    controls = next(line for line in text.splitlines() if line.startswith("| UCLA VAT | 4 | 0.25 ["))
    cells = controls.split(" | ")
    assert cells[4].startswith("0.50 [") and cells[6].startswith("0.25 [")  # uniform, shuffled source
    assert cells[8].startswith("+0.50 [") and cells[9].startswith("+0.50 [")  # composite − unsteered, − shuffled
    identification = next(line for line in text.splitlines() if line.startswith("| UCLA VAT | 4 | 1.00 ["))
    assert " | +0.25 [" in identification and identification.endswith("| 0.750 |")  # regret; MRR


def test_figures_of_another_bank_are_left_out_and_named(tmp_path: Path) -> None:
    stale = analogy(80, 0.6, 0.9, 0.5, {"Synonym": counts(80, 0.6, 0.9, 0.9, 0.5)}) | {"bank_sha256": "old"}
    text = "\n".join(section({"analogies": {"ucla": stale}}, "m", {}))
    assert "figures of earlier vectors left out): ucla." in text
    assert "| UCLA VAT: fitted composite ≥ 0.85 | – | – | not measured yet |" in text


def test_families_weigh_labels_by_their_problems() -> None:
    result = analogy(30, 0.5, 0.5, 0.5, {
        "I01 [noun - plural_reg]": counts(10, 1.0, 1.0, 1.0, 1.0),
        "I04 [adj - superlative]": counts(20, 0.25, 0.5, None),
        "L01 [hypernyms - animals]": counts(5, 0.0, 0.4, 0.6, 0.2)})
    lines = group_lines("bats", result)
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
    text = "\n".join(section(again.data, "m", {}))
    assert f"Measured for 1 of the {len(shipped_relations())} relations so far" in text
    assert "| antonym | lexicography | 10 | 0.00 | 0.30 (12) | **0.80** | 0.80 | 5 / 0 (0.062) |" in text


def test_a_partial_chat_part_is_not_judged() -> None:
    row = {"raw": 0.5, "raw_steered": 0.9, "chat": 0.4, "chat_steered": 0.2, "trained_on_chat": True, "n": 10}
    text = "\n".join(section({"chat": {"antonym": row}}, "m", {}))
    shipped = len(shipped_relations())
    assert f"| 1 relations | not judged: 1 of {shipped} relations measured so far |" in text
    assert f"not judged yet: measured for 1 of the {shipped} relations so far" in text and "missed" not in text


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


def test_rows_of_other_vectors_are_left_out_by_their_stamps() -> None:
    data = {"relations": {"antonym": relation_row("antonym") | {"vector": "new@1"},
                          "synonym": relation_row("synonym") | {"vector": "old@0"}},
            "chat": {"antonym": {"vector": "old@0"}},
            "choices": {"bank_sha256": "d1"}, "held_out": {"bank_sha256": "d0"},
            "analogies": {"ucla": {"bank_sha256": "d1"}, "bats": {"bank_sha256": "d0"}}}
    kept, dropped = current_only(data, "d1", {"antonym": "new@1", "synonym": "new@2"})
    assert set(kept["relations"]) == {"antonym"} and kept["chat"] == {}
    assert set(kept["analogies"]) == {"ucla"} and "choices" in kept and "held_out" not in kept
    assert dropped == ["bats", "held_out", "relations (1 of 2 relations)", "chat (1 of 1 relations)"]
    assert current_only(data, "d1", None)[0]["relations"] == data["relations"]  # no folder: rows kept
