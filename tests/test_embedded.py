"""Acceptance on the embedded SmolLM2-135M-Instruct through a real server (marked ``model``: minutes)."""

from __future__ import annotations

import asyncio
import io
import math
import re
from collections.abc import Iterator

import httpx
import pytest
import torch
from safetensors.torch import save

from app.model.loading import LoadedModel, load_model
from app.settings import Settings
from tests.conftest import LiveServer

pytestmark = pytest.mark.model

LAYER = 9
ANTONYMS = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
            ("light", "dark"), ("old", "new"), ("open", "closed"), ("early", "late"), ("rich", "poor"),
            ("wet", "dry"), ("hard", "soft")]
QUERIES = ["good", "tall", "strong", "full", "loud", "clean", "young", "thick"]


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    settings = Settings()
    return load_model("embedded:smollm2-135m-instruct", "cpu", "float32", settings.cache_dir)


def residual_at(model: LoadedModel, prompts: list[str], layer: int) -> torch.Tensor:
    """Mean last-token output of block ``layer`` over ``prompts``."""
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = model.tokenizer(prompt, return_tensors="pt").input_ids
            hidden = model.model(ids, output_hidden_states=True).hidden_states[layer + 1]
            outputs.append(hidden[0, -1])
    return torch.stack(outputs).mean(0)


def mean_difference_vector(model: LoadedModel, layer: int) -> torch.Tensor:
    """Mean residual of 5-shot antonym prompts minus that of zero-shot ones: a cheap task vector."""
    shots = "".join(f"Q: {x}\nA: {y}\n\n" for x, y in ANTONYMS[:5])
    queries = [x for x, _ in ANTONYMS[5:]]
    icl = residual_at(model, [f"{shots}Q: {x}\nA:" for x in queries], layer)
    zero = residual_at(model, [f"Q: {x}\nA:" for x in queries], layer)
    return icl - zero


def upload(server: LiveServer, name: str, vector: torch.Tensor, layer: int) -> dict[str, object]:
    httpx.delete(f"{server.url}/admin/vectors/{name}", headers={"Authorization": f"Bearer {server.admin_token}"})
    response = httpx.post(
        f"{server.url}/admin/vectors",
        headers={"Authorization": f"Bearer {server.admin_token}"},
        files={"file": ("v.safetensors", io.BytesIO(save({"vector": vector.contiguous()})))},
        data={"name": name, "layer": str(layer), "relation": name},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def bank(embedded_server: LiveServer, model: LoadedModel) -> Iterator[list[str]]:
    generator = torch.Generator().manual_seed(7)
    task = mean_difference_vector(model, LAYER)
    vectors = {
        "antonym-md": task,
        "random-a": torch.randn(576, generator=generator) * float(task.norm()),
        "random-b": torch.randn(576, generator=generator) * float(task.norm()),
    }
    for name, vector in vectors.items():
        upload(embedded_server, name, vector, LAYER)
    yield list(vectors)


def test_uploaded_vector_steers_and_reports_its_norm(embedded_server: LiveServer, bank: list[str]) -> None:
    stored = httpx.get(f"{embedded_server.url}/vectors/antonym-md").json()
    changed = 0
    for word in QUERIES[:4]:
        body = httpx.post(f"{embedded_server.url}/complete", timeout=120, json={
            "prompt": f"Q: {word}\nA:", "relations": {"antonym-md": 1.0}, "max_new_tokens": 8,
            "return_baseline": True,
        }).json()
        assert math.isclose(body["steering"]["layers"][str(LAYER)]["norm"], stored["norm"], rel_tol=1e-4)
        changed += body["text"] != body["baseline"]["text"]
    assert changed == 4


def test_unsteered_output_equals_plain_greedy_generate(embedded_server: LiveServer, model: LoadedModel) -> None:
    for prompt in ["Q: hot\nA:", "The capital of France is", "def fibonacci(n):"]:
        body = httpx.post(f"{embedded_server.url}/complete", timeout=120,
                          json={"prompt": prompt, "max_new_tokens": 24}).json()
        ids = model.tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.model.generate(ids, max_new_tokens=24, do_sample=False)
        expected = model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert body["text"] == expected


def batched_steps(server: LiveServer) -> int:
    metrics = httpx.get(f"{server.url}/metrics").text
    found = re.findall(r'fvsteer_decode_steps_total\{batch_size="(\d+)"\} (\d+)', metrics)
    return sum(int(count) for size, count in found if int(size) > 1)


def test_sixteen_concurrent_mixes_equal_their_alone_results(embedded_server: LiveServer, bank: list[str]) -> None:
    bodies = []
    for index in range(16):
        weights = {name: round(math.sin(index + 3 * k) * 1.5, 3) for k, name in enumerate(bank)}
        bodies.append({"prompt": f"Q: {QUERIES[index % len(QUERIES)]}\nA:", "relations": weights,
                       "max_new_tokens": 16})
    alone = [httpx.post(f"{embedded_server.url}/complete", json=body, timeout=120).json() for body in bodies]
    before = batched_steps(embedded_server)

    async def send_all() -> list[dict[str, object]]:
        async with httpx.AsyncClient(timeout=300) as client:
            responses = await asyncio.gather(*(client.post(f"{embedded_server.url}/complete", json=body)
                                               for body in bodies))
        return [response.json() for response in responses]

    together = asyncio.run(send_all())
    assert [item["text"] for item in together] == [item["text"] for item in alone]
    assert len({item["text"] for item in alone}) > 1
    assert batched_steps(embedded_server) > before
