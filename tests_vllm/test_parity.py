"""Parity of the vllm backend with the hf backend on the embedded model in float32: 32 prompts × 5 kinds of
steering, sent as one mixed concurrent burst to each. Greedy texts must agree in at least 95 % of cases, the
first step's log-probabilities (vLLM's top 20) within 1e-3 of the HF model's in every case, and unsteered rows
beside steered ones must equal an unsteered-only run exactly."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from app.bundle import ModelBundle, load_bundle
from app.engine.bank import VectorBank
from app.engine.requests import BankSteering
from app.model.steering import BatchSteering, steered
from app.settings import Settings
from tests.conftest import LiveServer
from tests_vllm.conftest import Vllm, complete

WORDS = ["hot", "big", "fast", "happy", "dark", "old", "up", "high", "cat", "child", "run", "eat", "France",
         "Japan", "apple", "water", "teacher", "book", "king", "walk", "small", "light", "good", "begin", "mouse",
         "Spain", "tree", "open", "sing", "winter", "strong", "early"]
PROMPTS = [f"Q: {word}\nA:" for word in WORDS]
STEERING: dict[str, dict[str, Any]] = {
    "unsteered": {},
    "one": {"relations": {"antonym": 1.0}},
    "composite": {"relations": {"antonym": 1.0, "synonym": -0.5, "singular-plural": 0.7}},
    "layer": {"relations": {"antonym": 1.0}, "layer": 5},
    "all": {"relations": {"present-past": 1.0}, "positions": "all"},
}
CASES = [(prompt, kind) for prompt in PROMPTS for kind in STEERING]
TOKENS = 16


def burst(server: LiveServer, cases: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every case at once: the backend batches them as they come, steered and unsteered mixed."""
    with ThreadPoolExecutor(len(cases)) as pool:
        return list(pool.map(lambda case: complete(server, prompt=case[0], max_new_tokens=TOKENS,
                                                   **STEERING[case[1]]), cases))


@pytest.fixture(scope="module")
def texts(vllm_front: LiveServer, hf_front: LiveServer) -> dict[str, list[dict[str, Any]]]:
    return {"vllm": burst(vllm_front, CASES), "hf": burst(hf_front, CASES)}


@pytest.fixture(scope="module")
def bundle(vllm: Vllm) -> Iterator[tuple[ModelBundle, VectorBank]]:
    loaded = load_bundle(Settings(vectors_dir=vllm.registry))
    adapter = loaded.model.adapter
    bank = VectorBank(adapter.n_layers, adapter.d_model, torch.device("cpu"))
    loaded.registry.subscribe(bank.apply)
    yield loaded, bank


def hf_first_step(bundle: tuple[ModelBundle, VectorBank], prompt: str, kind: str) -> tuple[list[int], torch.Tensor]:
    """Prompt ids and the log-probabilities of the first generated token, from the HF model steered as the hf
    backend steers it."""
    loaded, bank = bundle
    model = loaded.model
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids
    body = STEERING[kind]
    steering = None
    if body:
        resolved = bank.resolve(BankSteering.checked(body["relations"], layer=body.get("layer"),
                                                     positions=body.get("positions", "fv")))
        positions = torch.zeros_like(ids, dtype=torch.bool)
        positions[:, -1] = True
        if body.get("positions") == "all":
            positions[:] = True
        steering = BatchSteering({layer: vector[None] for layer, vector in resolved.layers.items()}, positions)
    with torch.inference_mode(), steered(model.adapter, steering):
        logits = model.adapter.model(input_ids=ids).logits[0, -1].float()
    return ids[0].tolist(), torch.log_softmax(logits, -1)


def test_greedy_texts_agree(texts: dict[str, list[dict[str, Any]]]) -> None:
    same = [a["text"] == b["text"] for a, b in zip(texts["vllm"], texts["hf"], strict=True)]
    for a, b in zip(texts["vllm"], texts["hf"], strict=True):  # both report the same steering, computed apart
        assert (a["steering"] is None) == (b["steering"] is None)
        if a["steering"] is not None:
            assert a["steering"]["relations"] == b["steering"]["relations"]
            norms = {layer: value["norm"] for layer, value in a["steering"]["layers"].items()}
            assert norms == pytest.approx({layer: value["norm"] for layer, value in b["steering"]["layers"].items()},
                                          rel=1e-5)
    differing = [(case, a["text"], b["text"]) for case, a, b, ok in zip(CASES, texts["vllm"], texts["hf"], same,
                                                                        strict=True) if not ok]
    print(f"greedy texts equal in {sum(same)} of {len(same)} cases; differing: {differing}")
    assert sum(same) >= 0.95 * len(same), differing


def test_steering_changes_what_it_should(texts: dict[str, list[dict[str, Any]]]) -> None:
    """Not a vacuous parity: each kind of steering changes most texts from the unsteered ones."""
    by_case = {case: answer["text"] for case, answer in zip(CASES, texts["vllm"], strict=True)}
    for kind in STEERING:
        if kind != "unsteered":
            changed = sum(by_case[(prompt, kind)] != by_case[(prompt, "unsteered")] for prompt in PROMPTS)
            assert changed >= len(PROMPTS) // 2, (kind, changed)


def test_first_step_log_probabilities_agree(vllm: Vllm, bundle: tuple[ModelBundle, VectorBank]) -> None:
    def vllm_top(case: tuple[str, str]) -> tuple[list[int], dict[str, float]]:
        prompt, kind = case
        ids, _ = hf_first_step(bundle, prompt, kind)
        body = STEERING[kind]
        spec = vllm.spec(body["relations"], layer=body.get("layer"), positions=body.get("positions", "fv")) \
            if body else None
        answer = vllm.complete(ids, spec, max_tokens=1, logprobs=20, return_tokens_as_token_ids=True)
        return ids, answer["choices"][0]["logprobs"]["top_logprobs"][0]

    with ThreadPoolExecutor(len(CASES)) as pool:  # one mixed burst, as served
        tops = list(pool.map(vllm_top, CASES))
    worst = 0.0
    for case, (_, top) in zip(CASES, tops, strict=True):
        _, reference = hf_first_step(bundle, *case)
        assert len(top) == 20
        for token, logprob in top.items():  # keys are "token_id:<id>"
            worst = max(worst, abs(float(reference[int(token.split(":")[1])]) - logprob))
    print(f"largest first-step log-probability difference over {len(CASES)} cases × 20 tokens: {worst:.2e}")
    assert worst <= 1e-3


def test_unsteered_rows_beside_steered_ones_equal_an_unsteered_run(
        vllm_front: LiveServer, texts: dict[str, list[dict[str, Any]]]) -> None:
    alone = burst(vllm_front, [(prompt, "unsteered") for prompt in PROMPTS])
    mixed = [answer for case, answer in zip(CASES, texts["vllm"], strict=True) if case[1] == "unsteered"]
    assert [a["text"] for a in alone] == [m["text"] for m in mixed]
    assert all(a["steering"] is None for a in alone + mixed)
