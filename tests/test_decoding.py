"""Decoding hit rates and their statistics (benchmarks/decoding.py) on a tiny word-level model, and the report's
decoding section written from made-up figures (benchmarks/finetune_report.py): no real model, no ../shared/data."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from app.fv.pairs import Pair, shipped_relation_types, shipped_relations
from app.fv.prompts import answer_token
from app.model.adapter import ModelAdapter, adapt
from benchmarks import decoding
from benchmarks.finetune_report import Results, measure_decoding, section
from tests.tiny_models import ARCH_CONFIGS

# Byte-level words as GPT-2-style tokenizers store them: "Ġ" is the leading space.
WORDS = ["Ġfrance", "ĠParis", "Paris", "paris", "ĠItaly", "ĠRome", "ĠNew", "ĠYork", "Ġcapital", "Ġcountry",
         "Ġcity", "Ġthe", "Ġof", "Ġand", "Ġa", "Ġ", "ness", "Ġness", "Ġnoun", "ĠNoun", "Ġdog", "Ġcat", "Ġblue",
         "Ġred", "Ġgreen", "Ġsun", "Ġmoon", "Ġstar", "Ġtree", "Ġleaf", "Ġroot", "ĠRoma"]
SPECIALS = ["<unk>", "<s>", "</s>"]


@cache
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>")


@cache
def adapter_of(arch: str) -> ModelAdapter:
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, vocab_size=len(SPECIALS) + len(WORDS), bos_token_id=1, eos_token_id=2,
                                  pad_token_id=0, **ARCH_CONFIGS[arch])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return adapt(model, tokenizer())


def unembedding(adapter: ModelAdapter, token: int) -> torch.Tensor:
    weight = next(adapter.lm_head.parameters()).detach()
    return weight[token].clone()


# " " + "  Madrid" starts with a bare space token, as some relations' accented answers do on real tokenizers.
PAIRS = [Pair("France", "Paris"), Pair("Italy", "Rome", ("Roma",)), Pair("USA", "New York"), Pair("Spain", " Madrid")]


def test_the_tiny_tokenizer_reads_answers_as_gpt2_does() -> None:
    tok = tokenizer()
    assert tok.convert_ids_to_tokens([answer_token(tok, "Paris")]) == ["ĠParis"]
    assert tok.decode([answer_token(tok, "Paris")]) == " Paris"
    assert tok.decode([answer_token(tok, "New York")]) == " New"  # a multi-word answer counts by its first token
    assert tok.decode([answer_token(tok, " Madrid")]) == " "


def test_output_words_are_the_answers_first_tokens_normalized() -> None:
    words = decoding.output_words(tokenizer(), PAIRS)
    # Every accepted answer counts; the bare " " of " Madrid" normalizes to nothing and is left out, else every
    # space token of a lens would be a hit.
    assert words == {"paris", "rome", "roma", "new"}
    assert decoding.normalize(" Paris") == decoding.normalize("Paris") == decoding.normalize("ĠParis") == "paris"
    assert decoding.normalize("▁Noun ") == "noun"
    assert not decoding.readable("\ufffd") and not decoding.readable("")


def test_name_words_leave_out_stop_words_and_the_arrow() -> None:
    words = decoding.name_words("noun-ness-adjective", "adjective → adjective+ness noun (of a thing)")
    assert words == {"noun", "ness", "adjective", "thing"}
    assert decoding.name_words("in-adjective-base", "in-/im-/il-/ir- adjective → adjective without the prefix") == {
        "adjective", "base", "im", "il", "ir", "prefix"}


def test_directions_come_from_the_readme_table() -> None:
    directions = decoding.relation_directions()
    assert directions["adjective-superlative"] == "adjective → one-word superlative"
    assert directions["noun-ist-agent"] == "noun (field, instrument, thing) → -ist agent"
    assert set(directions) == set(shipped_relation_types()) == set(shipped_relations())
    assert all("→" in direction for direction in directions.values())


def test_rates_are_shares_of_k() -> None:
    top = [" Paris", "paris", " city", " the", "Rome"] + [" x"] * 15
    outputs, names = {"paris", "rome"}, {"city", "capital"}
    assert decoding.hits(top[:5], outputs) == 3
    rates = decoding.rates(top, outputs, names)
    assert rates == {"output@10": 0.3, "output@20": 3 / 20, "name@10": 0.1, "name@20": 1 / 20}
    with pytest.raises(ValueError):
        decoding.rates(top[:10], outputs, names)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_an_answer_tokens_unembedding_decodes_to_it_and_scores_an_output_hit(arch: str) -> None:
    adapter, tok = adapter_of(arch), tokenizer()
    paris = answer_token(tok, "Paris")
    toward = unembedding(adapter, paris) * 50
    assert decoding.lens_tokens(adapter, tok, toward, 1) == [" Paris"]
    away = unembedding(adapter, answer_token(tok, "dog")) * 50
    row = decoding.relation_row(adapter, tok, "country-capital", PAIRS, "country → its capital city",
                                {"mediation": away, "finetuned": toward})
    assert row["finetuned_top"][0] == " Paris" and row["mediation_top"][0] == " dog"
    assert len(row["finetuned_top"]) == 20
    # Every rate counts the whole top k, and " Paris" (with "Paris" and "paris", if they rank) is an output word.
    for method in decoding.METHODS:
        top = row[f"{method}_top"]
        for k in decoding.KS:
            expected = sum(token.strip().casefold() in {"paris", "rome", "roma", "new"} for token in top[:k]) / k
            assert row[method][f"output@{k}"] == pytest.approx(expected)
    assert row["finetuned"]["output@10"] >= 0.1
    assert row["name_words"] == ["capital", "city", "country"]
    json.dumps(row)  # the row is stored as it is


def row(name: str, mediation: float, finetuned: float) -> dict[str, Any]:
    rates = {"output@10": mediation, "output@20": mediation / 2, "name@10": 0.0, "name@20": 0.0}
    tuned = {"output@10": finetuned, "output@20": finetuned / 2, "name@10": 0.0, "name@20": 0.0}
    return {"relation": name, "mediation": rates, "finetuned": tuned, "mediation_top": [" a"] * 20,
            "finetuned_top": [" b|`"] * 20}


ROWS = [row("r1", 0.1, 0.3), row("r2", 0.0, 0.2), row("r3", 0.2, 0.2), row("r4", 0.3, 0.1), row("r5", 0.0, 0.4)]
TYPES = {"r1": "lexicography", "r2": "lexicography", "r3": "encyclopedic", "r4": "encyclopedic"}


def test_aggregation_per_type() -> None:
    summary = decoding.aggregate(ROWS, TYPES)
    assert summary["resamples"] == 2000 and summary["seed"] == 0
    groups = summary["measures"]["output@10"]
    assert list(groups) == ["?", "encyclopedic", "lexicography", "all"]
    everything = groups["all"]
    assert everything["n"] == 5
    assert everything["mediation"] == pytest.approx(0.12) and everything["finetuned"] == pytest.approx(0.24)
    assert everything["difference"] == pytest.approx(0.12)
    assert (everything["greater"], everything["equal"], everything["less"]) == (3, 1, 1)
    assert everything["sign_p"] == pytest.approx(decoding.sign_test_p(3, 1))
    low, high = everything["interval"]
    assert low <= 0.12 <= high
    lexicography = groups["lexicography"]
    assert lexicography["difference"] == pytest.approx(0.2) and lexicography["interval"] == pytest.approx([0.2, 0.2])
    assert decoding.verdict(lexicography) == "holds"
    encyclopedic = groups["encyclopedic"]  # one tie, one loss
    assert (encyclopedic["greater"], encyclopedic["equal"], encyclopedic["less"]) == (0, 1, 1)
    # A quarter of the resamples draw the tie twice: the interval reaches 0, so the loss is not shown to be one.
    assert encyclopedic["interval"] == pytest.approx([-0.2, 0.0]) and decoding.verdict(encyclopedic) == "not shown"
    assert decoding.verdict({"interval": [-0.2, -0.1]}) == "reversed"
    # Three wins, a loss and a tie: over 2.5 % of the resample means are 0 in exact arithmetic, so the interval must
    # reach 0 exactly (not 3e-17, which the float sums give) and the claim is not called shown.
    made_up = [row(f"s{i}", 0.1, 0.4) for i in range(3)] + [row("s3", 0.3, 0.2), row("s4", 0.3, 0.1 + 0.2)]
    small = decoding.aggregate(made_up, {})["measures"]["output@10"]["all"]
    assert small["interval"][0] == 0.0 and decoding.verdict(small) == "not shown"
    # Ties are counted in whole tokens: 0.1 + 0.2 and 0.3 are one tie.
    tie = decoding.aggregate([row("r1", 0.3, 0.1 + 0.2)], {})["measures"]["output@10"]["all"]
    assert (tie["greater"], tie["equal"], tie["less"]) == (0, 1, 0)
    json.dumps(summary)


def figures(rows: list[dict[str, Any]], types: dict[str, str]) -> dict[str, Any]:
    return {"relations": {r["relation"]: {**r, "type": types.get(r["relation"], "?")} for r in rows},
            "summary": decoding.aggregate(rows, types)}


def test_the_report_states_the_verdict_from_the_figures() -> None:
    made_up = [row(f"l{i}", 0.1, 0.4) for i in range(6)] + [row(f"e{i}", 0.3, 0.2 + 0.1 * (i % 2)) for i in range(4)]
    types = {r["relation"]: ("lexicography" if r["relation"].startswith("l") else "encyclopedic") for r in made_up}
    text = "\n".join(section({"decoding": figures(made_up, types)}, "m", {}))
    assert "### What the vectors decode to (logit lens)" in text
    assert f"Measured for 10 of the {len(shipped_relations())} relations so far" in text
    # Over all ten: the mean difference (6 × 0.3 − 2 × 0.1) / 10 = +0.16, each relation's rate a share of k.
    verdicts = [line for line in text.splitlines() if line.startswith("- **Output words, top 10**")]
    assert len(verdicts) == 1
    assert "over all 10 relations the claim **holds**" in verdicts[0]
    assert "fine-tuned higher on 6, equal on 2, lower on 2" in verdicts[0]
    assert "By type: it holds for lexicography (+0.300 [+0.300, +0.300]); it is " in verdicts[0]
    assert re.search(r"it is (not shown|reversed) for encyclopedic \(-0\.050 \[", verdicts[0])
    # Name words never differ: the claim is not shown there (a zero-width interval at 0 contains 0).
    assert "- **Name words, top 10**: over all 10 relations the claim **is not shown**" in text
    assert "On this model the claim holds over all relations on 2 of the 4 measures (output words, top 10; output " \
           "words, top 20)." in text
    assert "| **all** | 10 | 0.180 | **0.340** | +0.160 [" in text
    lexicography = next(line for line in text.splitlines() if line.startswith("| lexicography | 6 | 0.100"))
    assert lexicography.endswith("| 6 / 0 / 0 (0.031) | holds |")
    # Per relation: rates and the top tokens, escaped so a token's "|" cannot break the table.
    relation_line = next(line for line in text.splitlines() if line.startswith("| l0 |"))
    assert relation_line.startswith("| l0 | lexicography | 0.1 → 0.4 | 0.0 → 0.0 | ` a` ` a`")
    assert "` b\\|'`" in relation_line and relation_line.count(" | ") == 5


def test_a_report_without_decoding_figures_has_no_such_section() -> None:
    text = "\n".join(section({}, "m", {}))
    assert "logit lens" not in text


class Stored:
    """What the part reads of a registry vector."""

    def __init__(self, name: str, vector: torch.Tensor, created: str) -> None:
        self.name, self.layer, self.vector = name, 1, vector
        self.meta = SimpleNamespace(dataset_sha256="sha", created=created)


def test_the_part_measures_every_bank_relation_and_resumes(tmp_path: Path) -> None:
    adapter, tok = adapter_of("llama"), tokenizer()
    toward = unembedding(adapter, answer_token(tok, "Paris"))
    vectors = {name: Stored(name, toward, "t0") for name in ("antonym", "synonym", "not-shipped")}
    registry = SimpleNamespace(list=lambda: list(vectors.values()), get=lambda name: vectors[name])
    local = SimpleNamespace(model=SimpleNamespace(adapter=adapter, tokenizer=tok), registry=registry)
    extracted: list[str] = []

    def mediation(relation: str) -> tuple[int, torch.Tensor]:
        extracted.append(relation)
        return 2, -toward

    store = Results(tmp_path / "figures.json")
    measure_decoding(local, mediation, store, fresh=False)  # type: ignore[arg-type]
    again = Results(tmp_path / "figures.json").data["decoding"]
    assert sorted(again["relations"]) == ["antonym", "synonym"] and extracted == ["antonym", "synonym"]
    antonym = again["relations"]["antonym"]
    assert antonym["type"] == "lexicography" and antonym["mediation_layer"] == 2 and antonym["finetuned_layer"] == 1
    assert antonym["finetuned_top"][0] == " Paris" and antonym["vector"] == "sha@t0"
    assert again["summary"]["measures"]["name@10"]["all"]["n"] == 2
    vectors["synonym"] = Stored("synonym", toward, "t1")  # a rebuilt vector is measured again, the rest kept
    measure_decoding(local, mediation, store, fresh=False)  # type: ignore[arg-type]
    assert extracted == ["antonym", "synonym", "synonym"]
    measure_decoding(local, mediation, store, fresh=True)  # type: ignore[arg-type]
    assert extracted[3:] == ["antonym", "synonym"]
