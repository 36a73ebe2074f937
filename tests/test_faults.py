"""Redis faults against a real server and a real (private) redis-server: killed in the middle of an extraction,
slow (accepts connections, never answers: the socket timeout), and holding a corrupt entry. In each case the
extraction still succeeds with exactly the vector a healthy run makes, ``/readyz`` reports ``degraded`` while
Redis is unusable, and the server keeps serving. (Redis down at start: tests/test_extraction_api.py; a corrupt
vector file: tests/test_registry.py.)"""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch
from safetensors.torch import load_file

from tests.conftest import LiveServer, free_port, start_redis, start_server, stop_server
from tests.faults import Faults, wait_until
from tests.test_extraction_api import cache_counts, complete, extract_and_wait, new_name, post_extract, wait_job
from tests.tiny_models import ARCH_CONFIGS

LLAMA: dict[str, Any] = ARCH_CONFIGS["llama"]
QUICK_JOB = {"n_prompts": 8, "n_trials": 3, "n_heads": 3}


def start(tmp: Path, model_dir: Path, redis_url: str) -> LiveServer:
    return start_server(tmp, str(model_dir), admin_token=secrets.token_hex(16), d_model=int(LLAMA["hidden_size"]),
                        n_layers=int(LLAMA["num_hidden_layers"]), module="tests.fault_server",
                        extra_env={"FVSTEER_REDIS_URL": redis_url, "FVSTEER_JOBS_DIR": str(tmp / "jobs")})


def stored_vector(server: LiveServer, name: str) -> torch.Tensor:
    (path,) = server.vectors_dir.glob(f"*/{name}.safetensors")
    return load_file(path)["vector"]


def registry_sync(server: LiveServer) -> str:
    state: str = httpx.get(f"{server.url}/readyz", timeout=30).json()["registry"]
    return state


def readiness(server: LiveServer) -> str:
    response = httpx.get(f"{server.url}/readyz", timeout=30)
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


def pairs(tag: str) -> list[dict[str, str]]:
    return [{"input": f"x{index}{tag}", "output": f"y{index}"} for index in range(16)]


@pytest.fixture
def private_redis() -> Iterator[tuple[int, list[Any]]]:
    """A redis-server of this test's own (so it can be killed); yields its port and a holder of its process."""
    port = free_port()
    holder = [start_redis(port)]
    yield port, holder
    holder[0].kill()
    holder[0].wait(timeout=10)


def test_redis_killed_mid_extraction(tmp_path: Path, tiny_llama_dir: Path,
                                     private_redis: tuple[int, list[Any]]) -> None:
    port, holder = private_redis
    server = start(tmp_path, tiny_llama_dir, f"redis://127.0.0.1:{port}/0")
    try:
        body = {"pairs": pairs(secrets.token_hex(3)), "seed": 7, **QUICK_JOB}
        healthy = extract_and_wait(server, name=new_name("healthy"), **body)
        assert healthy["result"]["head_means_cache"] == {"hit": False, "backend": "redis"}
        redis.Redis(port=port).flushdb()  # the same extraction must compute again, not hit

        faults = Faults(server)
        with faults.held("tasks"):  # the job's first forward waits: its cache lookup missed, nothing is written yet
            response = post_extract(server, name=new_name("killed"), **body)
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            faults.wait_parked("tasks")
            holder[0].send_signal(signal.SIGKILL)
            holder[0].wait(timeout=10)
        job = wait_job(server, job_id, {"succeeded", "failed", "cancelled"}, timeout=120)
        assert job["state"] == "succeeded", job
        assert torch.equal(stored_vector(server, job["result"]["vector"]),
                           stored_vector(server, healthy["result"]["vector"]))
        assert readiness(server) == "degraded"
        assert cache_counts(server)["error"] >= 1
        assert complete(server, prompt="Q: x1\nA:", relations={job["result"]["vector"]: 1.0}).status_code == 200
        # The registry's sync lost its subscription too: readiness says so (it used to say nothing).
        wait_until(lambda: registry_sync(server) == "degraded", "readiness to show the registry sync degraded")

        holder[0] = start_redis(port)  # back (empty): the server uses it again without a restart
        wait_until(lambda: readiness(server) == "ready", "readiness to see Redis come back")  # probed ≤ 1/s
        assert registry_sync(server) == "redis"
        again = extract_and_wait(server, name=new_name("again"), **body)
        assert again["result"]["head_means_cache"] == {"hit": False, "backend": "redis"}
        assert extract_and_wait(server, name=new_name("hit"), **body)["result"]["head_means_cache"]["hit"] is True
    finally:
        stop_server(server)


def test_slow_redis_times_out_and_results_stay_correct(tmp_path: Path, tiny_llama_dir: Path,
                                                       hung_redis: int) -> None:
    body = {"pairs": pairs(secrets.token_hex(3)), "seed": 3, **QUICK_JOB}
    reference = start(tmp_path / "reference", tiny_llama_dir, "")  # no Redis: the in-process cache
    try:
        expected = stored_vector(reference, extract_and_wait(reference, name="reference", **body)["result"]["vector"])
    finally:
        stop_server(reference)
    server = start(tmp_path / "slow", tiny_llama_dir, f"redis://127.0.0.1:{hung_redis}/0")
    try:
        for _ in range(3):  # a hung Redis must not make the readiness probe hang (readiness() gives up after 30 s)
            assert readiness(server) == "degraded"
        job = extract_and_wait(server, name="slow", **body)  # bounded by the socket timeout, never hung
        assert job["result"]["head_means_cache"] == {"hit": False, "backend": "degraded"}
        assert torch.equal(stored_vector(server, "slow"), expected)
        assert cache_counts(server)["error"] >= 1
        assert complete(server, prompt="Q: x1\nA:", relations={"slow": 1.0}).status_code == 200
    finally:
        stop_server(server)


def test_corrupt_cache_entry_is_recomputed(tmp_path: Path, tiny_llama_dir: Path,
                                           private_redis: tuple[int, list[Any]]) -> None:
    port, _ = private_redis
    server = start(tmp_path, tiny_llama_dir, f"redis://127.0.0.1:{port}/0")
    try:
        body = {"pairs": pairs(secrets.token_hex(3)), "seed": 5, **QUICK_JOB}
        first = extract_and_wait(server, name=new_name("first"), **body)
        client = redis.Redis(port=port)
        keys = client.keys("*")
        assert sorted(key.split(b":")[1] for key in keys) == [b"aie", b"head-means", b"layer-sweep"]
        for key in keys:  # every value of every record, meta included
            client.hset(key, mapping={field: b"\x00garbage" for field in client.hkeys(key)})
        errors = cache_counts(server)["error"]
        second = extract_and_wait(server, name=new_name("second"), **body)
        assert second["result"]["head_means_cache"]["hit"] is False  # the corrupt entries were not used
        assert second["result"]["scoring_cache"] == {"aie_hit": False, "layer_sweep_hit": False, "backend": "redis"}
        assert torch.equal(stored_vector(server, second["result"]["vector"]),
                           stored_vector(server, first["result"]["vector"]))
        assert cache_counts(server)["error"] == errors + 1
        assert readiness(server) == "ready"  # Redis itself is fine
        third = extract_and_wait(server, name=new_name("third"), **body)  # the recomputed entry replaced it
        assert third["result"]["head_means_cache"]["hit"] is True
        assert third["result"]["scoring_cache"] == {"aie_hit": True, "layer_sweep_hit": True, "backend": "redis"}
        assert "corrupt" in server.log()
    finally:
        stop_server(server)
