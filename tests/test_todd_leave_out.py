"""Shipped relation files may share pairs with Todd et al.'s relation sets (the function-vector literature's
everyday relations), on one condition: every figure measured on Todd's sets leaves out each item whose input a
shipped file holds, and says how many it left out (benchmarks/finetune_report.py, part ``external``). No model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.fv.pairs import relation_pairs, shipped_relations
from benchmarks.finetune_report import EXTERNAL, todd_held_out

TODD = Path(__file__).resolve().parents[2] / "shared" / "data" / "todd"


@pytest.mark.skipif(not TODD.is_dir(), reason="../shared/data is not here")
@pytest.mark.parametrize("relation", EXTERNAL)
def test_todd_figures_leave_every_shipped_input_out_and_count_it(relation: str) -> None:
    shipped = {pair.input.casefold() for name in shipped_relations() for pair in relation_pairs(name)}
    held_out, left_out = todd_held_out(TODD, relation)
    assert held_out, f"{relation}: nothing of Todd's set is left to measure on"
    assert not {pair.input.casefold() for pair in held_out} & shipped
    inputs = {str(item["input"]).strip() for item in json.loads((TODD / f"{relation}.json").read_text("utf-8"))}
    assert left_out == sum(x.casefold() in shipped for x in inputs if x)
    assert len(held_out) + left_out == len({x for x in inputs if x})
    assert held_out == todd_held_out(TODD, relation)[0]  # seeded order
