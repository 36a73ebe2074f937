"""Fine-tuning and analogies over HTTP on a real server (tiny random llama): the job's per-epoch progress, the
saved vector and its metadata, every init, refusals with the parameter named, cancellation that saves nothing,
and POST /analogies over a bank made by fine-tuning (softmax weights, no fitted combiner)."""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import LiveServer, start_server, stop_server
from tests.test_extraction_api import (
    D_MODEL,
    N_LAYERS,
    admin_metadata,
    assert_envelope,
    complete,
    get_job,
    new_name,
    user_pairs,
    wait_job,
)

FAST = {"epochs": 4, "lr": 0.05}
# Enough epochs that training outlasts several 0.2 s polls of the event stream even on a quiet machine.
EPOCHS = 120
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("finetune"), str(tiny_llama_dir), admin_token=secrets.token_hex(16),
                          d_model=D_MODEL, n_layers=N_LAYERS)
    yield server
    stop_server(server)


def post_finetune(server: LiveServer, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/vectors/finetune", json=body, timeout=30)


def finetune_and_wait(server: LiveServer, **body: Any) -> dict[str, Any]:
    response = post_finetune(server, **body)
    assert response.status_code == 202, response.text
    assert response.json()["kind"] == "finetune"
    job = wait_job(server, response.json()["id"], TERMINAL, timeout=120)
    assert job["state"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def finetuned(server: LiveServer) -> dict[str, Any]:
    """One mediation-initialised fine-tune of user pairs, with its progress events recorded as they came."""
    name = new_name("ft")
    response = post_finetune(server, name=name, pairs=user_pairs(24), epochs=EPOCHS, lr=0.05, layer=1)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{server.url}/jobs/{job_id}/events", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    return {"name": name, "job": get_job(server, job_id), "events": events}


def test_finetune_job_saves_a_finetuned_vector_with_its_metrics(server: LiveServer, finetuned: dict[str, Any]) -> None:
    job = finetuned["job"]
    assert job["state"] == "succeeded" and job["result"]["vector"] == finetuned["name"]
    metrics = job["result"]["metrics"]
    assert metrics["init"] == "mediation" and metrics["epochs"] == EPOCHS and metrics["lr"] == 0.05
    assert len(metrics["history"]) == EPOCHS and 0 <= metrics["best_epoch"] <= EPOCHS
    assert metrics["n_train"] + metrics["n_holdout"] == 24 - round(24 * 0.21)  # the test split is never trained on
    for key in ("holdout_top1_before", "holdout_top1_after", "holdout_icl_top1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["holdout_top1_after"] >= metrics["holdout_top1_before"]  # the checkpoint is never worse
    # chat is on by default, but the tiny model has no chat template: raw prompts only, and no chat figures.
    assert metrics["chat"] is True and metrics.get("holdout_chat_top1_after") is None
    meta = admin_metadata(server, finetuned["name"])
    assert meta["method"] == "finetuned" and meta["layer"] == 1 and meta["relation"] == "custom"
    assert meta["metrics"]["lr"] == 0.05 and meta["heads"], "the mediation init's heads are recorded"


def test_progress_reports_each_epoch(finetuned: dict[str, Any]) -> None:
    events = finetuned["events"]
    epochs = [event["detail"]["epoch"] for event in events
              if event["phase"] == "training" and event.get("detail")]
    assert epochs and epochs == sorted(epochs) and max(epochs) <= EPOCHS  # events coalesce changes between polls
    training = next(event for event in events if event["phase"] == "training" and event.get("detail"))
    assert {"loss", "holdout_top1", "epochs"} <= set(training["detail"]) and math.isfinite(training["detail"]["loss"])
    assert any(event["phase"].startswith("mediation:") for event in events)
    assert events[-1]["state"] == "succeeded"


def test_finetuned_vector_steers_a_completion_at_once(server: LiveServer, finetuned: dict[str, Any]) -> None:
    steered = complete(server, prompt="Q: w3\nA:", relations={finetuned["name"]: 1.0}, return_baseline=True)
    assert steered.status_code == 200, steered.text
    assert steered.json()["steering"]["relations"] == {finetuned["name"]: 1.0}


@pytest.mark.parametrize("init", ["zero", "random"])
def test_other_inits(server: LiveServer, init: str) -> None:
    job = finetune_and_wait(server, name=new_name(init), pairs=user_pairs(16), init=init, **FAST)
    assert job["result"]["metrics"]["init"] == init and job["result"]["head_means_cache"] is None


def test_init_from_a_stored_vector(server: LiveServer, finetuned: dict[str, Any]) -> None:
    job = finetune_and_wait(server, name=new_name("cont"), pairs=user_pairs(16), init="vector",
                            init_vector=finetuned["name"], **FAST)
    assert job["result"]["metrics"]["init"] == f"vector:{finetuned['name']}"
    assert job["result"]["layer"] == 1  # where the starting vector was trained


@pytest.mark.parametrize(("change", "status", "param"), [
    ({"pairs": user_pairs(11)}, 422, "pairs"),
    ({"lr": 0.0}, 422, "lr"),
    ({"lr": 11.0}, 422, "lr"),
    ({"epochs": 0}, 422, "epochs"),
    ({"epochs": 501}, 422, "epochs"),
    ({"l2": -1.0}, 422, "l2"),
    ({"layer": N_LAYERS}, 422, "layer"),
    ({"init": "vector"}, 422, "init_vector"),
    ({"init_vector": "x"}, 422, "init_vector"),
    ({"init": "vector", "init_vector": "no-such-vector"}, 404, "init_vector"),
    ({"init": "warm"}, 422, "init"),
    ({"chat": "sometimes"}, 422, "chat"),
    ({"relation": "antonym"}, 422, "relation"),  # both relation and pairs
    ({"name": "../escape"}, 422, "name"),
    ({"pairs": [{"input": "a", "output": ["x"] * 9}, *user_pairs(15)]}, 422, "pairs.0.output"),  # > 8 answers
    ({"pairs": [{"input": "a", "output": []}, *user_pairs(15)]}, 422, "pairs.0.output"),
    ({"pairs": [{"input": "a", "output": ["x", " x "]}, *user_pairs(15)]}, 422, "pairs[0].output"),  # repeated
])
def test_bad_finetune_requests_are_refused(server: LiveServer, change: dict[str, Any], status: int,
                                           param: str) -> None:
    body = {"name": new_name("bad"), "pairs": user_pairs(16), **FAST, **change}
    assert_envelope(post_finetune(server, **body), status, param)


def test_pairs_with_several_accepted_answers_train(server: LiveServer) -> None:
    pairs: list[dict[str, Any]] = user_pairs(16)
    pairs[0]["output"] = [pairs[0]["output"], "another", "a third"]
    name = new_name("several")
    job = finetune_and_wait(server, name=name, pairs=pairs, **FAST)
    assert job["result"]["vector"] == name
    metrics = job["result"]["metrics"]
    assert metrics["n_train"] + metrics["n_holdout"] == 12  # the test split (4 of 16) is never trained on


def test_init_vector_of_another_model_is_refused(server: LiveServer) -> None:
    other = server.vectors_dir / "some-other-model"
    other.mkdir(exist_ok=True)
    save_file({"vector": torch.ones(D_MODEL)}, str(other / "foreign.safetensors"),
              metadata={"name": "foreign", "layer": "0", "d_model": str(D_MODEL)})
    response = post_finetune(server, name=new_name("x"), pairs=user_pairs(16), init="vector", init_vector="foreign")
    error = assert_envelope(response, 422, "init_vector")
    assert "some-other-model" in error["message"]


def test_cancelled_finetune_leaves_no_vector(server: LiveServer) -> None:
    name = new_name("cancel")
    response = post_finetune(server, name=name, pairs=user_pairs(200), epochs=500, lr=0.01, init="zero")
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 60
    while get_job(server, job_id)["phase"] != "training":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.delete(f"{server.url}/jobs/{job_id}", timeout=10).status_code == 200
    assert wait_job(server, job_id, TERMINAL)["state"] == "cancelled"
    assert httpx.get(f"{server.url}/vectors/{name}", timeout=10).status_code == 404
    assert not (server.vectors_dir / "tiny" / f"{name}.safetensors").exists()
    again = finetune_and_wait(server, name=name, pairs=user_pairs(16), init="zero", **FAST)  # the name is free
    assert again["result"]["vector"] == name


def post_analogy(server: LiveServer, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/analogies", json=body, timeout=60)


def test_analogies_over_the_finetuned_bank(server: LiveServer, finetuned: dict[str, Any]) -> None:
    second = finetune_and_wait(server, name=new_name("bank"), pairs=user_pairs(16), init="zero", **FAST)
    bank = {finetuned["name"], second["result"]["vector"]}
    chosen = post_analogy(server, a="w1", b="v1", c="w2", choices=["v2", "w9", "v7"])
    assert chosen.status_code == 200, chosen.text
    body = chosen.json()
    assert body["combiner"] == "softmax" and bank <= set(body["weights"])
    assert set(body["scores"]) == set(body["weights"])
    assert math.isclose(sum(body["weights"].values()), 1.0, rel_tol=1e-4)  # softmax weights
    assert body["answer"] in {"v2", "w9", "v7"} and len(body["choice_scores"]) == 3
    assert body["answer"] == ["v2", "w9", "v7"][body["choice_scores"].index(max(body["choice_scores"]))]
    generated = post_analogy(server, a="w1", b="v1", c="w2", max_new_tokens=3)
    assert generated.status_code == 200, generated.text
    assert generated.json()["choice_scores"] is None and isinstance(generated.json()["answer"], str)


@pytest.mark.parametrize(("body", "param"), [
    ({"a": "", "b": "x", "c": "y"}, "a"),
    ({"a": "x", "b": "   ", "c": "y"}, "b"),
    ({"a": "x", "b": "y", "c": "z", "choices": ["only one"]}, "choices"),
    ({"a": "x", "b": "y", "c": "z", "choices": ["one", " "]}, "choices[1]"),
    ({"a": "x", "b": "y"}, "c"),
    ({"a": "x", "b": "y", "c": "z", "max_new_tokens": 0}, "max_new_tokens"),
])
def test_bad_analogies_are_refused(server: LiveServer, body: dict[str, Any], param: str) -> None:
    assert_envelope(post_analogy(server, **body), 422, param)
