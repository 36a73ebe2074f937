"""The bank follows the registry without a restart: a vector uploaded, or saved by a fine-tuning job that ran on
the HF model beside vLLM serving, steers completions on vLLM within 2 s; a deleted one is refused."""

from __future__ import annotations

import secrets
import time

import httpx

from tests.conftest import LiveServer
from tests.test_api import upload, vector_bytes
from tests_vllm.conftest import Vllm, complete

PROMPT = "Q: hot\nA:"


def steer_soon(server: LiveServer, name: str, limit_s: float = 2.0) -> tuple[dict[str, object], float]:
    """The first steered completion with ``name``; how long after the vector was saved it was served."""
    saved = time.monotonic()
    answer = complete(server, prompt=PROMPT, relations={name: 1.0}, max_new_tokens=8, return_baseline=True)
    return answer, time.monotonic() - saved


def test_an_uploaded_vector_is_served_at_once_and_a_deleted_one_refused(vllm_front: LiveServer) -> None:
    name = f"up-{secrets.token_hex(3)}"
    assert upload(vllm_front, name, vector_bytes(576, scale=60.0), layer=9).status_code == 201
    answer, waited = steer_soon(vllm_front, name)
    print(f"uploaded vector served after {waited:.2f} s")
    assert waited < 2.0
    assert answer["steering"] is not None and answer["text"] != answer["baseline"]["text"]  # type: ignore[index]
    deleted = httpx.delete(f"{vllm_front.url}/admin/vectors/{name}",
                           headers={"Authorization": f"Bearer {vllm_front.admin_token}"}, timeout=30)
    assert deleted.status_code == 200
    refused = httpx.post(f"{vllm_front.url}/complete", json={"prompt": PROMPT, "relations": {name: 1.0}}, timeout=60)
    assert refused.status_code == 404 and refused.json()["error"]["param"] == f"relations.{name}"


def test_a_fine_tuned_vector_is_served_by_vllm_within_2_s(vllm_front: LiveServer) -> None:
    name = f"ft-{secrets.token_hex(3)}"
    started = httpx.post(f"{vllm_front.url}/vectors/finetune", json={
        "name": name, "relation": "antonym", "epochs": 4, "init": "zero"}, timeout=60)
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    deadline = time.monotonic() + 600
    while (job := httpx.get(f"{vllm_front.url}/jobs/{job_id}", timeout=30).json())["state"] not in (
            "succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["state"] == "succeeded", job
    answer, waited = steer_soon(vllm_front, name)
    print(f"fine-tuned vector served {waited:.2f} s after its job succeeded")
    assert waited < 2.0 and answer["steering"]["layers"]  # type: ignore[index]


def test_vllm_refuses_steering_with_a_vector_it_cannot_have(vllm: Vllm) -> None:
    """Steering that cannot be applied fails the request (400 at admission), never runs unsteered."""
    spec = vllm.spec({"antonym": 1.0})
    body = {"model": "SmolLM2-135M-Instruct", "prompt": [1, 2, 3], "max_tokens": 2,
            "vllm_xargs": {"fvsteer": spec.dumps().replace("antonym@", "antonym-gone@")}}
    refused = httpx.post(f"{vllm.url}/v1/completions", json=body, timeout=60)
    assert refused.status_code == 400 and "no vector" in refused.text
