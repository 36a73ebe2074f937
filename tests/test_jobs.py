"""The job manager: states, errors, cancellation, persistence and recovery after a restart, limits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from app.errors import InvalidInput, NotFound, QueueFull
from app.jobs.manager import MAX_WAITING, Job, JobCancelled, JobContext, JobManager, LocalJobContext
from tests.faults import wait_until


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[JobManager]:
    manager = JobManager(tmp_path / "jobs")
    manager.start()
    yield manager
    manager.stop()


class Released(BaseModel):
    released: bool = True


class Made(BaseModel):
    vector: str
    n: int


def wait_for(job: Job, states: set[str], timeout: float = 10.0) -> Job:
    deadline = time.monotonic() + timeout
    while job.state not in states:
        assert time.monotonic() < deadline, f"job stuck in {job.state}"
        time.sleep(0.005)
    return job


def blocker() -> tuple[threading.Event, threading.Event, Callable[[JobContext], Released]]:
    """Work that signals it started and holds the worker until released."""
    started, release = threading.Event(), threading.Event()

    def work(ctx: JobContext) -> Released:
        started.set()
        assert release.wait(10)
        return Released()

    return started, release, work


def record(manager: JobManager, job: Job, state: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """The job's record on disk (once it says ``state``: the file is written just after the change in memory)."""
    deadline = time.monotonic() + timeout
    while True:
        data: dict[str, Any] = json.loads((manager.directory / f"{job.id}.json").read_text())
        if state is None or data["state"] == state or time.monotonic() > deadline:
            return data
        time.sleep(0.005)


def test_job_goes_queued_running_succeeded(jobs: JobManager) -> None:
    seen: list[tuple[str, str, float]] = []
    go = threading.Event()

    def work(ctx: JobContext) -> BaseModel:
        seen.append((ctx._job.state, ctx._job.phase, ctx._job.progress))
        assert go.wait(10)
        ctx.report("half", 0.5)
        seen.append((ctx._job.state, ctx._job.phase, ctx._job.progress))
        ctx.report("clamped", 7.0)
        seen.append((ctx._job.state, ctx._job.phase, ctx._job.progress))
        return Made(vector="v1", n=3)

    job = jobs.submit("extract", work)
    assert job.id.startswith("job-") and job.kind == "extract"
    assert job.state in ("queued", "running")
    wait_for(job, {"running"})
    assert record(jobs, job, "running")["state"] == "running"
    go.set()
    wait_for(job, {"succeeded"})
    assert seen == [("running", "starting", 0.0), ("running", "half", 0.5), ("running", "clamped", 1.0)]
    public = job.public()
    assert set(public) == {"id", "kind", "state", "phase", "progress", "detail", "result", "error", "created",
                           "updated"}
    assert public["result"] == {"vector": "v1", "n": 3} and public["error"] is None
    assert public["progress"] == 1.0 and public["phase"] == "done"
    assert public["updated"] >= public["created"]
    assert jobs.get(job.id) is job
    assert record(jobs, job, "succeeded") == public  # the file on disk is the latest state


def test_fvsteer_error_keeps_its_envelope(jobs: JobManager) -> None:
    def work(ctx: JobContext) -> BaseModel:
        raise InvalidInput("n_heads is 0; the model has 16 heads", param="n_heads")

    job = wait_for(jobs.submit("extract", work), {"failed"})
    assert job.error == {"type": "invalid_request", "message": "n_heads is 0; the model has 16 heads",
                         "param": "n_heads", "code": None}
    assert job.result is None and job.phase == "failed"
    assert record(jobs, job, "failed")["error"] == job.error


def test_unexpected_exception_is_an_internal_error(jobs: JobManager) -> None:
    def work(ctx: JobContext) -> BaseModel:
        raise KeyError("oops")

    job = wait_for(jobs.submit("extract", work), {"failed"})
    assert job.error is not None and job.error["type"] == "internal_error"
    assert "KeyError" in job.error["message"] and "oops" in job.error["message"]
    # The worker survives a failed job.
    assert wait_for(jobs.submit("extract", lambda ctx: Released()), {"succeeded"}).result == {"released": True}


def test_cancel_while_queued_never_runs(jobs: JobManager) -> None:
    started, release, work = blocker()
    first = jobs.submit("extract", work)
    assert started.wait(10)
    ran = threading.Event()

    def second_work(ctx: JobContext) -> Released:
        ran.set()
        return Released()

    second = jobs.submit("extract", second_work)
    assert second.state == "queued"
    assert jobs.cancel(second.id).state == "cancelled"
    assert record(jobs, second)["state"] == "cancelled"
    release.set()
    wait_for(first, {"succeeded"})
    third = wait_for(jobs.submit("extract", lambda ctx: Released()), {"succeeded"})  # the worker has passed `second`
    assert third.state == "succeeded"
    assert not ran.is_set()
    assert second.public()["state"] == "cancelled" and second.result is None


@pytest.mark.parametrize("check", ["report", "check_cancelled"])
def test_cancel_while_running(jobs: JobManager, check: str) -> None:
    started = threading.Event()
    after_cancel: list[str] = []

    def work(ctx: JobContext) -> BaseModel:
        started.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if check == "report":
                ctx.report("scoring", 0.3)
            else:
                ctx.check_cancelled()
            time.sleep(0.002)
        after_cancel.append("not cancelled")
        return Made(vector="never", n=0)

    job = jobs.submit("extract", work)
    assert started.wait(10)
    assert jobs.cancel(job.id).id == job.id
    wait_for(job, {"cancelled"})
    assert not after_cancel
    assert job.result is None and job.error is None and job.phase == "cancelled"
    assert record(jobs, job, "cancelled")["state"] == "cancelled"
    # Cancelling a finished job changes nothing.
    assert jobs.cancel(job.id).state == "cancelled"


def test_cancel_a_finished_job_is_a_no_op(jobs: JobManager) -> None:
    job = wait_for(jobs.submit("extract", lambda ctx: Released()), {"succeeded"})
    assert jobs.cancel(job.id).state == "succeeded"
    assert job.result == {"released": True}


def test_context_raises_job_cancelled() -> None:
    manager = JobManager(Path("/nonexistent-unused"))
    job = Job(id="job-0123456789abcdef", kind="x")
    ctx = LocalJobContext(manager, job)
    ctx.check_cancelled()
    job.cancel_requested.set()
    with pytest.raises(JobCancelled):
        ctx.check_cancelled()
    with pytest.raises(JobCancelled):
        ctx.report("means", 0.1)
    assert job.progress == 0.0


def test_records_survive_a_restart_and_unfinished_ones_become_interrupted(tmp_path: Path) -> None:
    directory = tmp_path / "jobs"
    first = JobManager(directory)
    first.start()
    done = wait_for(first.submit("extract", lambda ctx: Made(vector="a", n=1)), {"succeeded"})
    failed = wait_for(first.submit("extract", lambda ctx: (_ for _ in ()).throw(InvalidInput("bad", "pairs"))),
                      {"failed"})
    started, release, work = blocker()
    running = first.submit("extract", work)
    assert started.wait(10)
    queued = first.submit("finetune", lambda ctx: Released())
    assert record(first, running, "running")["state"] == "running" and record(first, queued)["state"] == "queued"
    # Simulate a crash: the new manager reads the records while the old one never finished them.
    (directory / "job-zzzz.json").write_text("{not json")  # unreadable records are skipped
    (directory / "job-0000000000000000.json").write_text(json.dumps({"id": "job-0000000000000000"}))
    second = JobManager(directory)
    second.start()
    try:
        assert second.get(done.id).state == "succeeded" and second.get(done.id).result == {"vector": "a", "n": 1}
        assert second.get(failed.id).error == failed.error
        for job in (running, queued):
            again = second.get(job.id)
            assert again.state == "failed" and again.phase == "interrupted"
            assert again.error is not None and again.error["type"] == "interrupted"
            assert "restart" in again.error["message"]
            assert again.kind == job.kind and again.created == job.created
            assert record(second, again)["state"] == "failed"
        assert second.get(queued.id).kind == "finetune"
        with pytest.raises(NotFound):
            second.get("job-0000000000000000")
        counts = second.counts()
        assert counts["failed"] == 3 and counts["succeeded"] == 1 and counts["running"] == counts["queued"] == 0
    finally:
        release.set()
        first.stop()
        second.stop()


@pytest.mark.parametrize("bad", ["", "job-", "job-123", "job-0123456789ABCDEF", "../etc/passwd",
                                 "job-0123456789abcdef0", "x" * 1000])
def test_malformed_job_id_is_invalid(jobs: JobManager, bad: str) -> None:
    with pytest.raises(InvalidInput) as info:
        jobs.get(bad)
    assert info.value.status == 422 and info.value.param == "id"
    assert len(info.value.message) < 200
    with pytest.raises(InvalidInput):
        jobs.cancel(bad)


def test_unknown_job_is_not_found(jobs: JobManager) -> None:
    with pytest.raises(NotFound) as info:
        jobs.get("job-0123456789abcdef")
    assert info.value.status == 404 and info.value.param == "id"
    with pytest.raises(NotFound):
        jobs.cancel("job-0123456789abcdef")


def test_queue_limit(jobs: JobManager) -> None:
    started, release, work = blocker()
    running = jobs.submit("extract", work)
    assert started.wait(10)
    waiting = [jobs.submit("extract", lambda ctx: Released()) for _ in range(MAX_WAITING)]
    with pytest.raises(QueueFull) as info:
        jobs.submit("extract", lambda ctx: Released())
    assert info.value.status == 429
    assert str(MAX_WAITING) in info.value.message
    jobs.cancel(waiting[0].id)  # a cancelled job no longer counts
    extra = jobs.submit("extract", lambda ctx: Released())
    release.set()
    for job in [running, *waiting[1:], extra]:
        wait_for(job, {"succeeded"})
    assert jobs.counts() == {"queued": 0, "running": 0, "succeeded": MAX_WAITING + 1, "failed": 0, "cancelled": 1}


def test_unwritable_directory_does_not_break_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = JobManager(tmp_path / "jobs")
    manager.start()
    try:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise OSError("disk full")

        monkeypatch.setattr("app.jobs.manager.tempfile.mkstemp", fail)
        job = wait_for(manager.submit("extract", lambda ctx: Released()), {"succeeded"})
        assert job.result == {"released": True}
    finally:
        monkeypatch.undo()
        manager.stop()


def test_a_graceful_stop_interrupts_jobs_rather_than_cancelling_them(tmp_path: Path) -> None:
    """SIGTERM (docker stop) ends the running and queued jobs as failed/interrupted, like a crash: nobody
    cancelled them, and a client polling after the restart must be told to submit again."""
    directory = tmp_path / "jobs"
    manager = JobManager(directory)
    manager.start()
    started = threading.Event()

    def work(ctx: JobContext) -> BaseModel:
        started.set()
        while True:
            ctx.report("means", 0.1)
            time.sleep(0.002)

    running = manager.submit("extract", work)
    assert started.wait(10)
    ran = threading.Event()
    queued = manager.submit("extract", lambda ctx: ran.set() or Released())
    user_cancelled = manager.submit("extract", lambda ctx: Released())
    manager.cancel(user_cancelled.id)
    manager.stop()
    assert not ran.is_set()
    assert user_cancelled.state == "cancelled"
    for job in (running, queued):
        assert job.state == "failed" and job.error is not None and job.error["type"] == "interrupted", job
    again = JobManager(directory)
    again._recover()
    assert again.get(running.id).error == running.error and again.get(queued.id).state == "failed"
    assert again.get(user_cancelled.id).state == "cancelled"


def test_finished_records_past_the_retention_or_the_cap_are_forgotten(tmp_path: Path) -> None:
    """Job records used to be kept for ever, in memory and on disk."""
    directory = tmp_path / "jobs"
    first = JobManager(directory)
    first.start()
    done = [first.submit("extract", lambda ctx: Made(vector="v", n=1)) for _ in range(3)]
    for job in done:
        wait_for(job, {"succeeded"})
    first.stop()
    old = json.loads((directory / f"{done[0].id}.json").read_text())
    old["updated"] = "2020-01-01T00:00:00.000+00:00"  # ended long ago
    (directory / f"{done[0].id}.json").write_text(json.dumps(old))
    second = JobManager(directory, retention_s=86400, max_records=1)
    second.start()
    try:
        with pytest.raises(NotFound):
            second.get(done[0].id)  # past the retention
        with pytest.raises(NotFound):
            second.get(done[1].id)  # beyond the cap of one: the older of the two recent ones goes
        assert second.get(done[2].id).state == "succeeded"
        assert sorted(path.name for path in directory.glob("job-*.json")) == [f"{done[2].id}.json"]
        newer = second.submit("extract", lambda ctx: Made(vector="w", n=2))
        wait_until(lambda: not (directory / f"{done[2].id}.json").exists(), "the cap to apply after a job ends")
        assert wait_for(newer, {"succeeded"}).state == "succeeded"
    finally:
        second.stop()
