"""Everything the server holds once the model is up, built off the event loop so /healthz answers at once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from app.bundle import ModelBundle, load_bundle
from app.cache.head_means import MemoryHeadMeanCache, RedisHeadMeanCache
from app.engine.backend import GenerationBackend
from app.engine.bank import VectorBank
from app.engine.engine import Engine
from app.engine.requests import GenerationRequest, SamplingParams
from app.engine.vllm_backend import VllmBackend
from app.engine.vllm_server import ManagedVllm, VllmLaunch
from app.errors import NotReady
from app.jobs.local import LocalJobs
from app.jobs.manager import JobManager
from app.jobs.queue import Jobs
from app.jobs.redis_jobs import RedisJobs
from app.model.runner import ModelRunner
from app.openai.model_ids import ModelIds
from app.openai.serving import OpenAIServing
from app.registry.registry import VectorRegistry
from app.registry.sync import RegistrySync, start_registry_sync
from app.services.analogies import AnalogyService
from app.services.completions import CompletionService
from app.services.generation import GenerationService
from app.services.presets import PresetStore
from app.services.scoring import ScoringService
from app.services.vectors import VectorService
from app.settings import Settings

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed"]
Exit = Callable[[], None]


@dataclass
class Services:
    """``backend`` serves completions (the generation seam); ``runner`` runs the science's forwards on the HF model
    (the science seam). With the ``hf`` backend both are the same :class:`Engine`."""

    backend: GenerationBackend
    runner: ModelRunner
    registry: VectorRegistry
    completions: CompletionService
    vectors: VectorService
    cache: MemoryHeadMeanCache | RedisHeadMeanCache
    jobs: Jobs
    analogies: AnalogyService
    presets: PresetStore
    scoring: ScoringService
    openai: OpenAIServing


class Runtime:
    """Loads the model in a background thread; :meth:`services` raises 503 until it is loaded and warm, and again
    once the server drains for a shutdown or the engine has failed for good.

    ``in_flight`` (requests being answered, kept by the request middleware on the event loop) and the engine's own
    queue tell a drain when it may exit; ``exit_code`` is what the process should end with; ``request_exit`` is set
    by the server so that a fatal engine error can stop it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: State = "loading"
        self.error: str | None = None
        self.model_name: str | None = None
        self.draining = False
        self.in_flight = 0
        self.exit_code = 0
        self.request_exit: Exit = lambda: None
        self._services: Services | None = None
        self._thread: threading.Thread | None = None
        self._engine: Engine | None = None
        self._vllm_backend: VllmBackend | None = None
        self._vllm: ManagedVllm | None = None
        self._registry_sync: RegistrySync | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._load, name="fvsteer-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._services is not None:
            self._services.jobs.stop()
        if self._vllm_backend is not None:
            self._vllm_backend.stop()
        if self._vllm is not None:
            self._vllm.stop()
        if self._engine is not None:
            self._engine.stop()
        if self._registry_sync is not None:
            self._registry_sync.stop()

    def cache_status(self) -> str:
        """``memory``, ``redis``, or ``degraded`` (Redis configured but not answering)."""
        if self._services is None:
            return "unknown"
        cache = self._services.cache
        if isinstance(cache, RedisHeadMeanCache):
            cache.ping()
        return cache.status()

    def registry_status(self) -> str:
        """``local`` (no Redis: one process, or others found by rescans only), ``redis``, or ``degraded`` (Redis
        configured, its subscription lost: changes of other replicas arrive by the periodic rescan)."""
        sync = self._registry_sync
        if sync is None:
            return "local"
        return "degraded" if sync.degraded else "redis"

    def wait_ready(self, timeout: float) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state == "ready"

    def services(self) -> Services:
        """The services for a new request, or 503 saying why there are none."""
        if self.state == "failed":
            raise NotReady(f"the model failed: {self.error}")
        if self.draining:
            raise NotReady("the server is shutting down")
        if self._services is None:
            raise NotReady("the model is loading")
        return self._services

    def loaded_services(self) -> Services | None:
        """The services if the model ever loaded (metrics read them during a drain too)."""
        return self._services

    def begin_drain(self) -> None:
        """SIGTERM: /readyz turns 503 and new requests are refused; those in flight go on."""
        self.draining = True
        log.info("draining: %d requests in flight", self.in_flight)

    def cut_short(self) -> None:
        """The grace period is over: what still runs ends now, answered with the text so far."""
        if self._services is not None:
            self._services.backend.cancel_all()

    def drained(self) -> bool:
        engine_idle = self._services is None or self._services.backend.requests_in_flight() == 0
        return self.in_flight == 0 and engine_idle

    def _engine_failed(self, exc: BaseException) -> None:
        """Called on the engine thread when it stops for good: readiness off, then exit non-zero."""
        self.error = f"engine failed: {exc}"
        self.state = "failed"
        self.exit_code = 1
        self.request_exit()

    def _load(self) -> None:
        started = time.monotonic()
        settings = self.settings
        try:
            bundle = load_bundle(settings)
            adapter = bundle.model.adapter
            bank = VectorBank(adapter.n_layers, adapter.d_model, bundle.loaded.device, bundle.model.name)
            bundle.registry.subscribe(bank.apply)
            self._registry_sync = start_registry_sync(bundle.registry, settings)  # other processes' changes
            engine = Engine(
                bundle.loaded,
                bundle.model,
                bank,
                max_batch=settings.max_batch,
                max_queue=settings.max_queue,
                max_prompt_tokens=settings.max_prompt_tokens,
                queue_timeout_s=settings.queue_timeout_s,
                on_fatal=self._engine_failed,
            )
            engine.start()
            self._engine = engine
            backend: GenerationBackend = engine
            if settings.backend == "vllm" and settings.role != "worker":  # a worker generates nothing
                backend = self._start_vllm(bundle, engine)
            self._warm_up(backend)
            generation = GenerationService(backend, max_new_tokens=settings.max_new_tokens,
                                           timeout_s=settings.request_timeout_s)
            completions = CompletionService(generation, engine.prompts)
            jobs = self._jobs(bundle.registry)
            vectors = VectorService(engine, bundle.registry, bundle.cache, jobs, settings.max_prompt_tokens)
            jobs.start()
        except Exception as exc:  # a server that can serve nothing exits 1, so that its supervisor restarts it
            log.exception("model %s failed to load", settings.model)
            self.error = str(exc)
            self.state = "failed"
            self.exit_code = 1
            self.request_exit()
            return
        self.model_name = bundle.model.name
        analogies = AnalogyService(engine, bundle.registry, completions)
        presets = PresetStore(bundle.registry, adapter.n_layers, bundle.model.name)
        scoring = ScoringService(engine, engine.bank, engine.prompts, settings.request_timeout_s)
        openai = OpenAIServing(generation, scoring, ModelIds(bundle.model.name, bundle.registry, presets),
                               engine.prompts)
        self._services = Services(backend, engine, bundle.registry, completions, vectors, bundle.cache, jobs,
                                  analogies, presets, scoring, openai)
        self.state = "ready"
        log.info("ready in %.1f s: %s on the %s backend, %d vectors", time.monotonic() - started, bundle.model.name,
                 settings.backend, len(bundle.registry.list()))

    def _jobs(self, registry: VectorRegistry) -> Jobs:
        """In this process (role ``all``), or through Redis (``api`` submits, ``worker`` runs)."""
        settings = self.settings
        if settings.role == "all":
            return LocalJobs(JobManager(settings.jobs_dir or settings.cache_dir / "jobs", settings.job_retention_s,
                                        settings.max_job_records),
                             name_exists=lambda name: registry.saved_by(name) is not None)
        if settings.redis_url is None:
            raise RuntimeError(f"FVSTEER_ROLE={settings.role} needs FVSTEER_REDIS_URL (the job queue)")
        return RedisJobs(settings.redis_url, registry.model.slug, heartbeat_s=settings.job_heartbeat_s,
                         run_jobs=settings.role == "worker", saved_by=registry.saved_by,
                         retention_s=settings.job_retention_s)

    def _start_vllm(self, bundle: ModelBundle, engine: Engine) -> VllmBackend:
        """The vLLM backend: a server fvsteer starts (or the one at ``FVSTEER_VLLM_URL``), answering health."""
        settings = self.settings
        url = settings.vllm_url
        served = bundle.model.name
        is_alive: Callable[[], bool] = lambda: True  # noqa: E731 (a server someone else runs: health tells)
        if url is None:
            self._vllm = managed = ManagedVllm(VllmLaunch(
                python=settings.vllm_python, model=bundle.loaded.location, served_name=served,
                bank_dir=bundle.registry.folder, bank_capacity=settings.bank_capacity,
                max_num_seqs=settings.max_batch,
                max_model_len=settings.max_prompt_tokens + settings.max_new_tokens, dtype=bundle.loaded.dtype,
                device=bundle.loaded.device, log_path=settings.cache_dir / "vllm.log",
                memory_utilization=settings.vllm_memory_utilization, eager=settings.vllm_eager,
                port=settings.vllm_port, extra_args=settings.vllm_args,
            ))
            managed.start()
            url, is_alive = managed.url, managed.alive
        backend = VllmBackend(url, served, served, engine.prompts, engine.bank, max_batch=settings.max_batch,
                              max_queue=settings.max_queue, queue_timeout_s=settings.queue_timeout_s,
                              is_alive=is_alive, on_fatal=self._engine_failed, bank_dir=bundle.registry.folder)
        bundle.registry.subscribe(backend.on_registry_change)
        self._vllm_backend = backend
        backend.start()
        backend.wait_ready(settings.vllm_start_timeout_s)
        return backend

    @staticmethod
    def _warm_up(backend: GenerationBackend) -> None:
        """One tiny generation so the first user request doesn't pay for lazy initialisation."""
        request = GenerationRequest(backend.encode("Hello", 2), SamplingParams(max_new_tokens=2))
        backend.submit([request])
        request.future.result(timeout=300)
