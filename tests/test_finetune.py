"""Fine-tuning a function vector on a tiny model: frozen weights, seeded determinism, best-checkpoint choice."""

from __future__ import annotations

import torch

from app.fv.finetune import FinetuneSpec, finetune, split_holdout
from app.fv.pairs import Pair
from app.model.adapter import adapt
from app.model.handle import ModelHandle
from tests.tiny_models import tiny_model, tiny_tokenizer

PAIRS = [Pair(a, b) for a, b in zip("abcdefghijklmnopqrst", "bcdefghijklmnopqrstu", strict=True)]


def handle() -> ModelHandle:
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    return ModelHandle(adapt(model, tokenizer), tokenizer, "fp", "tiny")


def test_training_lowers_the_loss_and_leaves_the_model_untouched() -> None:
    model = handle()
    before = {name: param.clone() for name, param in model.adapter.model.named_parameters()}
    result = finetune(model, FinetuneSpec(PAIRS, layer=1, epochs=25, lr=0.3), torch.zeros(model.adapter.d_model))
    losses = [record["loss"] for record in result.history]
    assert len(losses) == 25 and losses[-1] < 0.5 * losses[0]
    assert result.history[-1]["train_top1"] > result.history[0]["train_top1"]
    for name, param in model.adapter.model.named_parameters():
        assert torch.equal(param, before[name]), f"{name} changed"
        assert param.grad is None
    assert result.vector.shape == (model.adapter.d_model,) and torch.isfinite(result.vector).all()


def test_same_seed_same_vector_and_the_best_checkpoint_is_kept() -> None:
    model = handle()
    spec = FinetuneSpec(PAIRS, layer=2, epochs=8, lr=0.3, seed=5)
    first = finetune(model, spec, torch.zeros(model.adapter.d_model))
    second = finetune(model, spec, torch.zeros(model.adapter.d_model))
    assert torch.equal(first.vector, second.vector) and first.best_epoch == second.best_epoch
    if first.best_epoch:
        best = first.history[first.best_epoch - 1]
        assert first.holdout_after == best["holdout_top1"]
        assert all(record["holdout_top1"] <= best["holdout_top1"] for record in first.history)
    else:  # nothing beat the start: the initial vector comes back
        assert torch.equal(first.vector, torch.zeros(model.adapter.d_model))


def test_l2_keeps_the_vector_near_its_start() -> None:
    model = handle()
    start = torch.randn(model.adapter.d_model, generator=torch.Generator().manual_seed(0))
    free = finetune(model, FinetuneSpec(PAIRS, layer=1, epochs=10, lr=0.3, holdout_fraction=0.5), start)
    tied = finetune(model, FinetuneSpec(PAIRS, layer=1, epochs=10, lr=0.3, l2=100.0, holdout_fraction=0.5), start)
    last_free = free.history[-1]
    assert last_free["loss"] > 0
    assert (tied.vector - start).norm() <= (free.vector - start).norm() + 1e-6


def test_holdout_split_is_seeded_disjoint_and_complete() -> None:
    train, holdout = split_holdout(PAIRS, 0.25, seed=1)
    assert len(holdout) == 5 and len(train) == 15
    assert {p.input for p in train}.isdisjoint({p.input for p in holdout})
    assert split_holdout(PAIRS, 0.25, seed=1) == (train, holdout)


def test_chunked_gradient_equals_the_full_batch_one() -> None:
    model = handle()
    start = torch.zeros(model.adapter.d_model)
    whole = finetune(model, FinetuneSpec(PAIRS, layer=1, epochs=5, lr=0.3, chunk_size=100), start)
    chunked = finetune(model, FinetuneSpec(PAIRS, layer=1, epochs=5, lr=0.3, chunk_size=4), start)
    calls: list[int] = []
    counted = finetune(model, FinetuneSpec(PAIRS, layer=1, epochs=2, lr=0.3, chunk_size=4), start,
                       run=lambda fn: calls.append(1) or fn())
    assert torch.allclose(whole.vector, chunked.vector, atol=1e-4)
    for a, b in zip(whole.history, chunked.history, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4 and a["train_top1"] == b["train_top1"]
    assert len(calls) == 1 + 2 * (4 + 1) and counted.n_train == 15  # hold-out first; per epoch 4 chunks + update
