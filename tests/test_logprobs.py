"""Token log-probabilities under steering (app/model/logprobs.py), on tiny random models of every supported family,
against references written the slow, obvious way."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from app.model.adapter import ModelAdapter, adapt
from app.model.logprobs import next_token_logprobs, sequence_logprobs
from app.model.runner import Abandoned
from tests.tiny_models import ARCH_CONFIGS, tiny_model, tiny_tokenizer

TOL = 1e-4


def _adapter(arch: str) -> ModelAdapter:
    return adapt(tiny_model(arch), tiny_tokenizer())


def _row(seed: int, length: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 90, (length,), generator=generator).tolist()


def _vector(adapter: ModelAdapter) -> dict[int, torch.Tensor]:
    return {1: torch.randn(adapter.d_model, generator=torch.Generator().manual_seed(7)) * 3}


def _reference(adapter: ModelAdapter, row: list[int], steer_from: int, vectors: dict[int, torch.Tensor] | None
               ) -> list[float]:
    """One unbatched forward with a hook adding the vector at positions ≥ steer_from."""
    handles = []
    for layer, vector in (vectors or {}).items():
        def hook(module: torch.nn.Module, args: object, output: object, vector: torch.Tensor = vector) -> object:
            hidden = output if isinstance(output, torch.Tensor) else output[0]  # type: ignore[index]
            delta = torch.zeros_like(hidden)
            delta[:, steer_from:] = vector
            return hidden + delta if isinstance(output, torch.Tensor) else (hidden + delta, *output[1:])  # type: ignore[index]
        handles.append(adapter.blocks[layer].register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = adapter.model(input_ids=torch.tensor([row])).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return [float(log_probs[t - 1, row[t]]) for t in range(1, len(row))]


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_sequence_logprobs_match_a_plain_forward_and_batching_changes_nothing(arch: str) -> None:
    adapter = _adapter(arch)
    vectors = _vector(adapter)
    rows = [_row(1, 12), _row(2, 5), _row(3, 9)]
    starts = [4, 0, 9]  # steered from the middle, everywhere, nowhere
    batched = sequence_logprobs(adapter, rows, starts, vectors, top_k=3)
    for row, start, got in zip(rows, starts, batched, strict=True):
        expected = _reference(adapter, row, start, vectors)
        assert [item.token_id for item in got] == row[1:]
        assert max(abs(a.logprob - b) for a, b in zip(got, expected, strict=True)) < TOL
        for item in got:  # the top-k are sorted, and the token's own log-prob is never above the best one
            assert [lp for _, lp in item.top] == sorted((lp for _, lp in item.top), reverse=True)
            assert item.logprob <= item.top[0][1] + 1e-6
    unsteered = sequence_logprobs(adapter, rows[:1], [0], None)[0]
    assert max(abs(a.logprob - b) for a, b in zip(unsteered, _reference(adapter, rows[0], 0, None), strict=True)) < TOL
    assert max(abs(a.logprob - b.logprob) for a, b in zip(unsteered, batched[0], strict=True)) > 0.01  # it steers


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_next_token_logprobs_score_each_token_as_the_first_generated_one(arch: str) -> None:
    """Two forwards (unsteered cache, then a steered pass through a 4-D mask) equal one forward per prefix with
    the vector at that prefix's last token."""
    adapter = _adapter(arch)
    vectors = _vector(adapter)
    row = _row(4, 11)
    fast = next_token_logprobs(adapter, row, vectors, top_k=2)
    slow = [_reference(adapter, row[: t + 1], t - 1, vectors)[-1] for t in range(1, len(row))]
    assert max(abs(a.logprob - b) for a, b in zip(fast, slow, strict=True)) < TOL
    assert next_token_logprobs(adapter, row[:1], vectors) == []


def test_a_vector_at_the_last_prompt_token_only_changes_the_next_token() -> None:
    """Where the two policies overlap — the token right after the steered position — they agree; before it they are
    unsteered."""
    adapter = _adapter("llama")
    vectors = _vector(adapter)
    row = _row(5, 10)
    first = next_token_logprobs(adapter, row, vectors)
    whole = sequence_logprobs(adapter, [row], [len(row) - 2], vectors)[0]
    plain = sequence_logprobs(adapter, [row], [len(row)], None)[0]
    assert abs(first[-1].logprob - whole[-1].logprob) < TOL
    assert max(abs(a.logprob - b.logprob) for a, b in zip(whole[:-1], plain[:-1], strict=True)) < TOL


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_slices_with_a_carried_cache_score_as_one_forward(chunk: int) -> None:
    """Scoring goes through the model in slices (each one engine task, so decoding interleaves and an abandoned
    request stops between them): the figures are those of one forward, whatever the slice."""
    adapter = _adapter("llama")
    vectors = _vector(adapter)
    rows, starts = [_row(1, 12), _row(2, 5), _row(3, 9)], [4, 0, 9]
    calls: list[int] = []

    def counting(fn: Any) -> Any:
        calls.append(1)
        return fn()

    whole = sequence_logprobs(adapter, rows, starts, vectors, top_k=2)
    sliced = sequence_logprobs(adapter, rows, starts, vectors, top_k=2, run=counting, chunk_tokens=chunk * len(rows))
    assert len(calls) == -(-12 // chunk)  # one run per slice of the widest row
    for got, want in zip(sliced, whole, strict=True):
        assert [t.token_id for t in got] == [t.token_id for t in want]
        assert max(abs(a.logprob - b.logprob) for a, b in zip(got, want, strict=True)) < TOL
    row = _row(4, 11)
    calls.clear()
    first = next_token_logprobs(adapter, row, vectors, top_k=2, run=counting, chunk_tokens=chunk)
    assert len(calls) == 2 * -(-11 // chunk)  # the cache pass and the steered pass, slice by slice
    expected = next_token_logprobs(adapter, row, vectors, top_k=2)
    assert max(abs(a.logprob - b.logprob) for a, b in zip(first, expected, strict=True)) < TOL


def test_an_abandoned_scoring_stops_at_the_next_slice() -> None:
    adapter = _adapter("llama")
    calls: list[int] = []

    def leaving(fn: Any) -> Any:
        calls.append(1)
        if len(calls) > 2:
            raise Abandoned("the client left")
        return fn()

    with pytest.raises(Abandoned):
        sequence_logprobs(adapter, [_row(1, 40)], [0], _vector(adapter), run=leaving, chunk_tokens=4)
    assert len(calls) == 3  # of ten slices
