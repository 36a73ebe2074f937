"""Steering invariants (docs/architecture.md, "Steering semantics") on tiny random models of every supported
architecture.

The cached path below mirrors what the engine does (left-padded prefill, then one token per forward
with ``position_ids``); the reference path re-runs the whole sequence every step without a cache.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch import Tensor
from transformers import DynamicCache

from app.engine.requests import GenerationRequest, SamplingParams
from app.model.adapter import ModelAdapter, adapt
from app.model.steering import BatchSteering, _add_to_output, stack_row_vectors, steered
from tests.engine_helpers import bank_steering, tiny_engine
from tests.tiny_models import ARCH_CONFIGS, tiny_model, tiny_tokenizer

# Tiny models run faster on one thread, and much faster when other processes share the cores.

ARCHS = sorted(ARCH_CONFIGS)
LAYER = 1
STEPS = 5
PROMPTS = ["Q: hot\nA:", "big ->", "The quick brown fox"]


@functools.cache
def _adapter(arch: str) -> ModelAdapter:
    return adapt(tiny_model(arch), tiny_tokenizer())


def _vector(adapter: ModelAdapter, seed: int, norm: float = 8.0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(adapter.d_model, generator=generator)
    return vector * (norm / vector.norm())


def _encode(prompt: str) -> list[int]:
    ids: list[int] = tiny_tokenizer()(prompt).input_ids
    return ids


def _left_pad(prompts: list[list[int]]) -> tuple[Tensor, Tensor]:
    width = max(len(ids) for ids in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def _forward(
    adapter: ModelAdapter,
    ids: Tensor,
    steering: BatchSteering | None = None,
    mask: Tensor | None = None,
    cache: DynamicCache | None = None,
    position_ids: Tensor | None = None,
) -> Tensor:
    """All logits ``[batch, seq, vocab]`` of one (optionally steered) forward."""
    if mask is None:
        mask = torch.ones_like(ids)
    if position_ids is None and cache is None:
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), steered(adapter, steering):
        out = adapter.model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
            use_cache=cache is not None,
        )
    logits: Tensor = out.logits
    return logits


def _single(vectors: dict[int, Tensor] | None, positions: Tensor) -> BatchSteering | None:
    if not vectors:
        return None
    return BatchSteering({layer: v[None, :] for layer, v in vectors.items()}, positions)


def _generate_cached(
    adapter: ModelAdapter, prompt: list[int], vectors: dict[int, Tensor] | None, all_positions: bool
) -> tuple[list[int], list[Tensor]]:
    """Greedy steered generation with a KV cache: prefill, then one token per forward."""
    ids = torch.tensor([prompt])
    positions = torch.ones_like(ids, dtype=torch.bool) if all_positions else torch.zeros_like(ids, dtype=torch.bool)
    positions[:, -1] = True
    cache = DynamicCache()
    logits = _forward(adapter, ids, _single(vectors, positions), cache=cache)[0, -1]
    tokens: list[int] = []
    history: list[Tensor] = []
    mask = torch.ones_like(ids)
    for step in range(STEPS):
        history.append(logits)
        tokens.append(int(logits.argmax()))
        mask = torch.cat([mask, torch.ones((1, 1), dtype=torch.long)], dim=1)
        step_ids = torch.tensor([[tokens[-1]]])
        position_ids = torch.tensor([[len(prompt) + step]])
        decode = _single(vectors, torch.ones((1, 1), dtype=torch.bool))
        logits = _forward(adapter, step_ids, decode, mask=mask, cache=cache, position_ids=position_ids)[0, -1]
    return tokens, history


def _generate_uncached(
    adapter: ModelAdapter, prompt: list[int], vectors: dict[int, Tensor] | None, all_positions: bool
) -> tuple[list[int], list[Tensor]]:
    """The reference: re-run the whole sequence each step, the vector at positions >= the last prompt token."""
    sequence = list(prompt)
    tokens: list[int] = []
    history: list[Tensor] = []
    for _ in range(STEPS):
        ids = torch.tensor([sequence])
        positions = torch.arange(len(sequence))[None, :] >= (0 if all_positions else len(prompt) - 1)
        logits = _forward(adapter, ids, _single(vectors, positions))[0, -1]
        history.append(logits)
        tokens.append(int(logits.argmax()))
        sequence.append(tokens[-1])
    return tokens, history


def _capture_block(adapter: ModelAdapter, layer: int, ids: Tensor, steering: BatchSteering | None) -> Tensor:
    """The hidden states block ``layer`` hands on (after any steering hook)."""
    captured: list[Tensor] = []
    with torch.no_grad(), steered(adapter, steering):
        handle = adapter.blocks[layer].register_forward_hook(
            lambda mod, args, out: captured.append(out if isinstance(out, Tensor) else out[0])
        )
        try:
            adapter.model(input_ids=ids)
        finally:
            handle.remove()
    return captured[0]


def _hook_counts(adapter: ModelAdapter) -> list[int]:
    modules = [adapter.model, *adapter.model.modules()]
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules]


# ------------------------------------------------------------------------------------------ (a) cache


@pytest.mark.parametrize("all_positions", [False, True], ids=["fv", "all"])
@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_equals_full_reforward(arch: str, all_positions: bool) -> None:
    adapter = _adapter(arch)
    prompt = _encode(PROMPTS[0])
    vectors = {LAYER: _vector(adapter, 1), adapter.n_layers - 1: _vector(adapter, 2, norm=4.0)}
    cached_tokens, cached_logits = _generate_cached(adapter, prompt, vectors, all_positions)
    ref_tokens, ref_logits = _generate_uncached(adapter, prompt, vectors, all_positions)
    assert cached_tokens == ref_tokens
    for got, want in zip(cached_logits, ref_logits, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The comparison is not vacuous: steering changed the continuation's logits.
    _, plain_logits = _generate_uncached(adapter, prompt, None, all_positions)
    assert not torch.allclose(cached_logits[0], plain_logits[0], atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt_neox", "gptj"])
def test_engine_steered_batch_equals_the_uncached_reference(arch: str) -> None:
    """The engine (cache, left padding, mixed rows) generates what the uncached single-row reference does."""
    adapter = _adapter(arch)
    tokenizer = tiny_tokenizer()
    engine = tiny_engine(adapter.model, tokenizer, arch, max_batch=8, max_queue=8, max_prompt_tokens=64)
    specs: list[tuple[str, dict[int, Tensor] | None, bool]] = [
        (PROMPTS[0], {LAYER: _vector(adapter, 20)}, False),
        (PROMPTS[1], None, False),
        (PROMPTS[2], {LAYER: _vector(adapter, 21), adapter.n_layers - 1: _vector(adapter, 22, norm=3.0)}, True),
    ]
    requests = [
        GenerationRequest(_encode(prompt), SamplingParams(max_new_tokens=STEPS),
                          steering=bank_steering(engine.bank, vectors, every))
        for prompt, vectors, every in specs
    ]
    engine.submit(requests)
    engine.start()
    try:
        results = [request.future.result(timeout=30) for request in requests]
    finally:
        engine.stop()
    eos = int(tokenizer.eos_token_id)
    for (prompt, vectors, every), result in zip(specs, results, strict=True):
        expected, _ = _generate_uncached(adapter, _encode(prompt), vectors, every)
        assert result.token_ids == expected[: len(result.token_ids)], prompt
        assert len(result.token_ids) == STEPS or result.token_ids[-1] == eos


# ------------------------------------------------------------------------------------------ (b) batch


@pytest.mark.parametrize("arch", ARCHS)
def test_row_output_does_not_depend_on_its_batch(arch: str) -> None:
    adapter = _adapter(arch)
    prompts = [_encode(p) for p in PROMPTS]
    rows: list[dict[int, Tensor] | None] = [
        {LAYER: _vector(adapter, 10)},
        None,
        {LAYER: _vector(adapter, 11), 0: _vector(adapter, 12, norm=3.0)},
    ]
    all_positions = [False, False, True]
    ids, mask = _left_pad(prompts)
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[:, -1] = True
    for row, every in enumerate(all_positions):
        if every:
            positions[row] = mask[row].bool()
    steering = BatchSteering(stack_row_vectors(rows, adapter.d_model, torch.float32), positions)
    batch_logits = _forward(adapter, ids, steering, mask=mask)[:, -1]
    plain_batch_logits = _forward(adapter, ids, None, mask=mask)[:, -1]

    for row, prompt in enumerate(prompts):
        alone_ids = torch.tensor([prompt])
        alone_positions = torch.ones_like(alone_ids, dtype=torch.bool)
        if not all_positions[row]:
            alone_positions[:, :-1] = False
        alone = _forward(adapter, alone_ids, _single(rows[row], alone_positions))[0, -1]
        torch.testing.assert_close(batch_logits[row], alone, rtol=1e-5, atol=1e-4)
        assert int(batch_logits[row].argmax()) == int(alone.argmax())

    # The unsteered row of a steered batch gets exactly the unsteered batch's logits ...
    assert torch.equal(batch_logits[1], plain_batch_logits[1])
    # ... while the steered rows really were steered.
    for row in (0, 2):
        assert not torch.allclose(batch_logits[row], plain_batch_logits[row], atol=1e-3)


def test_stack_row_vectors_zero_fills_rows_without_a_layer() -> None:
    v, w, u = torch.ones(4), torch.full((4,), 2.0, dtype=torch.float64), torch.arange(4.0)
    stacked = stack_row_vectors([None, {1: v}, {1: w, 3: u}, {}], d_model=4, dtype=torch.float32)
    assert sorted(stacked) == [1, 3]
    assert stacked[1].shape == stacked[3].shape == (4, 4)
    assert all(block.dtype == torch.float32 for block in stacked.values())
    assert torch.equal(stacked[1], torch.stack([torch.zeros(4), v, w.float(), torch.zeros(4)]))
    assert torch.equal(stacked[3], torch.stack([torch.zeros(4), torch.zeros(4), u, torch.zeros(4)]))
    assert stack_row_vectors([None, {}], d_model=4, dtype=torch.float32) == {}


# ------------------------------------------------------------------------------------------ (c) removal


@pytest.mark.parametrize("arch", ARCHS)
def test_leaving_the_context_restores_the_unsteered_logits(arch: str) -> None:
    adapter = _adapter(arch)
    ids = torch.tensor([_encode(PROMPTS[2])])
    before_hooks = _hook_counts(adapter)
    baseline = _forward(adapter, ids)
    steering = BatchSteering({LAYER: _vector(adapter, 3)[None], 0: _vector(adapter, 4)[None]},
                             torch.ones_like(ids, dtype=torch.bool))
    with steered(adapter, steering):
        assert len(adapter.blocks[LAYER]._forward_hooks) == 1
        assert len(adapter.blocks[0]._forward_hooks) == 1
        with torch.no_grad():
            inside = adapter.model(input_ids=ids).logits
    assert not torch.allclose(inside, baseline, atol=1e-3)
    after = _forward(adapter, ids)
    assert torch.equal(after, baseline)
    assert _hook_counts(adapter) == before_hooks
    assert all(not block._forward_hooks and not block._forward_pre_hooks for block in adapter.blocks)


def test_hooks_are_removed_when_the_forward_raises() -> None:
    adapter = _adapter("llama")
    ids = torch.tensor([_encode(PROMPTS[0])])
    baseline = _forward(adapter, ids)
    steering = BatchSteering({LAYER: _vector(adapter, 5)[None]}, torch.ones_like(ids, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="boom"), steered(adapter, steering):
        raise RuntimeError("boom")
    assert all(not block._forward_hooks for block in adapter.blocks)
    assert torch.equal(_forward(adapter, ids), baseline)


def test_no_steering_installs_no_hooks() -> None:
    adapter = _adapter("llama")
    for steering in (None, BatchSteering({}, torch.ones((1, 1), dtype=torch.bool))):
        with steered(adapter, steering):
            assert all(not block._forward_hooks for block in adapter.blocks)


# ------------------------------------------------------------------------------------------ (d) outputs


def test_add_to_output_handles_a_tensor() -> None:
    hidden = torch.randn(2, 3, 4)
    delta = torch.randn(2, 3, 4)
    out = _add_to_output(hidden, delta)
    assert isinstance(out, Tensor)
    assert torch.equal(out, hidden + delta)


def test_add_to_output_handles_a_tuple_and_keeps_the_rest() -> None:
    hidden, extra = torch.randn(2, 3, 4), object()
    delta = torch.randn(2, 3, 4)
    out = _add_to_output((hidden, extra), delta)
    assert isinstance(out, tuple) and len(out) == 2
    assert torch.equal(out[0], hidden + delta)
    assert out[1] is extra


def test_add_to_output_keeps_the_block_dtype() -> None:
    hidden = torch.randn(1, 2, 4, dtype=torch.bfloat16)
    delta = torch.randn(1, 2, 4)
    assert _add_to_output(hidden, delta).dtype == torch.bfloat16
    assert _add_to_output((hidden,), delta)[0].dtype == torch.bfloat16


@pytest.mark.parametrize("output", [[torch.zeros(1, 1, 4)], (), {"hidden": torch.zeros(1, 1, 4)}, "x"])
def test_add_to_output_refuses_what_it_cannot_steer(output: Any) -> None:
    with pytest.raises(TypeError, match="cannot steer"):
        _add_to_output(output, torch.zeros(1, 1, 4))


@pytest.mark.parametrize(("arch", "kind"), [("llama", Tensor), ("gptj", tuple)])
def test_real_blocks_of_both_output_kinds_are_steered(arch: str, kind: type) -> None:
    adapter = _adapter(arch)
    ids = torch.tensor([_encode(PROMPTS[0])])
    seen: list[Any] = []
    handle = adapter.blocks[LAYER].register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        baseline = _forward(adapter, ids)
    finally:
        handle.remove()
    assert isinstance(seen[0], kind), f"{arch} blocks are expected to return {kind.__name__}"
    steering = BatchSteering({LAYER: _vector(adapter, 6)[None]}, torch.ones_like(ids, dtype=torch.bool))
    assert not torch.allclose(_forward(adapter, ids, steering), baseline, atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_vector_lands_exactly_at_the_steered_positions(arch: str) -> None:
    adapter = _adapter(arch)
    ids = torch.tensor([_encode(PROMPTS[2])])
    vector = _vector(adapter, 7)
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[0, [2, 5, -1]] = True
    plain = _capture_block(adapter, LAYER, ids, None)
    steered_hidden = _capture_block(adapter, LAYER, ids, BatchSteering({LAYER: vector[None]}, positions))
    delta = steered_hidden - plain
    torch.testing.assert_close(delta[0, positions[0]], vector.expand(3, -1), rtol=1e-5, atol=1e-5)
    assert torch.equal(steered_hidden[0, ~positions[0]], plain[0, ~positions[0]])


# ------------------------------------------------------------------------------------------ (e) policy


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gptj", "gemma2"])
def test_fv_policy_touches_only_the_last_prompt_token_and_all_touches_every_one(arch: str) -> None:
    adapter = _adapter(arch)
    ids = torch.tensor([_encode(PROMPTS[2])])
    vectors = {LAYER: _vector(adapter, 8)}
    last = torch.zeros_like(ids, dtype=torch.bool)
    last[:, -1] = True
    every = torch.ones_like(ids, dtype=torch.bool)
    baseline = _forward(adapter, ids)
    fv = _forward(adapter, ids, _single(vectors, last))
    everywhere = _forward(adapter, ids, _single(vectors, every))
    # FV policy: the prompt before its last token is untouched (bit for bit), the last token is steered.
    assert torch.equal(fv[0, :-1], baseline[0, :-1])
    assert not torch.allclose(fv[0, -1], baseline[0, -1], atol=1e-3)
    # "all": every prompt position is steered, and the last token sees a different context than under FV.
    for position in range(ids.shape[1]):
        assert not torch.allclose(everywhere[0, position], baseline[0, position], atol=1e-3)
    assert not torch.allclose(everywhere[0, -1], fv[0, -1], atol=1e-3)
    # The block output itself differs by exactly the vector at every position under "all".
    plain_hidden = _capture_block(adapter, LAYER, ids, None)
    all_hidden = _capture_block(adapter, LAYER, ids, _single(vectors, every))
    torch.testing.assert_close(all_hidden - plain_hidden, vectors[LAYER].expand_as(plain_hidden), rtol=1e-5,
                               atol=1e-5)
