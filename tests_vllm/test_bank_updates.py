"""The bank follows the registry without a restart: a vector uploaded, or saved by a fine-tuning job that ran on
the HF model beside vLLM serving, steers completions on vLLM within 2 s; a deleted one is refused, but still served
to a request admitted before the deletion; steering the worker cannot apply ends that request, not the engine."""

from __future__ import annotations

import dataclasses
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from fvsteer_vllm.spec import Entry
from fvsteer_vllm.state import failure_path

from tests.conftest import LiveServer
from tests.faults import wait_until
from tests.test_api import upload, vector_bytes
from tests_vllm.conftest import MAX_SEQS, SLUG, Vllm, complete

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


def test_a_vector_deleted_while_its_request_waits_at_vllm_is_still_served(vllm_front: LiveServer, vllm: Vllm) -> None:
    """Admitted, then the vector is deleted before the request reaches the worker (every batch slot is taken):
    the request is served with it (the admission pinned it); the engine used to die here."""
    name = f"late-{secrets.token_hex(3)}"
    assert upload(vllm_front, name, vector_bytes(576, seed=3, scale=60.0), layer=9).status_code == 201
    spec = vllm.spec({name: 1.0})
    prompt = [28, 42, 314]
    plain = vllm.complete(prompt, max_tokens=8, ignore_eos=True)["choices"][0]["text"]
    with ThreadPoolExecutor(MAX_SEQS + 1) as pool:
        fillers = [pool.submit(vllm.complete, prompt, max_tokens=64, ignore_eos=True) for _ in range(MAX_SEQS)]
        wait_until(lambda: vllm.metric("vllm:num_requests_running") >= MAX_SEQS, "every batch slot taken", 300)
        late = pool.submit(vllm.complete, prompt, spec, max_tokens=8, ignore_eos=True)
        wait_until(lambda: vllm.metric("vllm:num_requests_waiting") >= 1, "the steered request to wait", 300)
        deleted = httpx.delete(f"{vllm_front.url}/admin/vectors/{name}",
                               headers={"Authorization": f"Bearer {vllm_front.admin_token}"}, timeout=30)
        assert deleted.status_code == 200
        (choice,) = late.result(timeout=300)["choices"]
        assert all(filler.result(timeout=300) for filler in fillers)
    assert choice["finish_reason"] == "length" and choice["text"] != plain  # steered, all 8 tokens
    assert vllm.complete(prompt, max_tokens=8, ignore_eos=True)["choices"][0]["text"] == plain  # the engine lives


def test_the_receipt_names_the_vector_vllm_applied_when_it_was_replaced_while_waiting(vllm_front: LiveServer,
                                                                                      vllm: Vllm) -> None:
    """Admitted by the front with one vector, which is deleted and uploaded again with other values while the row
    waits at vLLM (every batch slot taken): the plugin applies the admitted digest, and the receipt names that one,
    not what the name holds now; a request after the swap gets, and names, the new one."""
    name = f"swap-{secrets.token_hex(3)}"
    old, new = vector_bytes(576, seed=5, scale=60.0), vector_bytes(576, seed=6, scale=60.0)
    for vector, data in ((name, old), (f"{name}-old", old), (f"{name}-new", new)):
        assert upload(vllm_front, vector, data, layer=9).status_code == 201
    expected = {kind: complete(vllm_front, prompt=PROMPT, relations={f"{name}-{kind}": 1.0}, max_new_tokens=8)
                for kind in ("old", "new")}
    assert expected["old"]["text"] != expected["new"]["text"]
    with ThreadPoolExecutor(MAX_SEQS + 1) as pool:
        fillers = [pool.submit(vllm.complete, [28, 42, 314], max_tokens=64, ignore_eos=True) for _ in range(MAX_SEQS)]
        wait_until(lambda: vllm.metric("vllm:num_requests_running") >= MAX_SEQS, "every batch slot taken", 300)
        late = pool.submit(complete, vllm_front, prompt=PROMPT, relations={name: 1.0}, max_new_tokens=8)
        wait_until(lambda: vllm.metric("vllm:num_requests_waiting") >= 1, "the steered request to wait", 300)
        headers = {"Authorization": f"Bearer {vllm_front.admin_token}"}
        assert httpx.delete(f"{vllm_front.url}/admin/vectors/{name}", headers=headers, timeout=30).status_code == 200
        assert upload(vllm_front, name, new, layer=9).status_code == 201
        answer = late.result(timeout=300)
        assert all(filler.result(timeout=300) for filler in fillers)
    after = complete(vllm_front, prompt=PROMPT, relations={name: 1.0}, max_new_tokens=8)

    def digest(body: dict[str, Any]) -> str:
        ((vector,),) = [layer["vectors"] for layer in body["steering"]["layers"].values()]
        return str(vector["digest"])

    assert (answer["text"], digest(answer)) == (expected["old"]["text"], digest(expected["old"]))
    assert (after["text"], digest(after)) == (expected["new"]["text"], digest(expected["new"]))


def test_steering_the_worker_cannot_apply_ends_that_request_not_the_engine(vllm: Vllm) -> None:
    """A layer the model does not have passes admission (which does not know the model) and used to raise in the
    worker, killing vLLM: now that request ends at once, reported in the bank folder, and the others go on."""
    spec = vllm.spec({"antonym": 1.0})
    request_id = f"t{secrets.token_hex(6)}"
    broken = dataclasses.replace(spec, entries=(Entry(spec.entries[0].key, 1.0, 99),), request_id=request_id)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(vllm.complete, [28, 42, 314], spec, max_tokens=24, ignore_eos=True)
        (choice,) = vllm.complete([28, 42, 314], broken, max_tokens=24)["choices"]
        assert len(running.result(timeout=300)["choices"][0]["text"]) > 0
    assert choice["text"] == "" and choice["finish_reason"] == "stop"  # end-of-sequence, the only token allowed
    report = failure_path(vllm.registry / SLUG, request_id)
    assert "layer 99 is outside" in report.read_text()
    report.unlink()
