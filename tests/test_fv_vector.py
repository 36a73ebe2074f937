"""Building a function vector from head means, decoding it (logit lens), and first-token evaluation."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import pytest
import torch
from torch import Tensor

from app.fv.evaluation import SETTINGS, accuracy, evaluate, ranks_of_answers
from app.fv.forward import encode_left_padded, last_token_logits
from app.fv.pairs import Pair
from app.fv.prompts import PromptItem, Template, icl_prompts, zero_shot_prompts
from app.fv.sweep import sweep_layers
from app.fv.vector import decode_vector, function_vector, head_contribution
from app.model.adapter import ModelAdapter, adapt
from app.model.steering import BatchSteering, steered
from tests.tiny_models import ARCH_CONFIGS, tiny_model, tiny_tokenizer

TOKENIZER = tiny_tokenizer()
PROMPTS = ["<s>Q: hot\nA: cold\n\nQ: up\nA:", "<s>Q: a\nA:", "<s>Q: left\nA: right\n\nQ: wet\nA: dry\n\nQ: in\nA:",
           "<s>Q: yes\nA:", "<s>Q: big\nA: small\n\nQ: on\nA:"]


@cache
def adapter_of(arch: str) -> ModelAdapter:
    adapter = adapt(tiny_model(arch, seed=2), TOKENIZER)
    with torch.no_grad():  # random biases, so that "the bias is excluded" is a real check
        for layer in range(adapter.n_layers):
            bias = getattr(adapter.out_proj(layer), "bias", None)
            if bias is not None:
                bias.normal_(0.0, 1.0)
    return adapter


def random_means(adapter: ModelAdapter, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(adapter.n_layers, adapter.n_heads, adapter.head_dim, generator=generator)


def parameter(module: torch.nn.Module, name: str) -> Tensor:
    value = getattr(module, name)
    assert isinstance(value, Tensor)
    return value.detach()


def manual_contribution(adapter: ModelAdapter, means: Tensor, layer: int, head: int) -> Tensor:
    """W_O[:, head slice] @ mean, read straight from the weight (Conv1D stores it as [in, out])."""
    projection = adapter.out_proj(layer)
    weight = parameter(projection, "weight")
    piece = slice(head * adapter.head_dim, (head + 1) * adapter.head_dim)
    if type(projection).__name__ == "Conv1D":
        return means[layer, head] @ weight[piece, :]
    assert isinstance(projection, torch.nn.Linear)
    return weight[:, piece] @ means[layer, head]


# --- head contributions and the FV ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gemma"])
def test_head_contribution_is_the_out_projection_slice_without_bias(arch: str) -> None:
    adapter = adapter_of(arch)
    means = random_means(adapter)
    has_bias = getattr(adapter.out_proj(0), "bias", None) is not None
    assert has_bias == (arch in ("gpt2", "gpt_neox"))
    for layer, head in [(0, 0), (1, 3), (3, 2)]:
        got = head_contribution(adapter, means, layer, head)
        assert got.shape == (adapter.d_model,) and got.dtype == torch.float32
        expected = manual_contribution(adapter, means, layer, head)
        assert torch.allclose(got, expected, atol=1e-5), (arch, layer, head)
        if has_bias:
            bias = parameter(adapter.out_proj(layer), "bias")
            assert float(bias.abs().max()) > 0.1
            assert not torch.allclose(got, expected + bias, atol=1e-2)
    # Only the chosen head's mean matters.
    other = means.clone()
    other[1, 2] += 10.0
    other[2] += 3.0
    assert torch.allclose(head_contribution(adapter, other, 1, 3), head_contribution(adapter, means, 1, 3))


def test_function_vector_sums_the_chosen_heads() -> None:
    adapter = adapter_of("gpt2")
    means = random_means(adapter, seed=1)
    heads = [(0, 1, 0.5), (2, 3, 0.2), (2, 0, 0.1), (3, 3, -0.4)]
    vector = function_vector(adapter, means, heads)
    expected = sum(manual_contribution(adapter, means, layer, head) for layer, head, _ in heads)
    assert isinstance(expected, Tensor)
    assert vector.shape == (adapter.d_model,)
    assert torch.allclose(vector, expected, atol=1e-5)
    # AIE values are only for ranking, never weights; no heads → zero vector.
    reweighted = function_vector(adapter, means, [(layer, head, 100.0) for layer, head, _ in heads])
    assert torch.equal(vector, reweighted)
    assert torch.equal(function_vector(adapter, means, []), torch.zeros(adapter.d_model))


# --- decoding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gptj"])
def test_decode_vector_is_the_logit_lens(arch: str) -> None:
    adapter = adapter_of(arch)
    vector = torch.randn(adapter.d_model, generator=torch.Generator().manual_seed(3)) * 4
    k = 7
    top = decode_vector(adapter, TOKENIZER, vector, k)
    assert len(top) == k
    probs = [prob for _, prob in top]
    assert probs == sorted(probs, reverse=True)
    assert all(0 < prob <= 1 for prob in probs) and sum(probs) <= 1 + 1e-6
    with torch.no_grad():
        manual = torch.softmax(adapter.lm_head(adapter.final_norm(vector[None, None]))[0, 0], dim=-1)
    values, ids = torch.topk(manual, k)
    assert [token for token, _ in top] == [TOKENIZER.decode([int(i)]) for i in ids]
    assert probs == pytest.approx(values.tolist(), abs=1e-6)
    assert len(decode_vector(adapter, TOKENIZER, vector, 1)) == 1


@contextmanager
def last_block_output(adapter: ModelAdapter, into: list[Tensor]) -> Iterator[None]:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        into.append((output if isinstance(output, Tensor) else output[0]).detach().clone())

    handle = adapter.blocks[adapter.n_layers - 1].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt_neox"])
def test_decoding_the_final_residual_stream_gives_the_models_own_prediction(arch: str) -> None:
    """Independent of how decode_vector is written: the lens of the last block's output is the model's output
    distribution (final norm, LM head and, for gemma2, the logit soft-cap included)."""
    adapter = adapter_of(arch)
    captured: list[Tensor] = []
    with torch.inference_mode(), last_block_output(adapter, captured):
        logits = adapter.model(input_ids=torch.tensor([TOKENIZER(PROMPTS[0]).input_ids])).logits[0, -1]
    values, ids = torch.topk(torch.softmax(logits.float(), dim=-1), 5)
    top = decode_vector(adapter, TOKENIZER, captured[0][0, -1], 5)
    assert [token for token, _ in top] == [TOKENIZER.decode([int(i)]) for i in ids]
    assert [prob for _, prob in top] == pytest.approx(values.tolist(), abs=1e-5)


# --- evaluation ----------------------------------------------------------------------------------------


def model_ranking(adapter: ModelAdapter, texts: list[str]) -> Tensor:
    """Token ids of every prompt sorted by the model's last-position logits (best first), one prompt at a time."""
    rows = []
    with torch.inference_mode():
        for text in texts:
            logits = adapter.model(input_ids=torch.tensor([TOKENIZER(text).input_ids])).logits[0, -1]
            rows.append(torch.argsort(logits, descending=True))
    return torch.stack(rows)


def test_ranks_of_answers_are_the_models_ranks() -> None:
    adapter = adapter_of("llama")
    order = model_ranking(adapter, PROMPTS)
    wanted = [0, 3, 1, 0, 7]
    items = [PromptItem(text, (int(order[index, rank]),), Pair("x", "y"))
             for index, (text, rank) in enumerate(zip(PROMPTS, wanted, strict=True))]
    for batch_size in (1, 2, 16):  # padded batches give the same ranks
        ranks = ranks_of_answers(adapter, TOKENIZER, items, batch_size=batch_size)
        assert ranks.tolist() == wanted
    assert accuracy(torch.tensor(wanted)) == pytest.approx(2 / 5)
    assert accuracy(torch.tensor(wanted), 3) == pytest.approx(3 / 5)
    assert accuracy(torch.zeros(0, dtype=torch.long)) == 0.0
    assert ranks_of_answers(adapter, TOKENIZER, []).numel() == 0


def test_steering_changes_ranks_and_zero_steering_does_not() -> None:
    adapter = adapter_of("llama")
    order = model_ranking(adapter, PROMPTS)
    items = [PromptItem(text, (int(order[index, 0]),), Pair("x", "y")) for index, text in enumerate(PROMPTS)]
    plain = ranks_of_answers(adapter, TOKENIZER, items)
    assert plain.tolist() == [0] * len(items)
    zero = ranks_of_answers(adapter, TOKENIZER, items, (1, torch.zeros(adapter.d_model)))
    assert torch.equal(zero, plain)
    push = torch.randn(adapter.d_model, generator=torch.Generator().manual_seed(0)) * 20
    steered = ranks_of_answers(adapter, TOKENIZER, items, (1, push), batch_size=2)
    assert steered.tolist() != plain.tolist()
    # Steering by the answer's own unembedding direction at the last block makes it top-1 everywhere.
    target = int(order[0, 5])
    toward = parameter(adapter.lm_head, "weight")[target] * 200
    boosted = ranks_of_answers(adapter, TOKENIZER, [PromptItem(t, (target,), Pair("x", "y")) for t in PROMPTS],
                               (adapter.n_layers - 1, toward))
    assert boosted.tolist() == [0] * len(PROMPTS)


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_layer_sweep_equals_one_steered_forward_per_layer(arch: str) -> None:
    """The one-pass sweep (copies of the last token entering above their layer) gives, at every layer, the ranks
    and answer log-probabilities of a plain steered forward, and the unsteered top-1; batches split anywhere."""
    adapter = adapter_of(arch)
    order = model_ranking(adapter, PROMPTS)
    items = [PromptItem(text, (int(order[index, index % 3]),), Pair("x", "y")) for index, text in enumerate(PROMPTS)]
    vector = torch.randn(adapter.d_model, generator=torch.Generator().manual_seed(1)) * 3
    layers = [3, 0, 2, 1]
    steps: list[tuple[int, int]] = []
    swept = sweep_layers(adapter, TOKENIZER, items, vector, layers, batch_size=2,
                         on_batch=lambda i, n: steps.append((i, n)))
    assert list(swept.top1) == layers and steps == [(1, 3), (2, 3), (3, 3)]
    assert swept.baseline_top1 == accuracy(ranks_of_answers(adapter, TOKENIZER, items))
    varied = set()
    for layer in layers:
        logits = steered_last_logits(adapter, [item.text for item in items], (layer, vector))
        answers = torch.tensor([[item.answer_token] for item in items])
        assert swept.top1[layer] == accuracy((logits > logits.gather(1, answers)).sum(dim=1))
        expected = float(torch.log_softmax(logits, dim=-1).gather(1, answers).mean())
        assert swept.log_prob[layer] == pytest.approx(expected, abs=1e-4)
        varied.add(round(swept.log_prob[layer], 3))
    assert len(varied) > 1, "the vector changes nothing: the comparison would be vacuous"
    assert sweep_layers(adapter, TOKENIZER, items, vector, [1], batch_size=8).top1 == {1: swept.top1[1]}
    assert all("forward" not in block.__dict__ for block in adapter.blocks)
    assert all(not block._forward_hooks for block in adapter.blocks)


def steered_last_logits(adapter: ModelAdapter, texts: list[str], vector: tuple[int, Tensor]) -> Tensor:
    """The reference: one left-padded forward with ``vector`` added at every row's last token."""
    ids, mask = encode_left_padded(TOKENIZER, texts, torch.device("cpu"))
    positions = torch.zeros(ids.shape, dtype=torch.bool)
    positions[:, -1] = True
    steering = BatchSteering({vector[0]: vector[1].reshape(1, -1).expand(len(texts), -1)}, positions)
    with torch.inference_mode(), steered(adapter, steering):
        return last_token_logits(adapter, ids, mask)


SPACE = TOKENIZER(" ", add_special_tokens=False).input_ids[0]


@contextmanager
def answer_logit_bias(adapter: ModelAdapter, token: int, bias: float) -> Iterator[None]:
    def hook(module: torch.nn.Module, args: Any, output: Tensor) -> Tensor:
        output = output.clone()
        output[..., token] += bias
        return output

    handle = adapter.lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def space_margins(adapter: ModelAdapter, items: list[PromptItem]) -> Tensor:
    ids, mask = encode_left_padded(TOKENIZER, [item.text for item in items], torch.device("cpu"))
    with torch.inference_mode():
        logits = last_token_logits(adapter, ids, mask)
    others = logits.clone()
    others[:, SPACE] = -torch.inf
    return others.max(dim=1).values - logits[:, SPACE]


def test_evaluate_keeps_the_items_clean_prompting_gets_right() -> None:
    """With the char tokenizer every answer's first token is " "; a logit bias on it, set between the margins of
    the clean prompts, makes the model right on some test items and wrong on others."""
    adapter = adapter_of("llama")
    pairs = [Pair(f"w{index}", f"v{index}") for index in range(30)]
    demo_pool, test = pairs[:20], pairs[20:]
    template, seed, shots = Template(), 4, 3
    clean = icl_prompts(TOKENIZER, template, "<s>", demo_pool, test, random.Random(seed), shots)
    margins = sorted(space_margins(adapter, clean).tolist())
    bias = (margins[3] + margins[4]) / 2  # exactly 4 of the 10 clean prompts answer " "
    vector = (1, torch.randn(adapter.d_model, generator=torch.Generator().manual_seed(5)) * 10)
    calls: list[int] = []

    def run(fn: Callable[[], Tensor]) -> Tensor:
        calls.append(1)
        return fn()

    with answer_logit_bias(adapter, SPACE, bias):
        result = evaluate(adapter, TOKENIZER, template, "<s>", demo_pool, test, vector, seed=seed, shots=shots,
                          run=run)
        clean_ranks = ranks_of_answers(adapter, TOKENIZER, clean)
        kept = [pair for pair, rank in zip(test, clean_ranks.tolist(), strict=True) if rank == 0]
        zero = zero_shot_prompts(TOKENIZER, template, "<s>", kept)
        zero_top1 = accuracy(ranks_of_answers(adapter, TOKENIZER, zero))
        zero_fv_top1 = accuracy(ranks_of_answers(adapter, TOKENIZER, zero, vector))
    assert calls, "forwards must go through the runner"
    assert result.n == 4 and result.n_dropped == 6
    assert result.n + result.n_dropped == len(test)
    assert result.icl["top1"] == pytest.approx(result.n / len(test))  # over all items, not only the kept ones
    assert result.icl["top3"] >= result.icl["top1"]
    assert result.zero_shot["top1"] == pytest.approx(zero_top1)  # the other conditions: kept items only
    assert result.zero_shot_fv["top1"] == pytest.approx(zero_fv_top1)
    for scores in (result.zero_shot, result.zero_shot_fv, result.icl_shuffled, result.icl_shuffled_fv):
        assert 0.0 <= scores["top1"] <= scores["top3"] <= 1.0
    assert all(isinstance(getattr(result, setting), dict) for setting in SETTINGS)


def test_evaluate_with_nothing_right_drops_everything() -> None:
    adapter = adapter_of("llama")
    pairs = [Pair(f"w{index}", f"v{index}") for index in range(16)]
    with answer_logit_bias(adapter, SPACE, -1e4):
        result = evaluate(adapter, TOKENIZER, Template(), "<s>", pairs[:10], pairs[10:],
                          (1, torch.zeros(adapter.d_model)), shots=2)
    assert (result.n, result.n_dropped) == (0, 6)
    assert result.icl == {"top1": 0.0, "top3": 0.0}
    assert result.zero_shot == {"top1": 0.0, "top3": 0.0}
