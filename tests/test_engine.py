"""The batching engine on tiny random models: exactness, continuous batching, limits and failures."""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import pytest
import torch
from fvsteer_vllm.bank import vector_digest
from torch import Tensor, nn
from transformers import PreTrainedModel

from app.engine import engine as engine_module
from app.engine.engine import DECODE_SHARE, Engine
from app.engine.requests import BankSteering, GenerationRequest, GenerationResult, SamplingParams
from app.engine.sampling import make_generator, next_token
from app.errors import InvalidInput, NotFound, NotReady, QueueFull
from app.model.adapter import adapt
from app.model.runner import Abandoned, offload
from tests.engine_helpers import bank_steering, tiny_engine
from tests.tiny_models import tiny_model, tiny_tokenizer

# Tiny models run faster on one thread, and much faster when other processes share the cores.

EOS = 2
WAIT_S = 30.0
PROMPTS = ["Q: hot\nA:", "big ->", "The quick brown fox", "a"]
# Longer than the sliding window (64) of the tiny mistral and gemma2.
LONG_PROMPT = "The quick brown fox jumps over the lazy dog; " * 2


@functools.cache
def _shared_model(arch: str) -> PreTrainedModel:
    return tiny_model(arch)


class MakeEngine(Protocol):
    def __call__(
        self,
        arch: str = ...,
        *,
        model: PreTrainedModel | None = ...,
        max_batch: int = ...,
        max_queue: int = ...,
        max_prompt_tokens: int = ...,
        start: bool = ...,
    ) -> Engine: ...


@pytest.fixture
def make_engine() -> Iterator[MakeEngine]:
    engines: list[Engine] = []

    def make(
        arch: str = "llama",
        *,
        model: PreTrainedModel | None = None,
        max_batch: int = 16,
        max_queue: int = 64,
        max_prompt_tokens: int = 128,
        start: bool = True,
    ) -> Engine:
        model = model if model is not None else _shared_model(arch)
        engine = tiny_engine(model, tiny_tokenizer(), arch, max_batch=max_batch, max_queue=max_queue,
                             max_prompt_tokens=max_prompt_tokens)
        engines.append(engine)
        if start:
            engine.start()
        return engine

    yield make
    for engine in engines:
        if engine._thread is None:  # never started: drop what is queued so stop() has nothing to drain
            engine._pending.clear()
        engine.stop()
        assert engine._thread is None or not engine._thread.is_alive(), "the engine thread must end on stop()"


@pytest.fixture
def fresh_llama() -> Iterator[PreTrainedModel]:
    """A model of its own for tests that hook into it; every hook is gone afterwards."""
    model = tiny_model("llama")
    yield model
    for module in model.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()


def _request(
    engine: Engine,
    prompt: str,
    *,
    max_new_tokens: int = 8,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: tuple[str, ...] = (),
    steering: dict[int, Tensor] | None = None,
    all_positions: bool = False,
    deadline: float | None = None,
) -> GenerationRequest:
    params = SamplingParams(max_new_tokens, temperature, top_p, seed, stop)
    return GenerationRequest(
        engine.encode(prompt, max_new_tokens), params, steering=bank_steering(engine.bank, steering, all_positions),
        deadline=deadline,
    )


def _run(engine: Engine, prompt: str, **kwargs: Any) -> GenerationResult:
    request = _request(engine, prompt, **kwargs)
    engine.submit([request])
    return request.future.result(timeout=WAIT_S)


def _same(a: GenerationResult, b: GenerationResult) -> bool:
    return (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)


def _eventually(condition: Callable[[], bool]) -> bool:
    """Stats are written by the engine thread after a step's futures resolve: give it a moment."""
    end = time.monotonic() + 5.0
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def _vector(seed: int, d_model: int = 32, norm: float = 8.0) -> Tensor:
    vector = torch.randn(d_model, generator=torch.Generator().manual_seed(seed))
    return vector * (norm / vector.norm())


def _edit_logits(model: PreTrainedModel, edit: Callable[[Tensor], None]) -> torch.utils.hooks.RemovableHandle:
    def hook(module: nn.Module, args: Any, output: Tensor) -> Tensor:
        output = output.clone()
        edit(output)
        return output

    return model.get_output_embeddings().register_forward_hook(hook)


def _suppress_eos(model: PreTrainedModel) -> torch.utils.hooks.RemovableHandle:
    def edit(logits: Tensor) -> None:
        logits[..., EOS] = -1e4

    return _edit_logits(model, edit)


class Gate:
    """Holds the engine thread inside its ``at``-th forward until the test releases it."""

    def __init__(self, model: PreTrainedModel, at: int) -> None:
        self.at = at
        self.calls = 0
        self.reached = threading.Event()
        self.release = threading.Event()
        self.handle = model.get_output_embeddings().register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self.calls += 1
        if self.calls == self.at:
            self.reached.set()
            assert self.release.wait(WAIT_S), "the test never released the gate"

    def wait(self) -> None:
        assert self.reached.wait(WAIT_S), "the engine never reached the gate"

    def open(self) -> None:
        self.release.set()
        self.handle.remove()


# ------------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma2", "gpt2", "gpt_neox", "gptj"])
def test_unsteered_greedy_equals_hf_generate(make_engine: MakeEngine, arch: str) -> None:
    engine = make_engine(arch)
    model = _shared_model(arch)
    prompts = [*PROMPTS[:3], LONG_PROMPT]
    requests = [_request(engine, prompt, max_new_tokens=8) for prompt in prompts]
    engine.submit(requests)
    for prompt, request in zip(prompts, requests, strict=True):
        result = request.future.result(timeout=WAIT_S)
        ids = torch.tensor([request.prompt_ids])
        with torch.no_grad():
            generated = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8, pad_token_id=0,
            )
        expected = generated[0, ids.shape[1]:].tolist()
        assert result.token_ids == expected, prompt
        assert result.finish_reason == ("stop" if expected[-1] == EOS else "length")
        assert result.prompt_tokens == len(request.prompt_ids)
        assert result.completion_tokens == len(expected)
        assert result.text == tiny_tokenizer().decode(
            [t for t in expected if t != EOS], skip_special_tokens=True
        )


def test_requests_join_a_running_batch_and_get_what_they_get_alone(
    make_engine: MakeEngine, fresh_llama: PreTrainedModel
) -> None:
    _suppress_eos(fresh_llama)
    engine = make_engine(model=fresh_llama)
    gate = Gate(fresh_llama, at=3)  # the first request's second decode step
    first = _request(engine, PROMPTS[0], max_new_tokens=12)
    engine.submit([first])
    gate.wait()
    joiners = [_request(engine, PROMPTS[1], max_new_tokens=4), _request(engine, PROMPTS[2], max_new_tokens=4,
                                                                         steering={1: _vector(1)})]
    for joiner in joiners:
        engine.submit([joiner])
    gate.open()
    results = [req.future.result(timeout=WAIT_S) for req in (first, *joiners)]

    assert results[0].batch_sizes[:3] == (1, 1, 1)
    assert max(results[0].batch_sizes) == 3, "the joiners decoded in the first request's batch"
    assert results[0].batch_sizes[-1] == 1, "finished rows leave the batch"
    for joined in results[1:]:
        assert max(joined.batch_sizes) > 1
    assert engine.stats.batch_sizes[3] > 0

    alone = [
        _run(engine, PROMPTS[0], max_new_tokens=12),
        _run(engine, PROMPTS[1], max_new_tokens=4),
        _run(engine, PROMPTS[2], max_new_tokens=4, steering={1: _vector(1)}),
    ]
    for together, by_itself in zip(results, alone, strict=True):
        assert set(by_itself.batch_sizes) == {1}
        assert _same(together, by_itself)
    assert [r.finish_reason for r in results] == ["length"] * 3


def test_sixteen_concurrent_requests_with_sixteen_vectors(make_engine: MakeEngine) -> None:
    engine = make_engine("llama", max_batch=16, start=False)
    # (prompt, {layer: vector}, all_positions): different prompts, layers, norms and position policies.
    specs: list[tuple[str, dict[int, Tensor], bool]] = [
        (PROMPTS[i % len(PROMPTS)], {i % 4: _vector(100 + i, norm=4.0 + i)}, i % 5 == 0) for i in range(16)
    ]
    requests = [
        _request(engine, prompt, steering=steering, all_positions=every, max_new_tokens=6)
        for prompt, steering, every in specs
    ]
    barrier = threading.Barrier(len(requests))

    def submit(request: GenerationRequest) -> None:
        barrier.wait()
        engine.submit([request])

    threads = [threading.Thread(target=submit, args=(request,)) for request in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.start()
    together = [request.future.result(timeout=WAIT_S) for request in requests]
    assert all(result.batch_sizes[0] == 16 for result in together), "all sixteen were prefilled as one batch"

    changed = 0
    for (prompt, steering, every), result in zip(specs, together, strict=True):
        alone = _run(engine, prompt, steering=steering, all_positions=every, max_new_tokens=6)
        assert _same(result, alone)
        changed += result.token_ids != _run(engine, prompt, max_new_tokens=6).token_ids
    assert changed >= 8, f"steering should change most continuations; it changed {changed} of 16"


# ------------------------------------------------------------------------------------------ finishing


def test_stop_strings_cut_the_text(make_engine: MakeEngine, fresh_llama: PreTrainedModel) -> None:
    _suppress_eos(fresh_llama)
    engine = make_engine(model=fresh_llama)
    full = _run(engine, PROMPTS[0], max_new_tokens=12)
    assert full.finish_reason == "length" and len(full.text) >= 8
    stop = full.text[4:6]
    cut = full.text.find(stop)
    result = _run(engine, PROMPTS[0], max_new_tokens=12, stop=(stop,))
    assert result.finish_reason == "stop"
    assert result.text == full.text[:cut]
    assert stop not in result.text
    assert len(result.token_ids) < 12
    # Of several stop strings the earliest occurrence wins.
    late, early = full.text[6:8], full.text[1:3]
    expected = min(full.text.find(late), full.text.find(early))
    several = _run(engine, PROMPTS[0], max_new_tokens=12, stop=(late, early))
    assert several.finish_reason == "stop" and several.text == full.text[:expected]
    # A stop string that never shows up changes nothing.
    absent = _run(engine, PROMPTS[0], max_new_tokens=12, stop=("\x00never",))
    assert _same(absent, full)


def test_max_new_tokens_gives_length(make_engine: MakeEngine, fresh_llama: PreTrainedModel) -> None:
    _suppress_eos(fresh_llama)
    engine = make_engine(model=fresh_llama)
    for limit in (1, 5):
        result = _run(engine, PROMPTS[1], max_new_tokens=limit)
        assert result.finish_reason == "length"
        assert result.completion_tokens == limit
        assert EOS not in result.token_ids


def test_eos_stops_and_is_not_in_the_text(make_engine: MakeEngine, fresh_llama: PreTrainedModel) -> None:
    engine = make_engine(model=fresh_llama)
    _suppress_eos(fresh_llama)
    free = _run(engine, PROMPTS[0], max_new_tokens=6)
    calls = {"n": 0}

    def force_eos_on_third(logits: Tensor) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            logits[..., EOS] = 1e4

    _edit_logits(fresh_llama, force_eos_on_third)
    result = _run(engine, PROMPTS[0], max_new_tokens=6)
    assert result.finish_reason == "stop"
    assert result.token_ids == [*free.token_ids[:2], EOS]
    assert result.text == tiny_tokenizer().decode(free.token_ids[:2])


# ------------------------------------------------------------------------------------------ sampling


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(make_engine: MakeEngine) -> None:
    engine = make_engine("llama", start=False)
    sampled: dict[str, Any] = dict(max_new_tokens=10, temperature=1.0, top_p=0.9)
    batch = [
        _request(engine, PROMPTS[1], max_new_tokens=10),
        _request(engine, PROMPTS[0], seed=1234, **sampled),
        _request(engine, PROMPTS[2], seed=99, steering={2: _vector(5)}, **sampled),
        _request(engine, PROMPTS[0], seed=5678, **sampled),
    ]
    engine.submit(batch)
    engine.start()
    together = [request.future.result(timeout=WAIT_S) for request in batch]
    alone = _run(engine, PROMPTS[0], seed=1234, **sampled)
    again = _run(engine, PROMPTS[0], seed=1234, **sampled)
    greedy = _run(engine, PROMPTS[0], max_new_tokens=10)
    assert _same(alone, again)
    assert _same(together[1], alone)
    assert _same(together[0], _run(engine, PROMPTS[1], max_new_tokens=10))
    assert together[3].token_ids != together[1].token_ids, "another seed draws other tokens"
    assert alone.token_ids != greedy.token_ids, "temperature 1 is not greedy"
    assert max(together[1].batch_sizes) == 4


def test_a_vanishing_temperature_acts_greedy_and_fails_nothing(make_engine: MakeEngine) -> None:
    engine = make_engine("llama")
    greedy = _run(engine, PROMPTS[0], max_new_tokens=6)
    tiny = _run(engine, PROMPTS[0], max_new_tokens=6, temperature=1e-40, seed=3)
    assert _same(tiny, greedy)


def test_a_top_p_that_rounds_to_zero_keeps_the_top_token_and_fails_nothing(make_engine: MakeEngine) -> None:
    """top_p = 1e-300 is admitted by the schema but is 0 in float32: nucleus sampling must keep the most likely token
    (and so act greedy), not remove every token and fail the batch."""
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    for top_p in (1e-300, 1e-46, 1e-8):
        assert next_token(logits, 1.0, top_p, make_generator(0)) == 1
    engine = make_engine("llama", start=False)
    greedy = _request(engine, PROMPTS[1], max_new_tokens=6)
    tiny = _request(engine, PROMPTS[0], max_new_tokens=6, temperature=1.0, top_p=1e-300, seed=3)
    engine.submit([greedy, tiny])
    engine.start()
    assert _same(tiny.future.result(timeout=WAIT_S), _run(engine, PROMPTS[0], max_new_tokens=6))
    assert _same(greedy.future.result(timeout=WAIT_S), _run(engine, PROMPTS[1], max_new_tokens=6))


def test_a_row_whose_sampling_fails_fails_alone(make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """One row's own step raising (here its sampling, at its third token) fails that request; the others of the
    running batch finish exactly as they would have alone, and the engine keeps serving."""
    engine = make_engine("llama", start=False)
    calls = {"marked": 0}
    real = engine_module.next_token

    def flaky(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
        if top_p == 0.77:  # the marked row
            calls["marked"] += 1
            if calls["marked"] == 3:
                raise RuntimeError("injected row fault")
        return real(logits, temperature, top_p, generator)

    monkeypatch.setattr(engine_module, "next_token", flaky)
    batch = [_request(engine, PROMPTS[1], max_new_tokens=8), _request(engine, PROMPTS[0], max_new_tokens=8,
                                                                      temperature=1.0, top_p=0.77, seed=1),
             _request(engine, PROMPTS[2], max_new_tokens=8)]
    engine.submit(batch)
    engine.start()
    with pytest.raises(RuntimeError, match="injected row fault"):
        batch[1].future.result(timeout=WAIT_S)
    for request, prompt in ((batch[0], PROMPTS[1]), (batch[2], PROMPTS[2])):
        got = request.future.result(timeout=WAIT_S)
        assert _same(got, _run(engine, prompt, max_new_tokens=8)) and max(got.batch_sizes) == 3
    assert engine.stats.failed_rows == 1 and engine.stats.failed_steps == 0 and engine.fatal is None


# ------------------------------------------------------------------------------------------ cancel, deadline


def test_a_request_cancelled_before_admission_never_runs(make_engine: MakeEngine) -> None:
    engine = make_engine("llama", start=False)
    cancelled = _request(engine, PROMPTS[0])
    kept = _request(engine, PROMPTS[1], max_new_tokens=4)
    cancelled.cancel()
    engine.submit([cancelled, kept])
    engine.start()
    result = cancelled.future.result(timeout=WAIT_S)
    assert result.finish_reason == "cancelled"
    assert result.token_ids == [] and result.text == ""
    assert kept.future.result(timeout=WAIT_S).finish_reason in ("length", "stop")


def test_a_request_cancelled_while_decoding_leaves_its_batch(
    make_engine: MakeEngine, fresh_llama: PreTrainedModel
) -> None:
    _suppress_eos(fresh_llama)
    engine = make_engine(model=fresh_llama)
    gate = Gate(fresh_llama, at=3)
    doomed = _request(engine, PROMPTS[0], max_new_tokens=50)
    other = _request(engine, PROMPTS[1], max_new_tokens=6)
    engine.submit([doomed, other])
    gate.wait()
    doomed.cancel()
    gate.open()
    result = doomed.future.result(timeout=WAIT_S)
    assert result.finish_reason == "cancelled"
    assert len(result.token_ids) == 3
    survivor = other.future.result(timeout=WAIT_S)
    assert survivor.finish_reason == "length"
    assert _same(survivor, _run(engine, PROMPTS[1], max_new_tokens=6))


def test_a_past_deadline_times_out(make_engine: MakeEngine, fresh_llama: PreTrainedModel) -> None:
    _suppress_eos(fresh_llama)
    engine = make_engine(model=fresh_llama)
    result = _run(engine, PROMPTS[0], max_new_tokens=20, deadline=time.monotonic() - 1.0)
    assert result.finish_reason == "timeout"
    assert len(result.token_ids) < 20


def test_a_deadline_passing_mid_generation_times_out_with_partial_text(
    make_engine: MakeEngine, fresh_llama: PreTrainedModel
) -> None:
    _suppress_eos(fresh_llama)
    engine = make_engine(model=fresh_llama)
    full = _run(engine, PROMPTS[0], max_new_tokens=20)
    gate = Gate(fresh_llama, at=3)
    deadline = time.monotonic() + 5.0
    request = _request(engine, PROMPTS[0], max_new_tokens=20, deadline=deadline)
    engine.submit([request])
    gate.wait()
    request.deadline = time.monotonic() - 0.001  # the deadline passes while the third token is computed
    gate.open()
    result = request.future.result(timeout=WAIT_S)
    assert result.finish_reason == "timeout"
    assert result.token_ids == full.token_ids[:3]
    assert result.text == tiny_tokenizer().decode(full.token_ids[:3])


# ------------------------------------------------------------------------------------------ limits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_encode_refuses_prompts_over_the_limits(make_engine: MakeEngine, arch: str) -> None:
    engine = make_engine(arch, max_prompt_tokens=10, start=False)
    assert len(engine.encode("x" * 10, 246)) == 10  # exactly the prompt limit and the 256-token context
    with pytest.raises(InvalidInput) as too_long:
        engine.encode("x" * 11, 4)
    assert too_long.value.param == "prompt"
    assert "11 tokens" in too_long.value.message and "limit is 10" in too_long.value.message
    assert too_long.value.status == 422
    with pytest.raises(InvalidInput) as over_context:
        engine.encode("x" * 10, 247)
    assert over_context.value.param == "max_new_tokens"
    assert "256" in over_context.value.message and "247" in over_context.value.message
    with pytest.raises(InvalidInput):
        engine.encode("", 4)


def test_submit_over_the_queue_limit_raises_queue_full(make_engine: MakeEngine) -> None:
    engine = make_engine("llama", max_queue=3, start=False)
    queued = [_request(engine, PROMPTS[0], max_new_tokens=2) for _ in range(2)]
    engine.submit(queued)
    with pytest.raises(QueueFull) as full:
        engine.submit([_request(engine, PROMPTS[0]), _request(engine, PROMPTS[0])])
    assert "limit is 3" in full.value.message and full.value.status == 429
    assert len(engine._pending) == 2, "a refused group is not queued in part"
    queued.append(_request(engine, PROMPTS[1], max_new_tokens=2))
    engine.submit(queued[-1:])
    with pytest.raises(QueueFull):
        engine.submit([_request(engine, PROMPTS[0])])
    engine.start()
    assert all(req.future.result(timeout=WAIT_S).completion_tokens >= 1 for req in queued)


def test_submit_after_stop_is_refused(make_engine: MakeEngine) -> None:
    engine = make_engine("llama")
    engine.stop()
    with pytest.raises(NotReady):
        engine.submit([_request(engine, PROMPTS[0])])


# ------------------------------------------------------------------------------------------ failures


def test_a_failing_forward_fails_its_batch_and_the_engine_keeps_serving(
    make_engine: MakeEngine, fresh_llama: PreTrainedModel
) -> None:
    engine = make_engine(model=fresh_llama)
    healthy = _run(engine, PROMPTS[2], max_new_tokens=6)
    fault = {"at": 0, "calls": 0}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        fault["calls"] += 1
        if fault["calls"] == fault["at"]:
            raise RuntimeError("injected fault")

    handle = adapt(fresh_llama, tiny_tokenizer()).blocks[0].register_forward_hook(hook)
    try:
        # Fails in the prefill ...
        fault.update(at=1, calls=0)
        batch = [_request(engine, PROMPTS[0]), _request(engine, PROMPTS[1], steering={1: _vector(2)})]
        engine.submit(batch)
        for request in batch:
            with pytest.raises(RuntimeError, match="injected fault"):
                request.future.result(timeout=WAIT_S)
        # ... and in the middle of decoding, failing every row of the running batch.
        fault.update(at=3, calls=0)
        batch = [_request(engine, PROMPTS[0], max_new_tokens=10), _request(engine, PROMPTS[3], max_new_tokens=10)]
        engine.submit(batch)
        for request in batch:
            with pytest.raises(RuntimeError, match="injected fault"):
                request.future.result(timeout=WAIT_S)
        fault.update(at=0)
        assert _same(_run(engine, PROMPTS[2], max_new_tokens=6), healthy)
        assert _eventually(lambda: engine.stats.active_rows == 0 and not engine._rows)
    finally:
        handle.remove()


def test_steering_at_a_layer_the_model_lacks_fails_only_that_request(make_engine: MakeEngine) -> None:
    engine = make_engine("llama", start=False)
    good = _request(engine, PROMPTS[0], max_new_tokens=4)
    engine.submit([good])
    for layer, vector in [(4, _vector(1)), (-1, _vector(1)), (1, torch.zeros(7))]:
        with pytest.raises(InvalidInput):
            engine.submit([_request(engine, PROMPTS[1], steering={layer: vector})])
    steering = bank_steering(engine.bank, {1: _vector(1)})
    assert steering is not None
    for moved in (replace(steering, layer=4), replace(steering, weights={"no-such-vector": 1.0})):
        with pytest.raises((InvalidInput, NotFound)):
            engine.submit([GenerationRequest(engine.encode(PROMPTS[1], 4), SamplingParams(4), steering=moved)])
    engine.start()
    assert good.future.result(timeout=WAIT_S).completion_tokens == 4


def test_the_receipt_names_the_vector_a_row_got_when_it_was_replaced_after_submission(make_engine: MakeEngine
                                                                                      ) -> None:
    """Queued with one vector under a name, which is replaced before the row reaches a batch: the row is steered
    with the vector the bank held when it took it, and its receipt names exactly that one (digest and norm)."""
    engine = make_engine("llama", start=False)
    first, second = _vector(11), _vector(12, norm=12.0)
    engine.bank.put("swapped", 1, first)
    engine.bank.put("reference", 1, second)
    queued = GenerationRequest(engine.encode(PROMPTS[0], 6), SamplingParams(6),
                               steering=BankSteering.checked({"swapped": 0.5}, scale=2.0))
    engine.submit([queued])
    engine.bank.put("swapped", 1, second)  # between submission and the batch that takes the row
    engine.start()
    result = queued.future.result(timeout=WAIT_S)
    reference = GenerationRequest(engine.encode(PROMPTS[0], 6), SamplingParams(6),
                                  steering=BankSteering.checked({"reference": 1.0}))
    engine.submit([reference])
    assert result.token_ids == reference.future.result(timeout=WAIT_S).token_ids  # what was applied: the second
    assert result.receipt is not None and result.receipt.positions == "fv"
    ((layer, applied),) = result.receipt.layers.items()
    assert (layer, [(v.name, v.digest, v.weight) for v in applied.vectors]) == (
        1, [("swapped", vector_digest(second), 1.0)])
    assert applied.norm == pytest.approx(12.0, rel=1e-5)


def test_completions_keep_flowing_while_a_job_runs_on_the_engine(make_engine: MakeEngine) -> None:
    """A job's forwards go through ``engine.call`` one at a time, between decode steps: a completion submitted
    mid-job finishes long before the job does."""
    engine = make_engine()
    units_done = 0
    job_done = threading.Event()

    def job() -> None:
        nonlocal units_done
        for _ in range(150):
            engine.call(lambda: time.sleep(0.01), timeout=WAIT_S)
            units_done += 1
        job_done.set()

    worker = threading.Thread(target=job)
    worker.start()
    while units_done < 5:
        time.sleep(0.005)
    request = GenerationRequest(engine.encode("Q: hot\nA:", 6), SamplingParams(max_new_tokens=6))
    engine.submit([request])
    result = request.future.result(timeout=WAIT_S)
    assert result.completion_tokens >= 1
    assert not job_done.is_set(), "the completion had to wait for the whole job"
    worker.join(timeout=WAIT_S)
    assert units_done == 150


def test_engine_call_returns_results_and_raises_errors(make_engine: MakeEngine) -> None:
    engine = make_engine()
    assert engine.call(lambda: threading.current_thread().name) == "fvsteer-engine"
    with pytest.raises(ZeroDivisionError):
        engine.call(lambda: 1 / 0)
    request = GenerationRequest(engine.encode("a", 2), SamplingParams(max_new_tokens=2))
    engine.submit([request])
    assert request.future.result(timeout=WAIT_S).completion_tokens >= 1  # a failed task harms nothing


def test_jobs_get_at_most_a_third_of_the_engine_while_rows_decode(make_engine: MakeEngine) -> None:
    """The time share: a job's tasks (20 ms each here) wait until decoding has had twice as much time since the last
    one, so a generation running beside a job advances at least at two thirds of its speed."""
    engine = make_engine()
    spans: list[tuple[str, float, float]] = []
    decode_step = engine._decode_step

    def timed_decode() -> None:
        started = time.monotonic()
        decode_step()
        spans.append(("decode", started, time.monotonic()))

    def task() -> None:
        started = time.monotonic()
        time.sleep(0.02)
        spans.append(("task", started, time.monotonic()))

    engine._decode_step = timed_decode  # type: ignore[method-assign]
    stop = threading.Event()

    def job() -> None:
        while not stop.is_set():
            engine.call(task, timeout=WAIT_S)

    worker = threading.Thread(target=job)
    worker.start()
    deadline = time.monotonic() + WAIT_S
    while len(spans) < 3:  # the job alone first: its tasks run back to back
        assert time.monotonic() < deadline
        time.sleep(0.005)
    request = _request(engine, "Q: cold\nA:", max_new_tokens=60)
    engine.submit([request])
    result = request.future.result(timeout=WAIT_S)
    stop.set()
    worker.join(timeout=WAIT_S)
    decodes = [span for span in spans if span[0] == "decode"]
    begin, end = decodes[0][1], decodes[-1][2]
    during = [span for span in spans if span[0] == "task" and begin <= span[1] < end]
    task_time = sum(stop_ - start for _, start, stop_ in during)
    decode_time = sum(stop_ - start for _, start, stop_ in decodes)
    assert result.completion_tokens == len(decodes) + 1  # the first token comes from the prefill
    assert during, "the job must go on while the row decodes"
    assert task_time <= decode_time / DECODE_SHARE + 0.03, (task_time, decode_time)


def test_a_waiter_that_cancelled_its_future_never_fails_the_batch(make_engine: MakeEngine) -> None:
    """A client that goes away while queued cancels its future; settling it later must not fail the running rows."""
    engine = make_engine(max_batch=2)
    running = _request(engine, "Q: cold\nA:", max_new_tokens=40)
    engine.submit([running])
    running.admitted.result(timeout=WAIT_S)
    queued = _request(engine, "a", max_new_tokens=4)
    assert queued.future.cancel()  # what asyncio does to the wrapped future when the awaiting task is cancelled
    queued.cancel()
    engine.submit([queued])  # admitted beside the running row at the next step, and dropped there
    result = running.future.result(timeout=WAIT_S)
    assert result.completion_tokens == 40 and result.finish_reason == "length"
    assert engine.stats.failed_steps == 0 and engine.fatal is None
    assert engine.stats.finished["cancelled"] == 1


def test_a_fatal_error_in_the_prefill_fails_the_requests_being_admitted(make_engine: MakeEngine) -> None:
    engine = make_engine(start=False)
    died: list[BaseException] = []
    engine.on_fatal = died.append

    def broken_prefill(requests: list[GenerationRequest]) -> None:
        raise RuntimeError("CUDA error: device-side assert triggered (injected)")

    engine._prefill = broken_prefill  # type: ignore[method-assign]
    requests = [_request(engine, prompt) for prompt in PROMPTS[:2]]
    engine.submit(requests)
    engine.start()
    for request in requests:
        with pytest.raises(NotReady, match="CUDA error"):
            request.future.result(timeout=WAIT_S)
        with pytest.raises(NotReady):
            request.admitted.result(timeout=WAIT_S)
    assert len(died) == 1 and engine.fatal is died[0]
    with pytest.raises(NotReady, match="engine failed"):
        engine.submit([_request(engine, "a")])
    with pytest.raises(NotReady):
        engine.call(lambda: 1)


def test_a_fatal_error_in_a_job_task_stops_the_engine(make_engine: MakeEngine) -> None:
    engine = make_engine()
    died: list[BaseException] = []
    engine.on_fatal = died.append

    def broken() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        engine.call(broken, timeout=WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while not died:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert engine.fatal is died[0]
    with pytest.raises(NotReady):
        engine.submit([_request(engine, "a")])


def test_work_whose_caller_went_away_sends_no_more_forwards(make_engine: MakeEngine) -> None:
    engine = make_engine()
    forwards: list[int] = []
    first, ended = threading.Event(), threading.Event()
    outcome: list[BaseException] = []

    def work(run: Callable[[Callable[[], int]], int]) -> int:
        try:
            for step in range(20):
                forwards.append(run(lambda step=step: step))  # each forward runs on the engine thread
                first.set()
                time.sleep(0.05)
        except Abandoned as exc:
            outcome.append(exc)
        finally:
            ended.set()
        return len(forwards)

    async def caller_gives_up() -> None:
        task = asyncio.ensure_future(offload(engine, work))
        assert await asyncio.to_thread(first.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(caller_gives_up())
    assert ended.wait(5) and outcome and isinstance(outcome[0], Abandoned)
    assert len(forwards) <= 2, forwards  # the forward in progress may finish; none is queued after
    assert asyncio.run(offload(engine, lambda run: [run(lambda: 7) for _ in range(3)])) == [7, 7, 7]


def test_a_steered_decode_step_copies_nothing_between_devices(make_engine: MakeEngine,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Each row's composite stays on the model's device beside its KV cache: a steered decode step builds its
    per-layer blocks and position mask there and calls no ``Tensor.to(device)`` (it used to build them on the host
    and copy them to the device in the hook, a synchronising copy per step on a GPU). On this CPU-only machine the
    copies would be no-ops, so the test counts the calls that would make them."""
    engine = make_engine()
    moves: list[str] = []
    real_to = torch.Tensor.to

    app_dir = str(Path(engine_module.__file__).resolve().parent.parent)

    def counting_to(self: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        target = kwargs.get("device", args[0] if args else None)
        caller = sys._getframe(1).f_code.co_filename  # fvsteer's own calls (the model's internals are its own)
        if caller.startswith(app_dir) and isinstance(target, torch.device | str | Tensor):
            moves.append(f"{caller}:{sys._getframe(1).f_lineno} → {target}")
        return real_to(self, *args, **kwargs)

    step = engine._decode_step
    counted: list[int] = []
    fifth = threading.Event()

    def watched_step() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(torch.Tensor, "to", counting_to)
            step()
        counted.append(len(moves))
        if len(counted) == 5:
            fifth.set()

    engine._decode_step = watched_step  # type: ignore[method-assign]
    steered = _run(engine, PROMPTS[0], max_new_tokens=6, steering={1: _vector(1), 2: _vector(2)})
    # The last step settles the row's future before it returns here: wait for its count, not for the result.
    assert fifth.wait(30)
    assert steered.completion_tokens == 6 and len(counted) == 5  # five steered decode steps after the prefill
    assert moves == []
