"""Jobs run in this process (``FVSTEER_ROLE=all``, no Redis needed): the :class:`JobManager`'s worker thread, with
vector names held by the jobs that will save them."""

from __future__ import annotations

import threading
from collections.abc import Callable

from pydantic import BaseModel

from app.errors import Conflict
from app.jobs.manager import TERMINAL, Job, JobContext, JobManager
from app.jobs.queue import Payload, WorkFactory


class LocalJobs:
    """Implements :class:`~app.jobs.queue.Jobs` over an in-process :class:`JobManager`."""

    def __init__(self, manager: JobManager, name_exists: Callable[[str], bool]) -> None:
        self.manager = manager
        self.name_exists = name_exists
        self._factory: WorkFactory | None = None
        self._pending_names: dict[str, Job | None] = {}  # name → the job making it
        self._lock = threading.Lock()

    def bind(self, factory: WorkFactory) -> None:
        self._factory = factory

    def start(self) -> None:
        self.manager.start()

    def stop(self) -> None:
        self.manager.stop()

    def submit(self, kind: str, name: str, payload: Payload) -> Job:
        assert self._factory is not None, "bind() a work factory before submitting jobs"
        factory = self._factory
        self._reserve(name)

        def guarded(ctx: JobContext) -> BaseModel:
            try:
                return factory(kind, payload)(ctx)
            finally:
                self._release(name)

        try:
            job = self.manager.submit(kind, guarded)
        except BaseException:
            self._release(name)
            raise
        with self._lock:
            if name in self._pending_names:  # (a fast job may have released it already)
                self._pending_names[name] = job
        return job

    def get(self, job_id: str) -> Job:
        return self.manager.get(job_id)

    def cancel(self, job_id: str) -> Job:
        return self.manager.cancel(job_id)

    def counts(self) -> dict[str, int]:
        return self.manager.counts()

    def _reserve(self, name: str) -> None:
        """Claim a vector name for a job until it ends, so a second job for the same name is a 409 at once."""
        with self._lock:
            holder = self._pending_names.get(name)
            if holder is not None and holder.state in TERMINAL:  # cancelled while queued: its work never ran
                del self._pending_names[name]
            if name in self._pending_names or self.name_exists(name):
                raise Conflict(f"a vector named {name!r} exists or is being made; pick another name", param="name")
            self._pending_names[name] = None

    def _release(self, name: str) -> None:
        with self._lock:
            self._pending_names.pop(name, None)
