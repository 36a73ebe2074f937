"""Jobs through Redis, for several processes (``FVSTEER_ROLE=api|worker``): any api replica submits, shows, streams
and cancels a job; a worker process runs it.

The queue is dramatiq's Redis broker (an established library: messages acknowledged only when the actor returns,
workers heartbeating; a worker that stops heartbeating for ``heartbeat_s`` has its unacknowledged message put back
for another worker — at-least-once delivery). Each worker takes one job at a time (prefetch 1). Job state lives
beside the queue in one Redis hash per job (the record the API shows, the payload, the cancel flag, a version that
changes with every update), so every replica answers the same; vector names are held by the job that will save
them (``SET NX``), so a second job for a name is 409 on every replica.

At-least-once must not mean twice: a job already finished is skipped; a worker saves a vector only after staging
the job's result in its record, so a worker that died between the save and the job's end leaves a job the next
worker finishes with the staged result (it sees the vector saved with the job's id) instead of running it again;
names are created exclusively on the shared registry, so nothing is ever saved twice.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from pydantic import BaseModel

from app.errors import Conflict, FvsteerError, InvalidInput, NotFound, NotReady, QueueFull
from app.jobs.manager import JOB_ID, MAX_WAITING, TERMINAL, Job, JobCancelled, _now
from app.jobs.queue import Payload, WorkFactory

log = logging.getLogger(__name__)
T = TypeVar("T")

QUEUE = "jobs"
ACTOR = "fvsteer_run_job"
PATIENCE_S = 60.0  # how long a running job waits for Redis to come back before it fails
NAME_HOLD_S = 7 * 24 * 3600  # a name stays held at most this long if its job's end were never recorded
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
RECORD_FIELDS = ("id", "kind", "state", "phase", "progress", "detail", "result", "error", "created", "updated")


class RedisJobs:
    """Implements :class:`~app.jobs.queue.Jobs`. ``run_jobs``: this process is a worker (it takes jobs)."""

    def __init__(self, url: str, namespace: str, *, heartbeat_s: float, run_jobs: bool,
                 saved_by: Callable[[str], str | None], retention_s: float = 7 * 86400.0) -> None:
        self.prefix = f"fvsteer:{namespace}"
        self.retention_s = retention_s  # a finished job's record expires this long after it ended
        self.run_jobs = run_jobs
        self.saved_by = saved_by  # vector name → the id of the job that saved it ("" if none did), None: no vector
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, health_check_interval=10)
        # No middleware: a job that fails is recorded failed, never retried; only a dead worker's job is run again.
        self.broker = RedisBroker(  # type: ignore[no-untyped-call]
            url=url, namespace=f"{self.prefix}:queue", middleware=[], heartbeat_timeout=int(heartbeat_s * 1000),
            maintenance_chance=1_000_000,  # every fetch looks for dead workers' messages (cheap at this volume)
        )
        self.actor = dramatiq.actor(broker=self.broker, actor_name=ACTOR, queue_name=QUEUE)(self._run)
        self._factory: WorkFactory | None = None
        self._worker: dramatiq.Worker | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def bind(self, factory: WorkFactory) -> None:
        self._factory = factory

    def start(self) -> None:
        if self.run_jobs:
            self._worker = dramatiq.Worker(self.broker, queues={QUEUE}, worker_threads=1, worker_timeout=500)
            self._worker.queue_prefetch = 1  # one job at a time, and none held back from an idle worker
            self._worker.start()

    def stop(self) -> None:
        """A running job stops at its next step and goes back to the queue for another worker."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.stop(timeout=30_000)
        self.broker.close()

    # ------------------------------------------------------------------ the API side
    def submit(self, kind: str, name: str, payload: Payload) -> Job:
        with self._answering():
            if self.counts()["queued"] >= MAX_WAITING:
                raise QueueFull(f"{MAX_WAITING} jobs are waiting; the limit is {MAX_WAITING}", retry_after_s=30)
            job = Job(id=f"job-{secrets.token_hex(8)}", kind=kind)
            if not self._redis.set(self._name_key(name), job.id, nx=True, ex=NAME_HOLD_S):
                raise Conflict(f"a vector named {name!r} is being made; pick another name", param="name")
            try:
                if self.saved_by(name) is not None:
                    raise Conflict(f"a vector named {name!r} exists; pick another name", param="name")
                pipe = self._redis.pipeline()
                pipe.hset(self._key(job.id), mapping={"record": json.dumps(job.public()), "kind": kind, "name": name,
                                                       "payload": json.dumps(payload), "cancel": "0", "version": "0"})
                pipe.sadd(self._state_key(job.state), job.id)
                pipe.execute()
            except BaseException:
                self._redis.delete(self._name_key(name))
                raise
            self.actor.send(job.id)
        return job

    def get(self, job_id: str) -> Job:
        if not JOB_ID.fullmatch(job_id):
            raise InvalidInput(f"job id {job_id[:40]!r} is malformed (expected job-<16 hex digits>)", param="id")
        with self._answering():
            record, version = _texts(self._redis.hmget(self._key(job_id), "record", "version"))
        if record is None:
            raise NotFound(f"no job {job_id}", param="id")
        return _job(record, version)

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state in TERMINAL:
            return job
        with self._answering():
            cancelled = self._transition(job_id, {"queued"}, state="cancelled", phase="cancelled")
            if cancelled is None:  # running: its worker stops at the next step
                self._redis.hset(self._key(job_id), "cancel", "1")
            else:  # it never ran: its name is free at once
                self._release_name(job_id)
        return self.get(job_id)

    def counts(self) -> dict[str, int]:
        """Jobs per state: the sizes of the per-state id sets every transition keeps (O(1), whatever the history)."""
        with self._answering():
            pipe = self._redis.pipeline()
            for state in STATES:
                pipe.scard(self._state_key(state))
            sizes = pipe.execute()
        return {state: int(size) for state, size in zip(STATES, sizes, strict=True)}

    # ------------------------------------------------------------------ the worker side
    def _run(self, job_id: str) -> None:
        """The dramatiq actor: run one job here, or finish one a dead worker saved but did not end."""
        fields = _texts(self._redis.hmget(self._key(job_id), "record", "kind", "name", "payload", "staged"))
        record, kind, name, payload, staged = fields
        if record is None or kind is None or name is None or payload is None or \
                json.loads(record)["state"] in TERMINAL:
            return
        if staged is not None and self.saved_by(name) == job_id:
            log.info("job %s: its vector was saved by a worker that died before the job's end; finishing it", job_id)
            self._end(job_id, state="succeeded", phase="done", progress=1.0, result=json.loads(staged))
            return
        if self._transition(job_id, {"queued", "running"}, state="running", phase="starting", error=None) is None:
            return
        assert self._factory is not None, "bind() a work factory before running jobs"
        context = RedisJobContext(self, job_id)
        try:
            result = self._factory(kind, json.loads(payload))(context).model_dump(mode="json")
        except JobCancelled:
            if self._redis.hget(self._key(job_id), "cancel") == "1":
                self._end(job_id, state="cancelled", phase="cancelled")
                log.info("job %s cancelled", job_id)
            else:  # this worker is stopping: another one takes the job from the start
                self._transition(job_id, {"running"}, state="queued", phase="queued")
                self.actor.send(job_id)
                log.warning("job %s: this worker is stopping; queued again for another", job_id)
        except FvsteerError as exc:
            self._end(job_id, state="failed", phase="failed", error=exc.envelope()["error"])
            log.info("job %s failed: %s", job_id, exc.message)
        except Exception as exc:
            log.exception("job %s failed", job_id)
            self._end(job_id, state="failed", phase="failed",
                      error={"type": "internal_error", "message": f"{type(exc).__name__}: {exc}", "param": None,
                             "code": None})
        else:
            self._end(job_id, state="succeeded", phase="done", progress=1.0, result=result)

    def _end(self, job_id: str, **changes: Any) -> None:
        ended = _patiently(lambda: self._transition(job_id, {"queued", "running"}, **changes))
        _patiently(lambda: self._release_name(job_id))
        if ended is not None:
            _patiently(lambda: self._prune(ended.state))

    def _prune(self, state: str, sample: int = 16) -> None:
        """Drop ids of expired records from a finished state's set: a few per job that ends, so the sets (and the
        counts read from them) follow the records without a scan."""
        key = self._state_key(state)
        ids = self._redis.srandmember(key, sample)
        if not ids:
            return
        pipe = self._redis.pipeline()
        for job_id in ids:
            pipe.exists(self._key(str(job_id)))
        gone = [job_id for job_id, exists in zip(ids, pipe.execute(), strict=True)
                if not exists]
        if gone:
            self._redis.srem(key, *gone)

    def _release_name(self, job_id: str) -> None:
        name = self._redis.hget(self._key(job_id), "name")
        if name is not None and self._redis.get(self._name_key(str(name))) == job_id:
            self._redis.delete(self._name_key(str(name)))

    def update(self, job_id: str, **changes: Any) -> None:
        """Progress of a running job (phase, fraction, detail)."""
        _patiently(lambda: self._transition(job_id, {"running"}, **changes))

    def cancel_requested(self, job_id: str) -> bool:
        return self._stopping.is_set() or _patiently(lambda: self._redis.hget(self._key(job_id), "cancel")) == "1"

    def stage(self, job_id: str, result: BaseModel) -> None:
        _patiently(lambda: self._redis.hset(self._key(job_id), "staged", result.model_dump_json()))

    # ------------------------------------------------------------------ records
    def _transition(self, job_id: str, allowed: set[str], **changes: Any) -> Job | None:
        """Change the record if its state is one of ``allowed`` (atomically: WATCH/MULTI), else None."""
        key = self._key(job_id)
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    record, version = _texts(pipe.hmget(key, "record", "version"))
                    if record is None:
                        return None
                    job = _job(record, version)
                    if job.state not in allowed:
                        return None
                    before = job.state
                    for field_name, value in changes.items():
                        setattr(job, field_name, value)
                    job.updated, job.version = _now(), job.version + 1
                    pipe.multi()
                    pipe.hset(key, mapping={"record": json.dumps(job.public()), "version": str(job.version)})
                    if job.state != before:  # the state sets move with the record, in the same transaction
                        pipe.smove(self._state_key(before), self._state_key(job.state), job_id)
                    if job.state in TERMINAL:  # finished: the record expires (its id leaves the set, see _prune)
                        pipe.expire(key, max(1, int(self.retention_s)))
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _name_key(self, name: str) -> str:
        return f"{self.prefix}:name:{name}"

    def _state_key(self, state: str) -> str:
        return f"{self.prefix}:state:{state}"

    @staticmethod
    @contextmanager
    def _answering() -> Iterator[None]:
        """Redis errors on the API side become 503 (the envelope), not 500."""
        try:
            yield
        except redis.RedisError as exc:
            raise NotReady(f"the job queue (Redis) is not answering: {exc}") from exc


class RedisJobContext:
    """A running job's context on a worker: its record in Redis."""

    def __init__(self, jobs: RedisJobs, job_id: str) -> None:
        self._jobs = jobs
        self._job_id = job_id

    @property
    def job_id(self) -> str:
        return self._job_id

    def report(self, phase: str, fraction: float, detail: dict[str, Any] | None = None) -> None:
        self.check_cancelled()
        self._jobs.update(self._job_id, phase=phase, progress=max(0.0, min(1.0, fraction)), detail=detail)

    def check_cancelled(self) -> None:
        if self._jobs.cancel_requested(self._job_id):
            raise JobCancelled()

    def stage(self, result: BaseModel) -> None:
        self._jobs.stage(self._job_id, result)


def _patiently(call: Callable[[], T]) -> T:
    """A running job's Redis write, retried through a short outage (a Redis restart) instead of failing the job."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            return call()
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _texts(values: Any) -> list[str | None]:
    """Redis replies as text (the client decodes; this tells the type checker so)."""
    return [None if value is None else str(value) for value in values]


def _job(record: str, version: str | None) -> Job:
    data = json.loads(record)
    return Job(**{key: data[key] for key in RECORD_FIELDS}, version=int(version or 0))

