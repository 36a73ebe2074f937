"""Extraction over HTTP on real servers (tiny random llama): jobs, progress events, cancellation, the Redis
head-mean cache (hit, and degraded when Redis is down), evaluation of user pairs, refusals, and a job lost
to a restart."""

from __future__ import annotations

import json
import re
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.cache.head_means import HeadMeanKey
from app.fv.pairs import Pair, dataset_sha256, relation_pairs, split_pairs
from app.fv.prompts import Template
from tests.conftest import TEST_REDIS_URL, LiveServer, free_port, start_server, stop_server
from tests.tiny_models import ARCH_CONFIGS

LLAMA: dict[str, Any] = ARCH_CONFIGS["llama"]
N_LAYERS = int(LLAMA["num_hidden_layers"])
N_HEADS = int(LLAMA["num_attention_heads"])
D_MODEL = int(LLAMA["hidden_size"])
SMALL = {"n_prompts": 8, "n_trials": 3, "n_heads": 3}
LONG = {"n_prompts": 1000, "n_trials": 500, "n_heads": 3}
RUN_TAG = secrets.token_hex(3)  # keeps this run's datasets (and so its cache keys) apart from other runs'
CREATED_KEYS: list[str] = []  # Redis keys this module's extractions wrote, deleted at the end


def new_name(prefix: str = "fv") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def user_pairs(n: int = 20) -> list[dict[str, str]]:
    return [{"input": f"w{index}{RUN_TAG}", "output": f"v{index}"} for index in range(n)]


def start(tmp: Path, model_dir: Path, redis_url: str, jobs_dir: Path) -> LiveServer:
    return start_server(
        tmp, str(model_dir), admin_token=secrets.token_hex(16), d_model=D_MODEL, n_layers=N_LAYERS,
        extra_env={"FVSTEER_REDIS_URL": redis_url, "FVSTEER_JOBS_DIR": str(jobs_dir)},
    )


def post_extract(server: LiveServer, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/vectors/extract", json=body, timeout=30)


def get_job(server: LiveServer, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_job(server: LiveServer, job_id: str, states: set[str], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(server, job_id)
        assert 0.0 <= job["progress"] <= 1.0
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}:\n{server.log()[-3000:]}"
        time.sleep(0.05)


def extract_and_wait(server: LiveServer, **body: Any) -> dict[str, Any]:
    response = post_extract(server, **body)
    assert response.status_code == 202, response.text
    job = wait_job(server, response.json()["id"], {"succeeded", "failed", "cancelled"})
    assert job["state"] == "succeeded", job
    return job


def admin_metadata(server: LiveServer, name: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/admin/vectors", headers={"Authorization": f"Bearer {server.admin_token}"},
                         timeout=10)
    assert response.status_code == 200, response.text
    found = [item for item in response.json()["vectors"] if item["name"] == name]
    assert len(found) == 1
    metadata: dict[str, Any] = found[0]
    return metadata


def cache_counts(server: LiveServer) -> dict[str, int]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {match[1]: int(float(match[2])) for match in
            re.finditer(r'^fvsteer_head_mean_cache_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}


def total_jobs(server: LiveServer) -> int:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(int(float(match[1])) for match in re.finditer(r'^fvsteer_jobs\{state="\w+"\} (\S+)$', text, re.M))


def complete(server: LiveServer, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/complete", json={"max_new_tokens": 4, **body}, timeout=60)


def assert_envelope(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"type", "message", "param", "code"} and error["message"]
    if param is not None and param.endswith("*"):
        assert str(error["param"]).startswith(param[:-1]), error
    elif param is not None:
        assert error["param"] == param, error
    return error


def vector_files(server: LiveServer, name: str) -> list[Path]:
    return list(server.vectors_dir.rglob(f"{name}.safetensors"))


def cache_key_of(metadata: dict[str, Any]) -> str:
    metrics = metadata["metrics"]
    return HeadMeanKey(metadata["model_fingerprint"], metadata["template"], metadata["dataset_sha256"],
                       metrics["shots"], metrics["n_prompts"], metrics["seed"]).digest()


# --- the server with Redis -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_client(raw_redis: redis.Redis) -> Iterator[redis.Redis]:
    """The tests' Redis; the keys this module's servers create are deleted after it."""
    yield raw_redis
    if CREATED_KEYS:
        raw_redis.delete(*CREATED_KEYS)


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, jobs_dir: Path,
           redis_client: redis.Redis) -> Iterator[LiveServer]:
    """The server most tests share; the last test of the module kills it (SIGKILL) to test recovery."""
    live = start(tmp_path_factory.mktemp("extract"), tiny_llama_dir, TEST_REDIS_URL, jobs_dir)
    yield live
    stop_server(live)


def remember_key_of(server: LiveServer, name: str) -> dict[str, Any]:
    """Note the Redis key the vector's extraction wrote (deleted at the end); returns its metadata."""
    metadata = admin_metadata(server, name)
    CREATED_KEYS.append(cache_key_of(metadata))
    return metadata


@pytest.fixture(scope="module")
def extracted(server: LiveServer) -> dict[str, Any]:
    """One extraction of a shipped relation, with a seed of its own so its cache key is new."""
    name, seed = new_name("antonym"), secrets.randbelow(2**31 - 1)
    response = post_extract(server, name=name, relation="antonym", seed=seed, **SMALL)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "extract" and job["state"] in ("queued", "running")
    assert re.fullmatch(r"job-[0-9a-f]{16}", job["id"])
    assert job["result"] is None and job["error"] is None
    # Stream the job's events while it runs.
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("GET", f"{server.url}/jobs/{job['id']}/events", timeout=60) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                assert event is not None
                events.append((event, json.loads(line.removeprefix("data: "))))
    final = wait_job(server, job["id"], {"succeeded", "failed", "cancelled"})
    assert final["state"] == "succeeded", final
    metadata = remember_key_of(server, name)
    return {"name": name, "seed": seed, "job": final, "events": events, "metadata": metadata}


def test_extraction_job_succeeds_and_saves_a_cma_vector(server: LiveServer, extracted: dict[str, Any]) -> None:
    name, job = extracted["name"], extracted["job"]
    result = job["result"]
    assert result["vector"] == name and job["progress"] == 1.0 and job["error"] is None
    assert 0 <= result["layer"] < N_LAYERS
    assert result["head_means_cache"] == {"hit": False, "backend": "redis"}
    assert result["scoring_cache"] == {"aie_hit": False, "layer_sweep_hit": False, "backend": "redis"}
    assert len(result["heads"]) == SMALL["n_heads"]
    assert set(result["phase_seconds"]) == {"means", "scoring", "layer_sweep"}

    listed = [item for item in httpx.get(f"{server.url}/vectors", timeout=10).json()["vectors"]
              if item["name"] == name]
    assert len(listed) == 1
    assert listed[0]["method"] == "cma" and listed[0]["relation"] == "antonym"
    assert listed[0]["layer"] == result["layer"] and listed[0]["norm"] == pytest.approx(result["norm"], rel=1e-4)
    assert listed[0]["norm"] > 0

    metadata = extracted["metadata"]
    pairs = relation_pairs("antonym")
    assert metadata["dataset_sha256"] == dataset_sha256(pairs)
    assert metadata["n_pairs"] == len(pairs)
    assert metadata["template"] == Template().describe()
    assert metadata["d_model"] == D_MODEL
    heads = metadata["heads"]
    assert len(heads) == SMALL["n_heads"]
    assert all(0 <= layer < N_LAYERS and 0 <= head < N_HEADS for layer, head, _ in heads)
    assert [aie for _, _, aie in heads] == sorted((aie for _, _, aie in heads), reverse=True)
    assert len({(layer, head) for layer, head, _ in heads}) == len(heads)
    metrics = metadata["metrics"]
    assert metrics["n_prompts"] == SMALL["n_prompts"] and metrics["n_trials"] == SMALL["n_trials"]
    assert metrics["seed"] == extracted["seed"] and metrics["shots"] == 10
    assert set(metrics["layer_sweep"]) == {str(layer) for layer in range(N_LAYERS)}
    assert metrics["layer_sweep"][str(result["layer"])] == max(metrics["layer_sweep"].values())  # the best layer

    public = httpx.get(f"{server.url}/vectors/{name}", timeout=10).json()
    assert public["heads"] == heads and public["method"] == "cma"


def test_progress_events_then_end(extracted: dict[str, Any]) -> None:
    events = extracted["events"]
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "end" and kinds.count("end") == 1
    assert kinds[:-1] and set(kinds[:-1]) == {"progress"}
    assert events[-1][1]["state"] == "succeeded" and events[-1][1]["result"]["vector"] == extracted["name"]
    assert events[-1][1] == extracted["job"]  # each event is the job as GET /jobs/{id} shows it (JobView)
    progress = [data["progress"] for _, data in events]
    assert progress == sorted(progress)  # never goes backwards
    phases = {data["phase"] for _, data in events}
    assert phases & {"means", "scoring", "layer_sweep"}


def test_extracted_vector_steers_a_completion(server: LiveServer, extracted: dict[str, Any]) -> None:
    name, layer = extracted["name"], extracted["job"]["result"]["layer"]
    response = complete(server, prompt="Q: hot\nA:", relations={name: 1.0}, return_baseline=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["steering"]["relations"] == {name: 1.0}
    assert list(body["steering"]["layers"]) == [str(layer)]
    assert body["steering"]["layers"][str(layer)]["norm"] == pytest.approx(extracted["job"]["result"]["norm"],
                                                                          rel=1e-4)
    assert body["baseline"] is not None


def test_same_inputs_hit_the_redis_cache(server: LiveServer, extracted: dict[str, Any],
                                         redis_client: redis.Redis) -> None:
    key = cache_key_of(extracted["metadata"])
    assert redis_client.type(key) == b"hash"
    fields = redis_client.hkeys(key)
    assert len(fields) == 1 + N_LAYERS * N_HEADS and b"meta" in fields and b"0.0" in fields
    before = cache_counts(server)
    name = new_name("again")
    job = extract_and_wait(server, name=name, relation="antonym", seed=extracted["seed"], **SMALL)
    assert job["result"]["head_means_cache"] == {"hit": True, "backend": "redis"}
    assert job["result"]["scoring_cache"] == {"aie_hit": True, "layer_sweep_hit": True, "backend": "redis"}
    after = cache_counts(server)
    assert after["hit"] == before["hit"] + 1
    assert after["miss"] == before["miss"]
    # Same means, same corrupted prompts → the same heads and vector.
    assert job["result"]["heads"] == extracted["job"]["result"]["heads"]
    assert job["result"]["norm"] == pytest.approx(extracted["job"]["result"]["norm"], rel=1e-5)
    metadata = admin_metadata(server, name)
    assert metadata["dataset_sha256"] == extracted["metadata"]["dataset_sha256"]


def test_user_pairs_extract_evaluate_complete(server: LiveServer) -> None:
    pairs = user_pairs(14)
    name = new_name("mine")
    job = extract_and_wait(server, name=name, pairs=pairs, seed=3, **SMALL)
    assert job["result"]["head_means_cache"]["hit"] is False
    metadata = remember_key_of(server, name)
    parsed = [Pair(item["input"], item["output"]) for item in pairs]
    assert metadata["relation"] == "custom"
    assert metadata["dataset_sha256"] == dataset_sha256(parsed) and metadata["n_pairs"] == 14
    train = split_pairs(parsed, 3).train
    assert len(train) < 11 and metadata["metrics"]["shots"] == len(train) - 1  # too few pairs for 10 shots

    response = httpx.post(f"{server.url}/vectors/{name}/evaluate", json={"pairs": pairs, "shots": 5}, timeout=60)
    assert response.status_code == 200, response.text
    evaluation = response.json()
    assert evaluation["vector"] == name and evaluation["relation"] == "custom"
    assert evaluation["layer"] == job["result"]["layer"]
    test_size = len(split_pairs(parsed, 3).test)  # the vector's own dataset: its test split is evaluated
    assert evaluation["n"] + evaluation["n_dropped"] == test_size
    assert evaluation["icl"]["top1"] == pytest.approx(evaluation["n"] / test_size)
    for condition in ("zero_shot", "zero_shot_fv", "icl", "icl_shuffled", "icl_shuffled_fv"):
        assert 0.0 <= evaluation[condition]["top1"] <= evaluation[condition]["top3"] <= 1.0

    other = [{"input": f"x{index}{RUN_TAG}", "output": f"y{index}"} for index in range(12)]
    response = httpx.post(f"{server.url}/vectors/{name}/evaluate", json={"pairs": other, "shots": 3}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["n"] + response.json()["n_dropped"] == len(other)  # other pairs: all are test items

    response = complete(server, prompt="Q: w1\nA:", relations={name: 1.0})
    assert response.status_code == 200, response.text
    assert list(response.json()["steering"]["layers"]) == [str(job["result"]["layer"])]


def test_cancel_a_long_job(server: LiveServer) -> None:
    name = new_name("long")
    response = post_extract(server, name=name, relation="synonym", seed=secrets.randbelow(10**6), **LONG)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    running = wait_job(server, job_id, {"running", "succeeded", "failed", "cancelled"})
    assert running["state"] == "running", running
    cancelled = httpx.delete(f"{server.url}/jobs/{job_id}", timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["id"] == job_id
    final = wait_job(server, job_id, {"succeeded", "failed", "cancelled"}, timeout=30)
    assert final["state"] == "cancelled", final
    assert final["result"] is None and final["error"] is None
    assert vector_files(server, name) == []
    assert_envelope(httpx.get(f"{server.url}/vectors/{name}", timeout=10), 404)
    # The name is still free, and a DELETE of a finished job answers with it unchanged.
    assert httpx.delete(f"{server.url}/jobs/{job_id}", timeout=10).json()["state"] == "cancelled"


def test_a_job_cancelled_while_queued_never_runs_and_frees_its_name(server: LiveServer) -> None:
    response = post_extract(server, name=new_name("ahead"), relation="synonym", seed=secrets.randbelow(10**6),
                            **LONG)
    assert response.status_code == 202, response.text
    ahead = response.json()["id"]
    assert wait_job(server, ahead, {"running", "succeeded", "failed", "cancelled"})["state"] == "running"
    name = new_name("queued")
    body = {"name": name, "pairs": user_pairs(13), "seed": 5, **SMALL}
    response = post_extract(server, **body)
    assert response.status_code == 202, response.text
    queued = response.json()["id"]
    assert get_job(server, queued)["state"] == "queued"
    # While that job is pending, its name is taken.
    assert_envelope(post_extract(server, **body), 409, "name")
    assert httpx.delete(f"{server.url}/jobs/{queued}", timeout=10).json()["state"] == "cancelled"
    # Cancelled before it ran: the name is free again.
    response = post_extract(server, **body)
    assert response.status_code == 202, response.text
    again = response.json()["id"]
    httpx.delete(f"{server.url}/jobs/{ahead}", timeout=10)
    assert wait_job(server, ahead, {"succeeded", "failed", "cancelled"})["state"] == "cancelled"
    finished = wait_job(server, again, {"succeeded", "failed", "cancelled"})
    assert finished["state"] == "succeeded" and finished["result"]["vector"] == name, finished
    assert get_job(server, queued)["state"] == "cancelled" and get_job(server, queued)["progress"] == 0.0
    remember_key_of(server, name)


def long_pairs(n: int = 16) -> list[dict[str, str]]:
    """Pairs whose 10-shot prompts (about 10 × 300 characters, one token each on the tiny tokenizer) run over the
    server's 2,048-token prompt limit, though every pair is within the schema's 200 characters."""
    return [{"input": f"w{index}{RUN_TAG}" + "x" * 150, "output": "y" * 150} for index in range(n)]


def test_prompts_over_the_token_limit_are_refused_before_any_work(server: LiveServer) -> None:
    """Extraction, fine-tuning (its mediation start) and evaluation build in-context prompts: ones that could run
    over the limit completions obey are refused with 422 naming `shots` and both numbers, and nothing is queued."""
    jobs_before = total_jobs(server)
    for path in ("extract", "finetune"):
        name = new_name("long")
        error = assert_envelope(httpx.post(f"{server.url}/vectors/{path}", json={"name": name, "pairs": long_pairs()},
                                           timeout=30), 422, "shots")
        assert "2048" in error["message"] and "tokens" in error["message"], error
        assert vector_files(server, name) == []
    assert total_jobs(server) == jobs_before
    vector = new_name("short")
    job = httpx.post(f"{server.url}/vectors/finetune", json={"name": vector, "pairs": user_pairs(16), "epochs": 2,
                                                            "init": "zero"}, timeout=30).json()
    assert wait_job(server, job["id"], {"succeeded", "failed", "cancelled"})["state"] == "succeeded"
    error = assert_envelope(httpx.post(f"{server.url}/vectors/{vector}/evaluate",
                                       json={"pairs": long_pairs(), "shots": 10}, timeout=30), 422, "shots")
    assert "2048" in error["message"]
    fine = httpx.post(f"{server.url}/vectors/{vector}/evaluate", json={"pairs": long_pairs(), "shots": 1}, timeout=60)
    assert fine.status_code == 200, fine.text  # one demonstration fits


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"pairs": user_pairs(11)}, 422, "pairs"),
        ({"pairs": [*user_pairs(12), {"input": f"w3{RUN_TAG}", "output": "z"}]}, 422, "pairs[12]"),
        ({"pairs": [*user_pairs(12)[:5], {"input": "a", "output": ""}, *user_pairs(12)[5:]]}, 422, "pairs.5.output"),
        ({"pairs": [*user_pairs(12), {"input": "a", "output": "   "}]}, 422, "pairs[12]"),
        ({"pairs": [*user_pairs(12), {"input": "a"}]}, 422, "pairs.12.output"),
        ({"pairs": "hot,cold"}, 422, "pairs"),
        ({"relation": "no-such-relation"}, 404, "relation"),
        ({"relation": "antonym", "pairs": user_pairs(12)}, 422, "relation"),
        ({}, 422, "relation"),
        ({"relation": "antonym", "n_heads": 0}, 422, "n_heads"),
        ({"relation": "antonym", "n_heads": N_LAYERS * N_HEADS + 1}, 422, "n_heads"),
        ({"relation": "antonym", "layer": 99}, 422, "layer"),
        ({"relation": "antonym", "layer": -1}, 422, "layer"),
        # pydantic names the union member ("layer.int"); the envelope's param still starts with the field
        ({"relation": "antonym", "layer": "best"}, 422, "layer*"),
        ({"relation": "antonym", "n_prompts": 0}, 422, "n_prompts"),
        ({"relation": "antonym", "n_trials": 501}, 422, "n_trials"),
        ({"relation": "antonym", "unknown": 1}, 422, "unknown"),
    ],
)
def test_bad_extraction_requests_are_refused(server: LiveServer, body: dict[str, Any], status: int,
                                             param: str) -> None:
    name = new_name("bad")
    jobs_before = total_jobs(server)
    assert jobs_before >= 1
    error = assert_envelope(post_extract(server, name=name, **body), status, param)
    if param == "n_heads" and status == 422 and body.get("n_heads"):
        assert str(N_LAYERS * N_HEADS) in error["message"]  # names the limit
    assert vector_files(server, name) == []
    assert total_jobs(server) == jobs_before  # refused before any job was queued


def test_existing_name_is_a_conflict(server: LiveServer, extracted: dict[str, Any]) -> None:
    error = assert_envelope(post_extract(server, name=extracted["name"], relation="antonym", **SMALL), 409, "name")
    assert extracted["name"] in error["message"]
    assert_envelope(post_extract(server, name="Bad Name!", relation="antonym", **SMALL), 422, "name")


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("DELETE", ""), ("GET", "/events")])
def test_bad_and_unknown_job_ids(server: LiveServer, method: str, suffix: str) -> None:
    bad = httpx.request(method, f"{server.url}/jobs/not-a-job{suffix}", timeout=10)
    assert_envelope(bad, 422, "id")
    unknown = httpx.request(method, f"{server.url}/jobs/job-{'0' * 16}{suffix}", timeout=10)
    assert_envelope(unknown, 404, "id")


# --- a restart, and Redis down (keep last: it kills the shared server) --------------------------------


def test_restart_interrupts_the_running_job_and_redis_down_degrades(
    server: LiveServer, extracted: dict[str, Any], jobs_dir: Path, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    response = post_extract(server, name=new_name("lost"), relation="antonym", seed=secrets.randbelow(10**6), **LONG)
    assert response.status_code == 202, response.text
    lost = response.json()["id"]
    assert wait_job(server, lost, {"running", "succeeded", "failed", "cancelled"})["state"] == "running"
    deadline = time.monotonic() + 10
    while json.loads((jobs_dir / f"{lost}.json").read_text())["state"] != "running":  # written just after
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.process.send_signal(signal.SIGKILL)  # no chance to record anything
    server.process.wait(timeout=10)
    assert json.loads((jobs_dir / f"{lost}.json").read_text())["state"] == "running"

    # The new server on the same jobs dir, with Redis configured on a port where nothing listens.
    again = start(tmp_path, tiny_llama_dir, f"redis://127.0.0.1:{free_port()}/15", jobs_dir)
    try:
        job = get_job(again, lost)
        assert job["state"] == "failed" and job["result"] is None
        assert job["error"]["type"] == "interrupted" and job["error"]["message"]
        finished = get_job(again, extracted["job"]["id"])  # finished jobs keep their result across the restart
        assert finished["state"] == "succeeded" and finished["result"] == extracted["job"]["result"]

        ready = httpx.get(f"{again.url}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded" and ready.json()["cache"] == "degraded"
        job = extract_and_wait(again, name=new_name("nocache"), pairs=user_pairs(14), **SMALL)
        assert job["result"]["head_means_cache"] == {"hit": False, "backend": "degraded"}
        assert job["result"]["scoring_cache"] == {"aie_hit": False, "layer_sweep_hit": False, "backend": "degraded"}
        counts = cache_counts(again)
        assert counts["error"] >= 2 and counts["hit"] == 0  # the failed read and the failed write, no crash
        response = complete(again, prompt="Q: w1\nA:", relations={job["result"]["vector"]: 1.0})
        assert response.status_code == 200, response.text
        assert list(response.json()["steering"]["layers"]) == [str(job["result"]["layer"])]
    finally:
        stop_server(again)
