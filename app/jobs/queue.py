"""What the services need from a job queue, whichever runs the jobs: this process (:mod:`app.jobs.local`) or
workers that take them from Redis (:mod:`app.jobs.redis_jobs`).

A job crosses the queue as data — its kind, the vector name it will save, and a JSON payload — never as a closure,
so that any worker process can run it: the process that runs it turns the payload back into work with the
:data:`WorkFactory` the vector service binds (:meth:`~app.services.vectors.VectorService.work_for`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from app.jobs.manager import Job, Work

Payload = dict[str, Any]
WorkFactory = Callable[[str, Payload], Work]
"""``(kind, payload) → work``, validated again where it runs (a worker may see another registry state)."""


class Jobs(Protocol):
    def bind(self, factory: WorkFactory) -> None:
        """How this process turns a job's payload into work (needed where jobs run)."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def submit(self, kind: str, name: str, payload: Payload) -> Job:
        """Queue a job that saves a vector named ``name``; 409 when a vector or a live job has that name, 429 when
        too many jobs wait."""
        ...

    def get(self, job_id: str) -> Job:
        """The job as it is now (404 unknown, 422 malformed id)."""
        ...

    def cancel(self, job_id: str) -> Job:
        """Ask the job to stop (a queued job is cancelled at once); a finished job is returned unchanged."""
        ...

    def counts(self) -> dict[str, int]:
        """Jobs by state (metrics; ``queued`` is the queue depth an autoscaler reads)."""
        ...
