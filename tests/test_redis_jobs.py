"""The Redis job queue in process, against a real Redis (a private server per test): submit on one side, run on a
worker, the record every side reads, names held per job, cancellation, and a redelivered job that a dead worker had
already saved finished without running again. The multi-process behaviour is tests/test_replicas.py."""

from __future__ import annotations

import secrets
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
from pydantic import BaseModel

from app.errors import Conflict, InvalidInput, NotFound
from app.jobs.manager import JobContext, Work
from app.jobs.queue import Payload
from app.jobs.redis_jobs import RedisJobs
from tests.conftest import free_port, start_redis
from tests.faults import wait_until


class Made(BaseModel):
    vector: str


@dataclass
class Registry:
    """What the queue asks of a registry: which job saved a name."""

    saved: dict[str, str] = field(default_factory=dict)

    def saved_by(self, name: str) -> str | None:
        return self.saved.get(name)


@dataclass
class Side:
    url: str
    namespace: str
    jobs: RedisJobs
    registry: Registry
    release: threading.Event
    ran: list[str]


@pytest.fixture
def redis_url() -> Iterator[str]:
    port = free_port()
    process: subprocess.Popen[bytes] = start_redis(port)
    yield f"redis://127.0.0.1:{port}/0"
    process.kill()


def _side(url: str, namespace: str, run_jobs: bool, registry: Registry) -> Side:
    release, ran = threading.Event(), []
    jobs = RedisJobs(url, namespace, heartbeat_s=2, run_jobs=run_jobs, saved_by=registry.saved_by)

    def factory(kind: str, payload: Payload) -> Work:
        if kind != "finetune":
            raise InvalidInput(f"unknown job kind {kind!r}", param="kind")

        def work(ctx: JobContext) -> BaseModel:
            ran.append(ctx.job_id)
            ctx.report("training", 0.5)
            while not release.wait(0.05):
                ctx.check_cancelled()
            result = Made(vector=payload["name"])
            ctx.stage(result)
            registry.saved[payload["name"]] = ctx.job_id
            return result

        return work

    jobs.bind(factory)
    jobs.start()
    return Side(url, namespace, jobs, registry, release, ran)


@pytest.fixture
def pair(redis_url: str) -> Iterator[tuple[Side, Side]]:
    namespace, registry = f"t{secrets.token_hex(3)}", Registry()
    api, worker = _side(redis_url, namespace, False, registry), _side(redis_url, namespace, True, registry)
    yield api, worker
    worker.release.set()
    for side in (api, worker):
        side.jobs.stop()


def test_a_job_runs_on_the_worker_and_every_side_reads_its_record(pair: tuple[Side, Side]) -> None:
    api, worker = pair
    job = api.jobs.submit("finetune", "made", {"name": "made"})
    assert api.jobs.get(job.id).state == "queued" or api.jobs.get(job.id).state == "running"
    running = wait_until(lambda: (j := api.jobs.get(job.id)).phase == "training" and j, "the job to report")
    assert running.state == "running" and running.progress == 0.5 and worker.jobs.get(job.id).version == running.version
    with pytest.raises(Conflict):  # the name is held by the running job
        api.jobs.submit("finetune", "made", {"name": "made"})
    worker.release.set()
    done = wait_until(lambda: (j := api.jobs.get(job.id)).state == "succeeded" and j, "the job to succeed")
    assert done.result == {"vector": "made"} and worker.ran == [job.id] and api.ran == []
    assert api.jobs.counts()["succeeded"] == 1
    with pytest.raises(Conflict):  # now the vector exists
        api.jobs.submit("finetune", "made", {"name": "made"})
    with pytest.raises(NotFound):
        api.jobs.get("job-" + "0" * 16)
    with pytest.raises(InvalidInput):
        api.jobs.get("nope")


def test_cancel_a_running_job_and_a_queued_one(pair: tuple[Side, Side]) -> None:
    api, worker = pair
    first = api.jobs.submit("finetune", "first", {"name": "first"})
    wait_until(lambda: api.jobs.get(first.id).phase == "training", "the first job to run")
    second = api.jobs.submit("finetune", "second", {"name": "second"})
    assert api.jobs.counts() == {"queued": 1, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert api.jobs.cancel(second.id).state == "cancelled"  # queued: at once
    assert api.jobs.counts()["queued"] == 0 and api.jobs.counts()["cancelled"] == 1
    assert api.jobs.cancel(first.id).state == "running"  # running: at its next step
    wait_until(lambda: api.jobs.get(first.id).state == "cancelled", "the running job to stop")
    assert api.jobs.counts() == {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 2}
    assert worker.registry.saved == {} and worker.ran == [first.id]  # the cancelled queued job never ran
    again = api.jobs.submit("finetune", "second", {"name": "second"})  # a cancelled job's name is free again
    worker.release.set()
    wait_until(lambda: api.jobs.get(again.id).state == "succeeded", "the new job to succeed")


def test_a_redelivered_job_whose_vector_was_saved_is_finished_not_run_again(pair: tuple[Side, Side]) -> None:
    """A worker that died between saving the vector and ending the job: the next worker sees the staged result and
    the vector saved under the job's id, and ends the job with that result."""
    api, worker = pair
    worker.jobs.stop()  # no worker takes it while the test stages the dead worker's leftovers
    job = api.jobs.submit("finetune", "saved", {"name": "saved"})
    key = api.jobs._key(job.id)
    api.jobs._redis.hset(key, "staged", Made(vector="saved").model_dump_json())
    api.registry.saved["saved"] = job.id
    fresh = _side(api.url, api.namespace, True, api.registry)
    try:
        done = wait_until(lambda: (j := api.jobs.get(job.id)).state == "succeeded" and j, "the job to be finished")
        assert done.result == {"vector": "saved"} and fresh.ran == []
    finally:
        fresh.release.set()
        fresh.jobs.stop()



def test_a_finished_jobs_record_expires_and_leaves_the_counts(pair: tuple[Side, Side]) -> None:
    """Job records used to be kept for ever."""
    api, worker = pair
    job = api.jobs.submit("finetune", "kept", {"name": "kept"})
    worker.release.set()
    wait_until(lambda: api.jobs.get(job.id).state == "succeeded", "the job to succeed")
    client = redis.Redis.from_url(api.url)
    assert 0 < client.ttl(api.jobs._key(job.id)) <= api.jobs.retention_s
    client.delete(api.jobs._key(job.id))  # as its expiry does
    api.jobs._prune("succeeded")
    assert api.jobs.counts()["succeeded"] == 0
    with pytest.raises(NotFound):
        api.jobs.get(job.id)
