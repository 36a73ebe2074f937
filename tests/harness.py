"""The app in process, on httpx's ASGI transport, with a fake runtime: route-level tests that need no model
process and no port.

The fake generation backend (:class:`ScriptedBackend`) answers each row at once, or holds rows until the test
releases them; its steering checks go through a real :class:`~app.engine.bank.VectorBank` fed by a real registry,
so refusals and the reported norms are the server's own. Science routes get a runner that refuses to run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import torch

from app.api.app import create_app
from app.cache.head_means import MemoryHeadMeanCache
from app.engine.bank import VectorBank
from app.engine.prompt_encoder import PromptEncoder
from app.engine.requests import BankSteering, GenerationRequest, GenerationResult
from app.engine.stats import EngineStats
from app.errors import InvalidInput, NotReady
from app.jobs.local import LocalJobs
from app.jobs.manager import JobManager
from app.model.handle import ModelHandle
from app.openai.model_ids import ModelIds
from app.openai.serving import OpenAIServing
from app.registry.registry import ModelIdentity, VectorRegistry
from app.runtime import Runtime, Services
from app.services.analogies import AnalogyService
from app.services.completions import CompletionService
from app.services.generation import GenerationService
from app.services.presets import PresetStore
from app.services.scoring import ScoringService
from app.services.vectors import VectorService
from app.settings import Settings
from tests.tiny_models import tiny_tokenizer

T = TypeVar("T")
D_MODEL = 4
N_LAYERS = 3
MODEL = "scripted"


@dataclass
class ScriptedBackend:
    """A generation backend that writes ``"<prompt> [steered]"`` (or ``[plain]``), one character per token."""

    bank: VectorBank
    hold: bool = False  # keep rows until release(): a test decides when they end
    stats: EngineStats = field(default_factory=EngineStats)
    submitted: list[GenerationRequest] = field(default_factory=list)
    failure: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def model_name(self) -> str:
        return MODEL

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def encode(self, prompt: str, max_new_tokens: int) -> list[int]:
        if len(prompt) > 64:
            raise InvalidInput(f"prompt has {len(prompt)} tokens; the limit is 64", param="prompt")
        return [ord(char) for char in prompt]

    def check_steering(self, steering: BankSteering) -> None:
        self.bank.check(steering)

    def submit(self, rows: Sequence[GenerationRequest]) -> None:
        if self.failure is not None:
            raise NotReady(self.failure)
        for row in rows:
            if row.steering is not None:
                self.check_steering(row.steering)
        with self._lock:
            self.submitted.extend(rows)
        for row in rows:
            row.admitted.set_result(None)
        if not self.hold:
            self.release()

    def release(self) -> None:
        """End every row submitted so far (those cancelled as ``cancelled``)."""
        with self._lock:
            rows, self.submitted = self.submitted, []
        for row in rows:
            if row.future.done():
                continue
            receipt = None if row.steering is None else self.bank.resolve(row.steering).receipt
            text = "".join(map(chr, row.prompt_ids)) + (" [steered]" if receipt and receipt.layers else " [plain]")
            text = text[: row.params.max_new_tokens]
            if row.on_text is not None:
                row.on_text(text)
            reason = "cancelled" if row.cancelled else "length"
            row.future.set_result(GenerationResult(text, list(range(len(text))), reason, len(row.prompt_ids),
                                                   (len(rows),), receipt))

    def cancel_all(self) -> None:
        for row in self.submitted:
            row.cancel()

    def requests_in_flight(self) -> int:
        return len(self.submitted)

    def health(self) -> str | None:
        return self.failure


class RefusingRunner:
    """The science seam of a harness: no model, so any forward is a bug in the test."""

    @property
    def handle(self) -> ModelHandle:
        raise AssertionError("this route test reached the HF model")

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        raise AssertionError("this route test ran a model forward")


class HarnessRuntime(Runtime):
    """A runtime whose services exist from the start (no model is loaded)."""

    def __init__(self, settings: Settings, services: Services) -> None:
        super().__init__(settings)
        self._services = services
        self.state = "ready"
        self.model_name = MODEL

    def start(self) -> None: ...

    def stop(self) -> None:
        assert self._services is not None
        self._services.jobs.stop()


@dataclass
class Harness:
    app: Any
    runtime: HarnessRuntime
    backend: ScriptedBackend
    registry: VectorRegistry

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://harness")

    def add_vector(self, name: str, layer: int, values: list[float]) -> None:
        self.registry.add(torch.tensor(values), {"name": name, "layer": str(layer)})


def make_harness(tmp: Path, **settings: Any) -> Harness:
    config = Settings(vectors_dir=tmp / "vectors", cache_dir=tmp / "cache", admin_token="harness-token",
                      **settings)
    registry = VectorRegistry(config.vectors_dir, ModelIdentity(MODEL, MODEL, "fp", D_MODEL, N_LAYERS))
    registry.load()
    bank = VectorBank(N_LAYERS, D_MODEL, torch.device("cpu"), MODEL)
    registry.subscribe(bank.apply)
    backend = ScriptedBackend(bank)
    prompts = PromptEncoder(tiny_tokenizer(), 64, None)
    generation = GenerationService(backend, max_new_tokens=config.max_new_tokens, timeout_s=config.request_timeout_s)
    completions = CompletionService(generation, prompts)
    jobs = LocalJobs(JobManager(tmp / "jobs"), name_exists=lambda name: False)
    runner = RefusingRunner()
    cache = MemoryHeadMeanCache()
    presets = PresetStore(registry, N_LAYERS, MODEL)
    scoring = ScoringService(runner, bank, prompts)
    openai = OpenAIServing(generation, scoring, ModelIds(MODEL, registry, presets), prompts)
    services = Services(backend, runner, registry, completions, VectorService(runner, registry, cache, jobs), cache,
                        jobs, AnalogyService(runner, registry, completions), presets, scoring, openai)
    jobs.start()
    runtime = HarnessRuntime(config, services)
    return Harness(create_app(config, runtime), runtime, backend, registry)
