"""Training many vectors at once on tiny models: the cached, padded one-token forward gives the logits of a full
unpadded one, and each relation trained in the batch gets the loss curve, checkpoint and vector it gets alone."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from app.errors import InvalidInput
from app.fv import prompts
from app.fv.batched_finetune import encode_rows, finetune_many, last_token_logits_cached
from app.fv.finetune import FinetuneSpec, TrainedCheckpoint, finetune
from app.fv.pairs import Pair
from app.fv.prompts import Template, bos_prefix, zero_shot_prompts
from app.model.adapter import adapt
from app.model.handle import ModelHandle
from app.model.steering import BatchSteering, steered
from tests.tiny_models import CHAT_TEMPLATE, tiny_model, tiny_tokenizer

LETTERS = "abcdefghijklmnopqrst"
# Three relations whose inputs differ in length, so that a batch mixes prompts of several lengths.
RELATIONS = [
    [Pair(a, b) for a, b in zip(LETTERS, LETTERS[1:] + "u", strict=True)],
    [Pair(a * 3, a.upper()) for a in LETTERS[:16]],
    [Pair(a + str(n) * (n % 4 + 1), str(n)) for n, a in enumerate(LETTERS[:18])],
]
# Float32 sums in another order (batch composition, cached vs full attention) differ by ~1e-6 per step.
ATOL = 1e-4


def handle(model_type: str = "llama") -> ModelHandle:
    model, tokenizer = tiny_model(model_type), tiny_tokenizer()
    return ModelHandle(adapt(model, tokenizer), tokenizer, "fp", "tiny")


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_cached_padded_logits_equal_one_full_forward_per_prompt(model_type: str) -> None:
    model = handle(model_type)
    adapter = model.adapter
    prefix = bos_prefix(model.tokenizer, adapter.adds_bos)
    items = [item for pairs in RELATIONS for item in zero_shot_prompts(model.tokenizer, Template(), prefix, pairs[:3])]
    assert len({len(item.text) for item in items}) >= 3
    relation = [index for index in range(3) for _ in range(3)]
    vectors = torch.randn(3, adapter.d_model, generator=torch.Generator().manual_seed(1))
    rows = encode_rows(model, items, relation)
    with torch.no_grad():
        batched = last_token_logits_cached(adapter, rows, {1: vectors[rows.relation]})
        for row, item in enumerate(items):
            ids = torch.tensor([model.tokenizer(item.text).input_ids])
            positions = torch.zeros(ids.shape, dtype=torch.bool)
            positions[:, -1] = True
            with steered(adapter, BatchSteering({1: vectors[relation[row]][None]}, positions)):
                alone = adapter.model(input_ids=ids).logits[0, -1].float()
            assert torch.allclose(batched[row], alone, atol=1e-5), (row, (batched[row] - alone).abs().max())
    unsteered = last_token_logits_cached(adapter, rows, {})
    assert not torch.allclose(unsteered, batched, atol=1e-3)  # the vectors were really added


def assert_same_training(together: TrainedCheckpoint, alone: TrainedCheckpoint) -> None:
    assert together.best_epoch == alone.best_epoch
    assert (together.n_train, together.n_holdout) == (alone.n_train, alone.n_holdout)
    assert together.holdout_before == alone.holdout_before and together.holdout_after == alone.holdout_after
    assert len(together.history) == len(alone.history)
    for mine, theirs in zip(together.history, alone.history, strict=True):
        assert mine.keys() == theirs.keys()
        for key in ("loss", "holdout_loss"):
            assert mine[key] == pytest.approx(theirs[key], abs=ATOL), (key, mine, theirs)
        assert mine["train_top1"] == theirs["train_top1"] and mine["holdout_top1"] == theirs["holdout_top1"]
    assert torch.allclose(together.vector, alone.vector, atol=ATOL), (together.vector - alone.vector).abs().max()


@pytest.mark.parametrize("rows_per_forward", [5, 512])
def test_each_relation_trains_as_it_would_alone(rows_per_forward: int) -> None:
    model = handle()
    d_model = model.adapter.d_model
    inits = [torch.randn(d_model, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    specs = [FinetuneSpec(pairs, layer=1, epochs=12, lr=0.3, l2=0.05, seed=seed)
             for seed, pairs in enumerate(RELATIONS)]
    together = finetune_many(model, specs, inits, rows_per_forward=rows_per_forward)
    for spec, init, mine in zip(specs, inits, together, strict=True):
        assert_same_training(mine, finetune(model, spec, init))
    assert len({round(float(result.vector.norm()), 3) for result in together}) == 3  # three different vectors


def test_relations_at_different_layers_train_as_alone_and_leave_the_model_untouched() -> None:
    model = handle()
    before = {name: param.clone() for name, param in model.adapter.model.named_parameters()}
    d_model = model.adapter.d_model
    specs = [FinetuneSpec(pairs, layer=layer, epochs=6, lr=0.3) for pairs, layer in zip(RELATIONS, [0, 2, 2],
                                                                                         strict=True)]
    inits = [torch.zeros(d_model)] * 3
    together = finetune_many(model, specs, inits, rows_per_forward=16)
    for spec, init, mine in zip(specs, inits, together, strict=True):
        assert_same_training(mine, finetune(model, spec, init))
    for name, param in model.adapter.model.named_parameters():
        assert torch.equal(param, before[name]) and param.grad is None, name


def test_vectors_trained_together_must_share_epochs_lr_and_l2() -> None:
    model = handle()
    zero = torch.zeros(model.adapter.d_model)
    specs = [FinetuneSpec(RELATIONS[0], layer=1, epochs=3), FinetuneSpec(RELATIONS[1], layer=1, epochs=4)]
    with pytest.raises(InvalidInput, match="same epochs"):
        finetune_many(model, specs, [zero, zero])
    with pytest.raises(InvalidInput, match="one init vector per spec"):
        finetune_many(model, specs[:1], [zero, zero])


def test_relations_with_several_accepted_answers_train_as_they_would_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pairs with several accepted answers (loss −log Σ p over their first tokens, right when the top token is any of
    them): batched and alone still agree, and the loss is not the primary answer's cross-entropy."""
    # The tiny tokenizer is character-level, so every " " + answer starts with the same token; score the answer's
    # own first character instead, which makes the answers distinct.
    monkeypatch.setattr(prompts, "answer_token", lambda tokenizer, output: tokenizer(output).input_ids[0])
    model = handle()
    d_model = model.adapter.d_model
    several = [[Pair(pair.input, pair.output, (pair.output.upper(), "z")) if index % 2 else pair
                for index, pair in enumerate(pairs)] for pairs in RELATIONS[:2]]
    inits = [torch.randn(d_model, generator=torch.Generator().manual_seed(seed)) for seed in range(2)]
    specs = [FinetuneSpec(pairs, layer=1, epochs=6, lr=0.3, seed=seed) for seed, pairs in enumerate(several)]
    together = finetune_many(model, specs, inits, rows_per_forward=7)
    for spec, init, mine in zip(specs, inits, together, strict=True):
        assert_same_training(mine, finetune(model, spec, init))
    single = finetune(model, FinetuneSpec(RELATIONS[0], layer=1, epochs=6, lr=0.3, seed=0), inits[0])
    assert single.history[0]["loss"] != pytest.approx(together[0].history[0]["loss"], abs=1e-3)


def test_chat_rendered_prompts_train_beside_raw_ones_as_they_would_alone() -> None:
    """With ``chat`` and a chat template, each pair is also a chat-rendered prompt: the loss covers both forms, the
    checkpoint's hold-out top-1 is reported per form, and batched and alone still agree. Without a template (or
    without ``chat``) training is the raw one."""
    model = handle()
    d_model = model.adapter.d_model
    inits = [torch.randn(d_model, generator=torch.Generator().manual_seed(seed)) for seed in range(2)]
    raw_specs = [FinetuneSpec(pairs, layer=1, epochs=5, lr=0.3, seed=seed) for seed, pairs in enumerate(RELATIONS[:2])]
    chat_specs = [replace(spec, chat=True) for spec in raw_specs]
    no_template = finetune(model, chat_specs[0], inits[0])
    assert no_template.chat_after is None and "holdout_chat_top1" not in no_template.history[0]
    assert no_template.history[0]["loss"] == pytest.approx(finetune(model, raw_specs[0], inits[0]).history[0]["loss"])

    model.tokenizer.chat_template = CHAT_TEMPLATE
    together = finetune_many(model, chat_specs, inits, rows_per_forward=9)
    for spec, init, mine in zip(chat_specs, inits, together, strict=True):
        alone = finetune(model, spec, init)
        assert_same_training(mine, alone)
        assert (mine.chat_before, mine.chat_after) == (alone.chat_before, alone.chat_after)
        assert mine.chat_after is not None and 0.0 <= mine.chat_after <= 1.0
        assert all(record["holdout_chat_top1"] == theirs["holdout_chat_top1"]
                   for record, theirs in zip(mine.history, alone.history, strict=True))
    raw = finetune(model, raw_specs[0], inits[0])
    assert raw.chat_after is None
    assert raw.history[0]["loss"] != pytest.approx(together[0].history[0]["loss"], abs=1e-3)  # chat rows count


def test_chat_prompts_render_a_user_turn_and_accept_the_answer_with_or_without_a_capital() -> None:
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    (item,) = prompts.chat_prompts(tokenizer, [Pair("hot", "cold", ("cool",))])
    assert item.text == "<user>hot\n<assistant>"
    first = [tokenizer(text, add_special_tokens=False).input_ids[0] for text in ("c", "C")]
    assert item.answer_tokens == tuple(first)  # "cold" and "cool" share their first character here


def test_relations_stop_at_their_own_patience_and_their_rows_leave_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``patience`` each relation stops once that many epochs have not beaten its best hold-out score, as it
    does alone; the others go on without its rows."""
    from app.fv import batched_finetune

    stops: list[set[int]] = []
    original = batched_finetune._Batch.stop
    monkeypatch.setattr(batched_finetune._Batch, "stop",
                        lambda self, relations: (stops.append(set(relations)), original(self, relations))[1])
    model = handle()
    model.tokenizer.chat_template = CHAT_TEMPLATE
    d_model = model.adapter.d_model
    inits = [torch.randn(d_model, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    specs = [FinetuneSpec(pairs, layer=1, epochs=30, lr=0.5, seed=seed, patience=3, chat=seed != 1)
             for seed, pairs in enumerate(RELATIONS)]
    together = finetune_many(model, specs, inits, rows_per_forward=11)
    lengths = [len(result.history) for result in together]
    assert min(lengths) < 30 and len(set(lengths)) > 1, lengths  # stopped early, at different epochs
    for spec, init, mine in zip(specs, inits, together, strict=True):
        assert_same_training(mine, finetune(model, spec, init))
        assert len(mine.history) == 30 or len(mine.history) - mine.best_epoch == 3
    assert stops and set().union(*stops) == {i for i, n in enumerate(lengths) if n < max(lengths)}
