"""Analogy machinery on a tiny random model: continuation scoring against a plain forward, the bank's per-layer
composite, the combiner (softmax start, save/load, fitting), and the dataset evaluation's bookkeeping."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from app.analogy.basis import NORMALISATIONS, Bank, SourceFacts, normalise, query, relation_scores, source_facts
from app.analogy.combiner import Calibration, Combiner, mix
from app.analogy.continuations import ScoreRow, encode_rows, score_rows, sequence_log_probs, variant_log_probs
from app.analogy.problems import AnalogyProblem
from app.errors import InvalidInput
from app.fv.pairs import relation_pairs, shipped_relations, split_pairs
from app.model.adapter import adapt
from app.model.handle import ModelHandle
from fvsteer_lab.evaluation import CONTROLS, ORACLE_RELATIONS, evaluate_analogies
from fvsteer_lab.fitting import (
    SELECTION_MARGIN,
    FitOptions,
    TrainingAnalogy,
    fit_combiner,
    held_out_check,
    split_analogies,
)
from fvsteer_lab.prefixed import prefixed_log_probs, prefixed_rows
from tests.tiny_models import ARCH_CONFIGS, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model() -> ModelHandle:
    network, tokenizer = tiny_model("llama"), tiny_tokenizer()
    return ModelHandle(adapt(network, tokenizer), tokenizer, "fp", "tiny")


def reference_log_prob(model: ModelHandle, prompt: str, continuation: str, layer: int | None,
                       vector: torch.Tensor | None) -> float:
    """One unpadded forward; the vector added by a plain hook at the prompt's last token."""
    tokenizer, adapter = model.tokenizer, model.adapter
    prompt_ids = tokenizer(prompt).input_ids
    answer_ids = tokenizer(" " + continuation, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt_ids + answer_ids])
    handle = None
    if layer is not None and vector is not None:
        def hook(module: torch.nn.Module, args: object, output: object) -> object:
            hidden = output[0] if isinstance(output, tuple) else output
            assert isinstance(hidden, torch.Tensor)
            hidden = hidden.clone()
            hidden[0, len(prompt_ids) - 1] += vector
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        handle = adapter.blocks[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            log_probs = torch.log_softmax(adapter.model(input_ids=ids).logits[0].float(), dim=-1)
    finally:
        if handle is not None:
            handle.remove()
    return sum(float(log_probs[len(prompt_ids) - 1 + i, token]) for i, token in enumerate(answer_ids))


def test_scores_match_single_unpadded_forwards(model: ModelHandle) -> None:
    d = model.adapter.d_model
    vector = torch.randn(d, generator=torch.Generator().manual_seed(1))
    cases = [("Q: hot\nA:", "cold", None, None), ("Q: a much longer prompt\nA:", "xy", 1, vector),
             ("a : b :: c :", "d", 2, -vector), ("Q: up\nA:", "down under", 1, vector)]
    rows = [ScoreRow(prompt, cont, None if layer is None else {layer: vec}) for prompt, cont, layer, vec in cases]
    batched = score_rows(model.adapter, model.tokenizer, rows, batch_size=4)
    for (prompt, cont, layer, vec), got in zip(cases, batched.tolist(), strict=True):
        assert math.isclose(got, reference_log_prob(model, prompt, cont, layer, vec), abs_tol=1e-4)


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_variant_log_probs_equal_one_forward_per_vector(arch: str) -> None:
    """The shared-prefix scoring of K vectors (at different layers; one- and three-token continuations) gives each
    vector's plain steered log-probability, on every tiny family."""
    network, tokenizer = tiny_model(arch), tiny_tokenizer()
    handle = ModelHandle(adapt(network, tokenizer), tokenizer, "fp", "tiny")
    d = handle.adapter.d_model
    generator = torch.Generator().manual_seed(3)
    vectors = torch.randn(4, d, generator=generator) * 2
    layers = [2, 1, 3, 1]
    for prompt, continuation in (("<s>Q: hot\nA:", "cold"), ("<s>Q: a much longer prompt\nA:", "xy z")):
        got = variant_log_probs(handle.adapter, tokenizer, prompt, continuation, layers, vectors)
        expected = [reference_log_prob(handle, prompt, continuation, layer, vector)
                    for layer, vector in zip(layers, vectors, strict=True)]
        assert torch.allclose(got, torch.tensor(expected), atol=1e-4), (arch, got, expected)
        assert len({round(value, 3) for value in expected}) > 1  # the vectors really differ in effect
    assert all("forward" not in block.__dict__ and not block._forward_hooks for block in handle.adapter.blocks)


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_prefixed_rows_score_and_differentiate_as_full_forwards(arch: str) -> None:
    """Rows run once up to the steered block, then only their group from the block above: the same log-probs and
    the same gradients as full steered forwards, for prompts and continuations of different lengths, vectors at two
    blocks, any row subset (and in several preparation batches)."""
    network, tokenizer = tiny_model(arch), tiny_tokenizer()
    handle = ModelHandle(adapt(network, tokenizer), tokenizer, "fp", "tiny")
    cases = [("<s>Q: hot\nA:", "cold"), ("<s>Q: a much longer prompt\nA:", "xy z w"), ("<s>Q: up\nA:", "down"),
             ("<s>Q: b\nA:", "c d")]
    rows = [ScoreRow(prompt, continuation) for prompt, continuation in cases]
    generator = torch.Generator().manual_seed(5)
    base = torch.randn(len(rows), 2, handle.adapter.d_model, generator=generator)
    prepared = prefixed_rows(handle.adapter, tokenizer, rows, 1, batch_size=3)
    for index in (torch.arange(len(rows)), torch.tensor([2, 0])):
        results = []
        for prefixed in (False, True):
            weights = torch.nn.Parameter(base[index].clone())
            vectors = {1: weights[:, 0] * 2, 3: weights[:, 1]}
            with torch.enable_grad():
                if prefixed:
                    got = prefixed_log_probs(handle.adapter, prepared.select(index), vectors)
                else:
                    got = sequence_log_probs(handle.adapter, encode_rows(tokenizer, [rows[i] for i in index]), vectors)
                (grad,) = torch.autograd.grad(got.sum(), [weights])
            results.append((got.detach(), grad))
        (full, full_grad), (fast, fast_grad) = results
        assert torch.allclose(fast, full, atol=1e-4), (arch, fast, full)
        assert torch.allclose(fast_grad, full_grad, atol=1e-4), arch
        assert full_grad.abs().sum() > 0
    unsteered = prefixed_log_probs(handle.adapter, prepared, {})
    expected = [reference_log_prob(handle, prompt, continuation, None, None) for prompt, continuation in cases]
    assert torch.allclose(unsteered, torch.tensor(expected), atol=1e-4), arch
    with pytest.raises(InvalidInput, match="block 0"):
        prefixed_log_probs(handle.adapter, prepared, {0: base[:, 0]})
    assert all("forward" not in block.__dict__ and not block._forward_hooks for block in handle.adapter.blocks)


def test_bank_composite_sums_per_layer() -> None:
    vectors = torch.eye(3, 4)
    bank = Bank(["p", "q", "r"], [1, 2, 1], vectors)
    weights = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    composite = bank.composite(weights)
    assert set(composite) == {1, 2}
    assert torch.allclose(composite[1], torch.tensor([[1.0, 0.0, 3.0, 0.0], [0.5, 0.0, -1.0, 0.0]]))
    assert torch.allclose(composite[2], torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    one = bank.one("q")
    assert set(one) == {2} and torch.equal(one[2], vectors[1])


def test_softmax_combiner_and_save_load(tmp_path: Path) -> None:
    scores = torch.tensor([[0.0, -1.0, -3.0], [-2.0, -0.5, -1.0]])
    plain = Combiner.softmax(["p", "q", "r"], temperature=0.5)
    assert torch.allclose(plain.weights(scores), torch.softmax(scores / 0.5, dim=-1))
    calibration = Calibration(torch.tensor([-1.0, -0.5, -2.0]), torch.tensor([1.0, 2.0, 0.5]))
    fitted = Combiner(["p", "q", "r"], torch.eye(3) * 2, torch.tensor([0.1, 0.0, -0.1]), 0.7, metrics={"n": 3},
                      calibration=calibration, top_k=2)
    path = tmp_path / "combiner.json"
    fitted.save(path, "fp")
    loaded = Combiner.load(path, "fp")
    assert loaded.relations == fitted.relations and loaded.temperature == 0.7 and loaded.kind == "affine"
    assert loaded.top_k == 2 and loaded.calibration is not None
    assert torch.allclose(loaded.weights(scores), fitted.weights(scores))
    with pytest.raises(ValueError, match="fingerprint"):
        Combiner.load(path, "another-model")
    record = json.loads(path.read_text(encoding="utf-8"))
    record["top_k"] = 4
    path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(ValueError, match="top_k"):
        Combiner.load(path, "fp")
    record.update(top_k=None, calibration={"centre": [0.0, 0.0, 0.0], "scale": [1.0, 0.0, 1.0]})
    path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(ValueError, match="calibration"):
        Combiner.load(path, "fp")


def test_normalised_scores_keep_each_pair_s_ranking_and_need_the_pairs_facts(tmp_path: Path) -> None:
    scores = torch.tensor([[-2.0, -4.0, -3.0], [-6.0, -5.0, -9.0]])
    facts = SourceFacts(tokens=torch.tensor([1.0, 3.0]), unsteered=torch.tensor([-5.0, -7.0]))
    assert normalise(scores, "sum", None) is scores
    per_token = torch.tensor([[-2.0, -4.0, -3.0], [-2.0, -5 / 3, -3.0]])
    assert torch.allclose(normalise(scores, "per_token", facts), per_token)
    assert torch.allclose(normalise(scores, "pmi", facts), torch.tensor([[3.0, 1.0, 2.0], [1.0, 2.0, -2.0]]))
    for normalisation in NORMALISATIONS:
        assert normalise(scores, normalisation, facts).argsort(dim=-1).equal(scores.argsort(dim=-1))
    fitted = Combiner(["p", "q", "r"], torch.eye(3), torch.zeros(3), 0.5, normalisation="per_token")
    assert fitted.needs_facts
    with pytest.raises(ValueError, match="facts"):
        fitted.weights(scores)
    assert torch.allclose(fitted.weights(scores, facts), torch.softmax(normalise(scores, "per_token", facts) / 0.5, -1))
    path = tmp_path / "combiner.json"
    fitted.save(path, "fp")
    assert Combiner.load(path, "fp").normalisation == "per_token"
    record = json.loads(path.read_text(encoding="utf-8"))
    record["normalisation"] = "softmax"
    path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(ValueError, match="normalisation"):
        Combiner.load(path, "fp")


def test_pmi_without_calibration_is_the_raw_mixture_and_needs_no_facts() -> None:
    scores = torch.tensor([[-2.0, -4.0, -3.0], [-6.0, -5.0, -9.0]])
    facts = SourceFacts(tokens=torch.tensor([1.0, 3.0]), unsteered=torch.tensor([-5.0, -7.0]))
    pmi = Combiner(["p", "q", "r"], torch.eye(3) * 2, torch.tensor([0.1, 0.0, -0.1]), 0.5, top_k=2,
                   normalisation="pmi")
    plain = dataclasses.replace(pmi, normalisation="sum")
    assert not pmi.needs_facts
    assert torch.allclose(pmi.weights(scores), plain.weights(scores))
    calibrated = dataclasses.replace(pmi, calibration=Calibration.of(scores))
    assert calibrated.needs_facts  # standardising per relation across pairs does see the shift
    assert torch.allclose(calibrated.weights(scores, facts),
                          dataclasses.replace(calibrated, normalisation="sum").weights(normalise(scores, "pmi", facts)))


def test_source_facts_count_the_answer_s_tokens_and_score_it_unsteered(model: ModelHandle) -> None:
    pairs = [("hot", "cold"), ("up", "down under"), ("hot", "cold")]
    facts = source_facts(model, pairs)
    expected = [len(model.tokenizer(" " + b, add_special_tokens=False).input_ids) for _, b in pairs]
    assert facts.tokens.tolist() == expected
    plain = score_rows(model.adapter, model.tokenizer, [ScoreRow(query(model, a), b) for a, b in pairs])
    assert torch.allclose(facts.unsteered, plain, atol=1e-4)


def test_a_first_release_combiner_file_still_loads(tmp_path: Path) -> None:
    """Format /1 had neither calibration nor top-k: it loads as the plain affine combiner it was."""
    path = tmp_path / "combiner.json"
    path.write_text(json.dumps({"format": "fvsteer-combiner/1", "model_fingerprint": "fp", "relations": ["p", "q"],
                                "temperature": 2.0, "weight": [[1.0, 0.5], [0.0, 1.0]], "bias": [0.0, 0.1]}))
    loaded = Combiner.load(path, "fp")
    scores = torch.tensor([[-1.0, -2.0]])
    expected = torch.softmax(scores / 2.0, dim=-1) @ torch.tensor([[1.0, 0.5], [0.0, 1.0]]).T + torch.tensor([0, 0.1])
    assert loaded.calibration is None and loaded.top_k is None
    assert torch.allclose(loaded.weights(scores), expected)


def test_mixture_calibrates_each_vector_and_keeps_the_top_k() -> None:
    scores = torch.tensor([[-1.0, -5.0, -3.0], [-2.0, -6.0, -2.5], [-3.0, -4.5, -3.5]])
    calibration = Calibration.of(scores)
    assert torch.allclose(calibration.centre, torch.tensor([-2.0, -15.5 / 3, -3.0]))
    standard = calibration(scores)
    assert torch.allclose(standard.mean(dim=0), torch.zeros(3), atol=1e-6)
    assert torch.allclose(standard.std(dim=0), torch.ones(3), atol=1e-6)
    full = mix(scores, 1.0, None, None)
    assert torch.allclose(full, torch.softmax(scores, dim=-1))
    top = mix(scores, 1.0, calibration, 2)
    assert torch.allclose(top.sum(dim=-1), torch.ones(3))
    assert ((top > 0).sum(dim=-1) == 2).all()
    kept = calibration(scores).topk(2, dim=-1).indices
    assert torch.allclose(top.gather(1, kept), torch.softmax(calibration(scores).gather(1, kept), dim=-1))
    assert mix(scores, 0.5, None, 1).equal(torch.nn.functional.one_hot(scores.argmax(-1), 3).float())


def test_training_analogies_use_test_split_pairs_of_one_relation() -> None:
    split = split_analogies(["antonym", "synonym"], per_relation=10, seed=0)
    assert len(split.train) == 20 and len(split.valid) == 4  # per relation: 10 training, 10 // 4 validation
    for item in split.train + split.valid:
        test = {(p.input, p.output) for p in split_pairs(relation_pairs(item.relation), 0).test}
        assert item.source in test and item.target in test and item.source != item.target
    assert split_analogies(["antonym", "synonym"], per_relation=10, seed=0) == split  # seeded


def test_validation_analogies_share_no_pair_in_either_order_with_training_analogies() -> None:
    """Over every shipped relation: a pair (or its converse, case-folded) that a validation analogy uses is never in a
    training analogy, so the choices made on validation are made on pairs the fit never saw."""
    split = split_analogies(shipped_relations(), per_relation=25, seed=0)

    def keys(items: list[TrainingAnalogy]) -> set[frozenset[str]]:
        return {frozenset(word.casefold() for word in pair) for item in items for pair in (item.source, item.target)}

    assert not keys(split.valid) & keys(split.train)
    relations = {item.relation for item in split.valid}
    assert relations == set(shipped_relations())  # every relation is validated
    assert len(split.train) >= 20 * len(relations) and len(split.valid) >= 2 * len(relations)


def test_fitting_starts_from_softmax_and_never_ends_worse(model: ModelHandle) -> None:
    d = model.adapter.d_model
    generator = torch.Generator().manual_seed(0)
    bank = Bank(["antonym", "synonym", "capitalize"], [1, 1, 2], torch.randn(3, d, generator=generator))
    options = FitOptions(per_relation=6, epochs=3, batch_size=8, lr=0.05, temperatures=(0.5, 1.0), top_ks=(1, None),
                         average_last=2)
    combiner = fit_combiner(model, bank, options)
    metrics = combiner.metrics
    assert combiner.relations == bank.names and combiner.kind == "affine"
    assert (metrics["n_train"], metrics["n_valid"]) == (18, 3)
    grid = metrics["selection"]
    assert len(grid) == 3 * 2 * 2 * 2  # normalisations × raw and calibrated × temperatures × top-ks
    top = max(point["valid_log_prob"] for point in grid)
    best = next(point for point in grid if point["valid_log_prob"] >= top - SELECTION_MARGIN - 1e-4)  # the first
    assert metrics["selected"] == {key: best[key] for key in ("normalisation", "calibrated", "temperature", "top_k")}
    assert combiner.normalisation == best["normalisation"]
    assert metrics["valid_log_prob_selected"] == pytest.approx(best["valid_log_prob"], abs=1e-3)
    assert metrics["valid_log_prob_selected"] >= metrics["valid_log_prob_softmax"]
    assert metrics["valid_log_prob_fitted"] >= metrics["valid_log_prob_selected"]
    assert combiner.top_k == best["top_k"] and (combiner.calibration is not None) == best["calibrated"]
    curve = metrics["valid_log_prob_by_epoch"]  # epoch 0 (the selected mixture) and each epoch run
    averaged = metrics["valid_log_prob_averaged_by_epoch"]  # from epoch 2: the mean of its and the previous epoch's
    assert curve[0] == metrics["valid_log_prob_selected"] and len(curve) == options.epochs + 1
    assert len(averaged) == options.epochs - 1
    assert max(curve + averaged) == metrics["valid_log_prob_fitted"]
    kept = averaged[metrics["best_epoch"] - 2] if metrics["best_is_average"] else curve[metrics["best_epoch"]]
    assert kept == metrics["valid_log_prob_fitted"]
    assert set(metrics["families"]) == set(bank.names)
    assert all(members[0] == name for name, members in metrics["families"].items())
    assert metrics["valid_family_first_fitted"] >= metrics["valid_oracle_first_fitted"]
    assert fit_combiner(model, bank, options).weight.equal(combiner.weight)  # seeded: same fit


def test_a_relation_held_out_of_the_fit_is_checked_on_its_own_validation_analogies(model: ModelHandle) -> None:
    d = model.adapter.d_model
    bank = Bank(["antonym", "synonym", "capitalize"], [1, 1, 2], torch.randn(3, d, generator=torch.Generator()
                                                                              .manual_seed(2)))
    options = FitOptions(per_relation=6, epochs=2, batch_size=8, lr=0.05, temperatures=(1.0,), top_ks=(None,),
                         normalisations=("sum",), average_last=0)
    without = fit_combiner(model, bank, options, held_out=frozenset({"synonym"}))
    assert (without.metrics["n_train"], without.metrics["n_valid"]) == (12, 2)  # two relations' analogies only
    assert without.relations == bank.names  # its vector stays in the bank
    check = held_out_check(model, bank, fit_combiner(model, bank, options), options, fraction=0.2)
    assert len(check["held_out"]) == 1 and check["n_valid"] == 1
    assert set(check["figures"]) == {"softmax", "held_out_fit", "shipped_fit"}
    assert all(math.isfinite(f["log_prob"]) and 0 <= f["family_first"] <= 1 for f in check["figures"].values())


def test_fitting_stops_after_patience_epochs_without_a_better_validation(model: ModelHandle) -> None:
    d = model.adapter.d_model
    bank = Bank(["antonym", "synonym"], [1, 1], torch.randn(2, d, generator=torch.Generator().manual_seed(1)))
    # lr 5: every step overshoots, so validation stops improving early and the 12-epoch bound is never reached.
    options = FitOptions(per_relation=5, epochs=12, patience=2, batch_size=4, lr=5.0, temperatures=(1.0,),
                         top_ks=(None,), average_last=0)
    metrics = fit_combiner(model, bank, options).metrics
    curve, best = metrics["valid_log_prob_by_epoch"], metrics["best_epoch"]
    assert len(curve) - 1 == best + options.patience < options.epochs
    assert all(score <= curve[best] for score in curve[best + 1 :])


def test_relation_scores_shape_and_steering_matters(model: ModelHandle) -> None:
    d = model.adapter.d_model
    bank = Bank(["p", "q"], [1, 1], torch.stack([torch.zeros(d), torch.ones(d) * 3]))
    scores = relation_scores(model, bank, [("hot", "cold"), ("up", "down"), ("hot", "cold")])
    assert scores.shape == (3, 2) and torch.isfinite(scores).all()
    assert torch.equal(scores[2], scores[0])  # a pair asked twice: its one scoring, in both places
    unsteered = score_rows(model.adapter, model.tokenizer, [ScoreRow(query(model, "hot"), "cold")])
    assert math.isclose(float(scores[0, 0]), float(unsteered[0]), abs_tol=1e-4)  # zero vector = no steering
    assert not math.isclose(float(scores[0, 1]), float(scores[0, 0]), abs_tol=1e-3)
    # Another source-pair template is scored at its own last token: the trained query again gives the same scores.
    same = relation_scores(model, bank, [("hot", "cold")], prompt=lambda a: query(model, a))
    assert torch.equal(same[0], scores[0])
    other = relation_scores(model, bank, [("hot", "cold")], prompt=lambda a: f"{a} ->")
    plain = score_rows(model.adapter, model.tokenizer, [ScoreRow("hot ->", "cold")])
    assert math.isclose(float(other[0, 0]), float(plain[0]), abs_tol=1e-4)


def test_evaluation_counts_every_condition(model: ModelHandle) -> None:
    d = model.adapter.d_model
    bank = Bank(["antonym", "synonym"], [1, 1], torch.randn(2, d, generator=torch.Generator().manual_seed(2)))
    problems = [AnalogyProblem("Opposite", ("hot", "cold"), [("up", "down"), ("up", "high")], 0),
                AnalogyProblem("Synonym", ("big", "large"), [("small", "little"), ("small", "huge")], 0),
                AnalogyProblem("Function", ("fly", "bird"), [("hop", "rabbit"), ("hop", "leg")], 0),
                AnalogyProblem(None, ("a", "b"), [("c", "d"), ("e", "f"), ("g", "h")], 2)]
    report = evaluate_analogies(model, bank, Combiner.softmax(bank.names), problems, batch=3).as_dict()
    assert report["n"] == 4 and report["n_oracle"] == 2  # Opposite and Synonym map to bank relations
    for key in ("baseline", "composite", "softmax"):
        assert isinstance(report[key], float) and 0.0 <= report[key] <= 1.0
    assert report["composite"] == report["softmax"]  # a softmax combiner is the softmax condition
    by_relation = report["by_relation"]
    assert isinstance(by_relation, dict)
    assert by_relation["Function"]["n"] == 1 and "oracle" not in by_relation["Function"]
    assert "oracle_first" not in by_relation["Function"]
    # Per type, the oracle-first rate counts the same problems as the overall rate.
    firsts = [by_relation[name]["oracle_first"] for name in ("Opposite", "Synonym")]
    assert all(value in (0.0, 1.0) for value in firsts) and report["weights_pick_oracle"] == sum(firsts) / 2
    first_relations = report["first_relations"]
    assert isinstance(first_relations, dict)
    for label, count in (("Opposite", 1), ("Function", 1), ("unlabelled", 1)):
        assert sum(first_relations[label].values()) == count and set(first_relations[label]) <= set(bank.names)
    assert (first_relations["Opposite"].get("antonym") == 1) == (by_relation["Opposite"]["oracle_first"] == 1.0)
    # Families: with each relation alone, family-first is oracle-first; with one family holding both relations,
    # every oracle problem's first relation is in the family.
    assert report["weights_pick_family"] == report["weights_pick_oracle"]
    both = {"antonym": ["antonym", "synonym"], "synonym": ["synonym", "antonym"]}
    grouped = evaluate_analogies(model, bank, Combiner.softmax(bank.names), problems, batch=3, families=both).as_dict()
    assert grouped["weights_pick_family"] == 1.0 and grouped["composite"] == report["composite"]
    assert report["oracle_mrr"] == (sum(firsts) + (2 - sum(firsts)) * 0.5) / 2  # rank 1 or 2 of two relations
    # Per-problem outcomes agree with the accuracies; the regret is oracle minus composite on the oracle problems.
    outcomes = report["outcomes"]
    assert outcomes["oracle"][2:] == [None, None] and None not in outcomes["composite"]
    for key in ("baseline", "composite", "softmax", *CONTROLS):
        assert sum(outcomes[key]) / 4 == (report[key] if key not in CONTROLS else report["controls"][key])
    assert report["regret"] == report["oracle"] - sum(outcomes["composite"][:2]) / 2
    # A softmax combiner has no bias: its bias-only control is the unsteered "Q: C\nA:" prompt.
    assert set(report["controls"]) == set(CONTROLS)


def test_the_shuffled_source_control_never_keeps_a_problems_own_weights() -> None:
    from fvsteer_lab.evaluation import _derangement

    for n in (2, 3, 10, 101):
        order = _derangement(n)
        assert sorted(order) == list(range(n)) and all(i != j for i, j in enumerate(order))
        assert order == _derangement(n)  # seeded


def test_oracle_relations_are_shipped() -> None:
    assert set(ORACLE_RELATIONS.values()) <= set(shipped_relations())


def test_a_relation_joins_a_family_when_it_outranks_the_own_relation_often_enough() -> None:
    from fvsteer_lab.families import relation_families

    names = ["antonym", "antonym-binary", "synonym"]
    # Four training analogies of antonym over three distinct source pairs (one used twice), one of synonym.
    relations = ["antonym", "antonym", "antonym", "antonym", "synonym"]
    sources = [("hot", "cold"), ("up", "down"), ("hot", "cold"), ("wet", "dry"), ("big", "large")]
    scores = torch.tensor([[-1.0, -0.5, -3.0],   # antonym-binary outranks antonym
                           [-1.0, -2.0, -3.0],
                           [-1.0, -2.0, -0.1],   # a repeated source pair: not counted again
                           [-1.0, -2.0, -3.0],
                           [-2.0, -1.0, -0.5]])  # synonym is best on its own pair
    families = relation_families(names, relations, sources, scores, threshold=0.3)
    assert families == {"antonym": ["antonym", "antonym-binary"], "antonym-binary": ["antonym-binary"],
                        "synonym": ["synonym"]}  # 1 of 3 distinct antonym sources ≥ 0.3; antonym-binary has none
    assert relation_families(names, relations, sources, scores, threshold=0.5)["antonym"] == ["antonym"]
