"""Serving replicas and job workers as real processes on one machine (issue 14): two ``api`` processes and two
``worker`` processes (tests.fault_server, so a test can park a job at its first forward) on the tiny llama, one
Redis (with an append-only file, as a deployment that must not lose queued jobs runs it) and one shared registry
folder. Every step is ordered by gates and polls with deadlines, never by sleeping."""

from __future__ import annotations

import io
import json
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from safetensors.torch import save

from tests.conftest import LiveServer, free_port, start_server, stop_server
from tests.faults import Faults, wait_until
from tests.tiny_models import ARCH_CONFIGS

LLAMA: dict[str, Any] = ARCH_CONFIGS["llama"]
SYNC_S = 2.0  # every replica serves or refuses a changed vector within this


@dataclass
class Cluster:
    redis_port: int
    redis_dir: Path
    redis: subprocess.Popen[bytes]
    apis: list[LiveServer]
    workers: list[LiveServer]
    token: str
    registry: Path

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def restart_redis(self) -> None:
        self.redis.send_signal(signal.SIGKILL)
        self.redis.wait(timeout=10)
        self.redis = _redis_server(self.redis_port, self.redis_dir)


def _redis_server(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """A private redis-server that persists every write (appendfsync always): a restart loses nothing."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
         "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=0.5)
    wait_until(lambda: _pings(client), "redis to answer", timeout=10)
    return process


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    port = free_port()
    (tmp / "redis").mkdir()
    redis_process = _redis_server(port, tmp / "redis")
    token = secrets.token_hex(16)
    env = {"FVSTEER_REDIS_URL": f"redis://127.0.0.1:{port}/0", "FVSTEER_VECTORS_DIR": str(tmp / "registry"),
           "FVSTEER_JOB_HEARTBEAT_S": "2", "FVSTEER_REGISTRY_RESYNC_S": "1",
           "FVSTEER_MAX_NEW_TOKENS": "64", "FVSTEER_MAX_PROMPT_TOKENS": "512"}
    started: list[LiveServer] = []

    def start(name: str, role: str, module: str) -> LiveServer:
        server = start_server(tmp / name, str(tiny_llama_dir), admin_token=token, d_model=int(LLAMA["hidden_size"]),
                              n_layers=int(LLAMA["num_hidden_layers"]), module=module,
                              extra_env={**env, "FVSTEER_ROLE": role})
        started.append(server)
        return server

    try:
        workers = [start(f"worker-{i}", "worker", "tests.fault_server") for i in range(2)]
        apis = [start(f"api-{i}", "api", "app.server") for i in range(2)]
        yield Cluster(port, tmp / "redis", redis_process, apis, workers, token, tmp / "registry")
    finally:
        for server in started:
            if server.process.poll() is None:
                stop_server(server)
        redis_process.kill()


def _job(server: LiveServer, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/jobs/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _finetune(server: LiveServer, name: str, epochs: int = 4) -> str:
    response = httpx.post(f"{server.url}/vectors/finetune", timeout=30,
                          json={"name": name, "relation": "antonym", "init": "zero", "epochs": epochs, "lr": 0.05,
                                "layer": 1})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _events(server: LiveServer, job_id: str, out: list[dict[str, Any]]) -> threading.Thread:
    def read() -> None:
        with httpx.stream("GET", f"{server.url}/jobs/{job_id}/events", timeout=120) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    out.append(json.loads(line[6:]))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_a_job_submitted_on_one_api_runs_on_a_worker_and_shows_everywhere(cluster: Cluster) -> None:
    a, b = cluster.apis
    name = f"ft-{secrets.token_hex(3)}"
    job_id = _finetune(a, name)
    events: list[dict[str, Any]] = []
    reader = _events(b, job_id, events)  # streamed on the other replica
    done = wait_until(lambda: (job := _job(b, job_id))["state"] in ("succeeded", "failed") and job,
                      "the job to end", timeout=120)
    assert done["state"] == "succeeded", done
    reader.join(timeout=30)
    assert events and events[-1]["state"] == "succeeded" and any(e["state"] == "running" for e in events)
    assert _job(a, job_id) == _job(b, job_id)
    for api in (a, b):  # the saved vector is served by both replicas
        vector = wait_until(lambda api=api: (r := httpx.get(f"{api.url}/vectors/{name}")).status_code == 200 and r,
                            f"{name} on {api.url}", timeout=SYNC_S)
        assert vector.json()["name"] == name
        completion = httpx.post(f"{api.url}/complete", timeout=60,
                                json={"prompt": "hot", "relations": {name: 1.0}, "max_new_tokens": 4})
        assert completion.status_code == 200 and completion.json()["steering"] is not None
    again = httpx.post(f"{b.url}/vectors/finetune", json={"name": name, "relation": "antonym"}, timeout=30)
    assert again.status_code == 409  # a name taken on one replica is taken on all


def test_a_worker_killed_mid_job_leaves_the_job_to_the_other_worker(cluster: Cluster) -> None:
    a, b = cluster.apis
    gates = [Faults(worker) for worker in cluster.workers]
    for gate in gates:
        gate.close("tasks")  # whichever worker takes the job parks before its first forward
    name = f"ft-{secrets.token_hex(3)}"
    job_id = _finetune(a, name)
    running = wait_until(lambda: [i for i, gate in enumerate(gates) if gate.state()["tasks"]["parked"]],
                         "a worker to take the job", timeout=60)
    (victim,) = running
    survivor = 1 - victim
    before = gates[survivor].state()["tasks"]["passed"]  # (it may have run an earlier test's job)
    gates[survivor].open("tasks")
    assert _job(b, job_id)["state"] == "running"
    cluster.workers[victim].process.send_signal(signal.SIGKILL)
    cluster.workers[victim].process.wait(timeout=10)
    killed = time.monotonic()
    taken = wait_until(lambda: gates[survivor].state()["tasks"]["passed"] > before, "the survivor to take the job",
                       timeout=120)
    retaken_s = time.monotonic() - killed
    done = wait_until(lambda: (job := _job(b, job_id))["state"] in ("succeeded", "failed") and job,
                      "the other worker to finish the job", timeout=120)
    print(f"worker SIGKILL: job taken again after {retaken_s:.1f} s (heartbeat 2 s), ended {done['state']} "
          f"{time.monotonic() - killed:.1f} s after the kill")
    assert taken and done["state"] == "succeeded", done
    files = sorted(path.name for path in cluster.registry.rglob(f"{name}*"))
    assert files == [f"{name}.safetensors"]  # saved once
    assert gates[survivor].state()["tasks"]["passed"] > before  # the survivor ran it
    assert httpx.get(f"{a.url}/vectors/{name}").status_code == 200


def test_a_delete_on_one_replica_is_refused_on_the_other_within_two_seconds(cluster: Cluster) -> None:
    a, b = cluster.apis
    name = f"up-{secrets.token_hex(3)}"
    data = save({"vector": __import__("torch").randn(int(LLAMA["hidden_size"]))})
    response = httpx.post(f"{a.url}/admin/vectors", headers=cluster.admin(), data={"name": name, "layer": "1"},
                          files={"file": ("v.safetensors", io.BytesIO(data))}, timeout=30)
    assert response.status_code == 201, response.text
    wait_until(lambda: httpx.get(f"{b.url}/vectors/{name}").status_code == 200, "the upload on B", timeout=SYNC_S)
    assert httpx.delete(f"{a.url}/admin/vectors/{name}", headers=cluster.admin()).status_code == 200
    started = time.monotonic()
    wait_until(lambda: httpx.get(f"{b.url}/vectors/{name}").status_code == 404, "B to refuse it", timeout=SYNC_S)
    seen_s = time.monotonic() - started
    refused = httpx.post(f"{b.url}/complete", json={"prompt": "x", "relations": {name: 1.0}}, timeout=30)
    print(f"delete on A: B answered 404 after {seen_s:.3f} s")
    assert refused.status_code == 404 and seen_s < SYNC_S


def test_redis_restarting_loses_nothing(cluster: Cluster) -> None:
    a, b = cluster.apis
    worker = next(w for w in cluster.workers if w.process.poll() is None)
    gate = Faults(worker)
    gate.close("tasks")
    name = f"ft-{secrets.token_hex(3)}"
    job_id = _finetune(a, name)
    wait_until(lambda: gate.state()["tasks"]["parked"], "the job to start")
    queued_name = f"ft-{secrets.token_hex(3)}"
    queued = _finetune(b, queued_name)  # waits behind the first: the one live worker takes one job at a time
    assert _job(a, queued)["state"] == "queued"
    cluster.restart_redis()
    restarted = time.monotonic()
    uploaded = f"up-{secrets.token_hex(3)}"
    data = save({"vector": __import__("torch").randn(int(LLAMA["hidden_size"]))})
    response = wait_until(lambda: (r := httpx.post(
        f"{a.url}/admin/vectors", headers=cluster.admin(), data={"name": uploaded, "layer": "1"},
        files={"file": ("v.safetensors", io.BytesIO(data))}, timeout=30)).status_code != 503 and r,
        "A to write again after the restart")
    assert response.status_code == 201, response.text
    print(f"redis restart: A wrote again {time.monotonic() - restarted:.2f} s after it")
    gate.open("tasks")
    for job in (job_id, queued):
        done = wait_until(lambda job=job: (j := _job(b, job))["state"] in ("succeeded", "failed") and j,
                          f"{job} to end after the restart", timeout=120)
        assert done["state"] == "succeeded", done
    for api in (a, b):  # both replicas back in sync: every vector made during the outage is served by both
        for vector in (name, queued_name, uploaded):
            wait_until(lambda api=api, vector=vector: httpx.get(f"{api.url}/vectors/{vector}").status_code == 200,
                       f"{vector} on {api.url}", timeout=10)


def test_sixteen_clients_over_both_apis_for_thirty_seconds(cluster: Cluster) -> None:
    deadline = time.monotonic() + 30
    outcomes: list[int] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        api = cluster.apis[index % 2]
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < deadline:
                response = http.post(f"{api.url}/complete", json={"prompt": f"client {index}", "max_new_tokens": 8})
                with lock:
                    outcomes.append(response.status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    print(f"load: 16 clients over 2 apis for 30 s: {len(outcomes)} requests, statuses "
          f"{ {status: outcomes.count(status) for status in set(outcomes)} }")
    assert outcomes and set(outcomes) == {200}, {status: outcomes.count(status) for status in set(outcomes)}
