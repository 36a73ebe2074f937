"""The shipped sentiment contrast on the embedded model, through the server: ``POST /vectors/contrast`` makes the
vector (the layer, method and weight ``benchmarks/contrast.py`` chose on the example's dev stems), and ``/score``
shows that it moves the next word of the held-out test stems toward positive opinions, and its negation away."""

from __future__ import annotations

import json
import math
import secrets
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.model

EXAMPLE = json.loads((Path(__file__).resolve().parent.parent / "fvsteer_lab" / "contrasts" / "sentiment.json")
                     .read_text(encoding="utf-8"))
LAYER, WEIGHT = 12, 16.0  # benchmarks/results/contrast.json: chosen on the dev stems


def margin(server: LiveServer, stem: str, weight: float, name: str) -> float:
    """log Σ p(positive word) − log Σ p(negative word) after ``stem``, steered at every position."""
    words = EXAMPLE["positive_words"] + EXAMPLE["negative_words"]
    steering = {"relations": {name: weight}, "positions": "all"} if weight else {}
    body = httpx.post(f"{server.url}/score", json={"prompt": stem, "continuations": words, **steering},
                      timeout=120).json()
    scores = [score["logprob"] for score in body["scores"]]
    split = len(EXAMPLE["positive_words"])

    def logsumexp(values: list[float]) -> float:
        top = max(values)
        return top + math.log(sum(math.exp(v - top) for v in values))

    return logsumexp(scores[:split]) - logsumexp(scores[split:])


def test_the_sentiment_vector_moves_held_out_stems_both_ways(embedded_server: LiveServer) -> None:
    name = f"cheerful-{secrets.token_hex(3)}"
    pairs = [{"positive": pos, "negative": neg} for pos, neg in EXAMPLE["pairs"]]
    started = httpx.post(f"{embedded_server.url}/vectors/contrast", json={
        "name": name, "pairs": pairs, "template": EXAMPLE["template"], "layer": LAYER, "normalize": "unit"},
        timeout=60)
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    deadline = time.monotonic() + 600
    while (job := httpx.get(f"{embedded_server.url}/jobs/{job_id}", timeout=30).json())["state"] not in (
            "succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["state"] == "succeeded", job
    assert job["result"]["separation"] == 1.0 and job["result"]["norm"] == pytest.approx(1.0, rel=1e-5)
    try:
        effects = []
        for stem in EXAMPLE["test_stems"]:
            base = margin(embedded_server, stem, 0.0, name)
            effects.append((margin(embedded_server, stem, WEIGHT, name) - base,
                            margin(embedded_server, stem, -WEIGHT, name) - base))
    finally:
        httpx.delete(f"{embedded_server.url}/admin/vectors/{name}",
                     headers={"Authorization": f"Bearer {embedded_server.admin_token}"}, timeout=30)
    up = [toward for toward, _ in effects]
    down = [away for _, away in effects]
    print(f"sentiment contrast, {len(effects)} test stems: mean effect {sum(up) / len(up):+.3f} nats steered, "
          f"{sum(down) / len(down):+.3f} negated")
    assert sum(up) / len(up) > 0.5 and sum(effect > 0 for effect in up) >= 10
    assert sum(down) / len(down) < -0.5 and sum(effect < 0 for effect in down) >= 10
