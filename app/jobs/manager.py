"""Jobs run one at a time on a worker thread; their model forwards go through the engine between decode steps.

Each job's record is written to ``jobs_dir`` on every change, so after a restart a job that was queued
or running is reported as failed (never silently dropped); so is one a shutdown stops. Cancelling sets a
flag the job checks at every progress report; a cancelled job saves nothing.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import secrets
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from app.errors import FvsteerError, InvalidInput, NotFound, QueueFull
from app.staging import sweep_staging

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
JOB_ID = re.compile(r"job-[0-9a-f]{16}")
MAX_WAITING = 16


class JobCancelled(Exception):
    """Raised inside a job's work when its cancellation was requested (or the server is stopping)."""


def _interrupted(why: str) -> dict[str, Any]:
    return {"type": "interrupted", "param": None, "code": None,
            "message": f"the server {why} while this job was queued or running; submit it again"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Job:
    id: str
    kind: str
    state: JobState = "queued"
    phase: str = "queued"
    progress: float = 0.0
    detail: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    version: int = 0
    cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "state": self.state, "phase": self.phase,
                "progress": round(self.progress, 4), "detail": self.detail, "result": self.result, "error": self.error,
                "created": self.created, "updated": self.updated}


class JobContext(Protocol):
    """What a job's work sees, wherever it runs: progress reporting that doubles as the cancellation check."""

    @property
    def job_id(self) -> str: ...

    def report(self, phase: str, fraction: float, detail: dict[str, Any] | None = None) -> None: ...

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` once the job's cancellation was asked for (or its process is stopping)."""
        ...

    def stage(self, result: BaseModel) -> None:
        """Keep the result before the vector is saved: a worker that dies between the save and the job's end
        leaves a job that the next worker finishes with this result instead of running it again."""
        ...


class LocalJobContext:
    """A job's context in this process: its record in memory (and in ``jobs_dir``)."""

    def __init__(self, manager: JobManager, job: Job) -> None:
        self._manager = manager
        self._job = job

    @property
    def job_id(self) -> str:
        return self._job.id

    def report(self, phase: str, fraction: float, detail: dict[str, Any] | None = None) -> None:
        """``detail`` carries the phase's own figures (e.g. a training epoch's loss and hold-out accuracy)."""
        self.check_cancelled()
        self._manager._update(self._job, phase=phase, progress=max(0.0, min(1.0, fraction)), detail=detail)

    def check_cancelled(self) -> None:
        if self._job.cancel_requested.is_set() or self._manager._stopping.is_set():
            raise JobCancelled()

    def stage(self, result: BaseModel) -> None:
        """Nothing to keep: in one process the job and the save end together."""


Work = Callable[[JobContext], BaseModel]
"""A job's work: returns its typed result (stored as JSON: records outlive the process)."""


class JobManager:
    def __init__(self, directory: Path, retention_s: float = 7 * 86400.0, max_records: int = 1000) -> None:
        self.directory = directory
        self.retention_s = retention_s  # a finished job's record is deleted this long after it ended ...
        self.max_records = max_records  # ... or sooner, oldest first, when more finished ones than this are kept
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Condition()
        self._queue: queue.Queue[tuple[Job, Work] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        sweep_staging(self.directory)
        self._recover()
        self._evict()
        self._thread = threading.Thread(target=self._worker, name="fvsteer-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the running job at its next step and the queued ones unrun; all end failed/interrupted (not
        cancelled: nobody cancelled them)."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _recover(self) -> None:
        """Load earlier records; those a restart interrupted become failed jobs."""
        for path in sorted(self.directory.glob("job-*.json")):
            try:
                record = json.loads(path.read_text())
                job = Job(**{key: record[key] for key in
                             ("id", "kind", "state", "phase", "progress", "result", "error", "created", "updated")},
                          detail=record.get("detail"))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable job record %s: %s", path, exc)
                continue
            if job.state not in TERMINAL:
                job.state, job.phase = "failed", "interrupted"
                job.error = _interrupted("restarted")
                job.updated = _now()
                self._persist(job)
                log.warning("job %s was interrupted by a restart; marked failed", job.id)
            self._jobs[job.id] = job

    def _evict(self) -> None:
        """Forget finished jobs past the retention, and the oldest beyond ``max_records`` (memory and disk)."""
        cutoff = (datetime.now(UTC) - timedelta(seconds=self.retention_s)).isoformat(timespec="milliseconds")
        with self._lock:
            finished = sorted((job for job in self._jobs.values() if job.state in TERMINAL), key=lambda j: j.updated)
            extra = max(0, len(finished) - self.max_records)
            gone = [job for index, job in enumerate(finished) if index < extra or job.updated < cutoff]
            for job in gone:
                del self._jobs[job.id]
        for job in gone:
            (self.directory / f"{job.id}.json").unlink(missing_ok=True)
        if gone:
            log.info("forgot %d finished jobs (retention %g s, at most %d kept)", len(gone), self.retention_s,
                     self.max_records)

    def submit(self, kind: str, work: Work) -> Job:
        with self._lock:
            waiting = sum(1 for job in self._jobs.values() if job.state == "queued")
            if waiting >= MAX_WAITING:
                raise QueueFull(f"{waiting} jobs are waiting; the limit is {MAX_WAITING}", retry_after_s=30)
            job = Job(id=f"job-{secrets.token_hex(8)}", kind=kind)
            self._jobs[job.id] = job
        self._persist(job)
        self._queue.put((job, work))
        return job

    def get(self, job_id: str) -> Job:
        if not JOB_ID.fullmatch(job_id):
            raise InvalidInput(f"job id {job_id[:40]!r} is malformed (expected job-<16 hex digits>)", param="id")
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", param="id")
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        with self._lock:  # atomic with the worker's queued → running step
            if job.state in TERMINAL:
                return job
            job.cancel_requested.set()
            if job.state == "queued":
                self._update(job, state="cancelled", phase="cancelled")
        return job

    def counts(self) -> dict[str, int]:
        out = {state: 0 for state in ("queued", "running", "succeeded", "failed", "cancelled")}
        for job in list(self._jobs.values()):
            out[job.state] += 1
        return out

    def _update(self, job: Job, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)
            job.updated = _now()
            job.version += 1
            self._lock.notify_all()
        self._persist(job)

    def _persist(self, job: Job) -> None:
        path = self.directory / f"{job.id}.json"
        try:
            handle, staging = tempfile.mkstemp(prefix=job.id, suffix=".tmp", dir=self.directory)
            with os.fdopen(handle, "w") as out:
                json.dump(job.public(), out)
            os.replace(staging, path)
        except OSError as exc:
            log.warning("could not persist job %s: %s", job.id, exc)

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, work = item
            with self._lock:  # a cancel between the check and the update would otherwise be overwritten
                if job.state != "queued":
                    continue
                if self._stopping.is_set():
                    self._update(job, state="failed", phase="interrupted", error=_interrupted("stopped"))
                    continue
                self._update(job, state="running", phase="starting")
            try:
                result = work(LocalJobContext(self, job)).model_dump(mode="json")
            except JobCancelled:
                if job.cancel_requested.is_set():
                    self._update(job, state="cancelled", phase="cancelled")
                    log.info("job %s cancelled", job.id)
                else:
                    self._update(job, state="failed", phase="interrupted", error=_interrupted("stopped"))
                    log.warning("job %s was interrupted by the shutdown; marked failed", job.id)
            except FvsteerError as exc:
                self._update(job, state="failed", phase="failed", error=exc.envelope()["error"])
                log.info("job %s failed: %s", job.id, exc.message)
            except Exception as exc:
                log.exception("job %s failed", job.id)
                self._update(job, state="failed", phase="failed",
                             error={"type": "internal_error", "message": f"{type(exc).__name__}: {exc}",
                                    "param": None, "code": None})
            else:
                self._update(job, state="succeeded", phase="done", progress=1.0, result=result)
            self._evict()
