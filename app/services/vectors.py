"""Extraction and fine-tuning jobs, evaluation and decoding of vectors: between the HTTP layer and app/fv.

Every model forward goes through the science seam (a :class:`~app.model.runner.ModelRunner`: the HF engine's
thread, interleaved with live completions). Inputs are typed (the request models build them); results are the
pydantic models of :mod:`app.services.results`.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from app.cache.head_means import MemoryHeadMeanCache, RedisHeadMeanCache
from app.errors import Conflict, InvalidInput, NotFound
from app.fv.evaluation import SETTINGS, evaluate
from app.fv.extraction import ExtractionOptions, ExtractionSpec, check_spec, extract
from app.fv.finetuned import FinetuneOptions, InitKind, check_options, make_finetuned
from app.fv.pairs import Pair, dataset_sha256, relation_pairs, split_pairs, validate_pairs
from app.fv.prompts import Template, bos_prefix
from app.fv.vector import decode_vector
from app.jobs.manager import TERMINAL, Job, JobContext, JobManager, Work
from app.model.runner import ModelRunner, Runner, run_here
from app.registry.names import check_name
from app.registry.registry import VectorRegistry
from app.registry.vector_file import StoredVector
from app.services.results import (
    Accuracy,
    DecodedToken,
    DecodedVector,
    EvaluationResult,
    ExtractMetrics,
    ExtractResult,
    FinetuneMetrics,
    FinetuneResult,
    HeadMeansCache,
)


@dataclass(frozen=True)
class PairSource:
    """Exactly one of a shipped relation's name or the user's own pairs."""

    relation: str | None = None
    pairs: list[dict[str, str]] | None = None

    def resolve(self) -> tuple[str, list[Pair]]:
        """(relation label, validated pairs)."""
        if (self.relation is None) == (self.pairs is None):
            raise InvalidInput("give exactly one of 'relation' (a shipped relation) or 'pairs' (a list)",
                               param="relation")
        if self.relation is not None:
            return self.relation, relation_pairs(self.relation)
        return "custom", validate_pairs(self.pairs)


@dataclass(frozen=True)
class ExtractionInput:
    name: str
    source: PairSource
    options: ExtractionOptions = field(default_factory=ExtractionOptions)


@dataclass(frozen=True)
class FinetuneInput:
    name: str
    source: PairSource
    options: FinetuneOptions = field(default_factory=FinetuneOptions)
    init_vector: str | None = None  # with init "vector": the stored vector to start from


@dataclass(frozen=True)
class EvaluationInput:
    source: PairSource
    seed: int = 0
    shots: int = 10


@dataclass
class VectorService:
    runner: ModelRunner
    registry: VectorRegistry
    cache: MemoryHeadMeanCache | RedisHeadMeanCache
    jobs: JobManager
    _pending_names: dict[str, Job | None] = field(default_factory=dict)  # name → the job making it
    _names_lock: threading.Lock = field(default_factory=threading.Lock)

    def start_extraction(self, job: ExtractionInput) -> Job:
        """Validate everything a user can get wrong, then queue the job (202)."""
        name = check_name(job.name)
        label, resolved = job.source.resolve()
        spec = ExtractionSpec.of(resolved, job.options)
        check_spec(spec, self.runner.handle.adapter)

        def work(ctx: JobContext) -> ExtractResult:
            result = extract(self.runner.handle, spec, self.cache, run=self.runner.call,
                             report=lambda phase, fraction: ctx.report(phase, fraction))
            ctx.check_cancelled()
            stored = self.registry.add(result.vector, result.metadata(name, label, spec))
            return ExtractResult(
                vector=stored.name, layer=result.layer, norm=stored.meta.norm,
                heads=[(layer, head, aie) for layer, head, aie in result.heads],
                metrics=ExtractMetrics.model_validate(result.metrics),
                phase_seconds={key: round(value, 3) for key, value in result.phase_seconds.items()},
                head_means_cache=HeadMeansCache(hit=result.cache_hit, backend=self.cache.status()),
            )

        return self._submit("extract", name, work)

    def start_finetune(self, job: FinetuneInput) -> Job:
        """Validate, then queue a fine-tuning job (202); its epochs report loss and hold-out accuracy."""
        name = check_name(job.name)
        label, resolved = job.source.resolve()
        options = job.options
        start = self._init_vector(options.init, job.init_vector)
        if start is not None:  # continue training where the vector was trained, unless told otherwise
            options = dataclasses.replace(options, init_vector=start.vector, init_name=start.name,
                                          layer=start.layer if options.layer is None else options.layer)
        adapter = self.runner.handle.adapter
        check_options(options, adapter.n_layers, adapter.d_model)

        def work(ctx: JobContext) -> FinetuneResult:
            made = make_finetuned(self.runner.handle, resolved, options, self.cache, run=self.runner.call,
                                  report=ctx.report)
            ctx.check_cancelled()
            stored = self.registry.add(made.vector, made.metadata(name, label, resolved, options))
            cache = None if made.cache_hit is None else HeadMeansCache(hit=made.cache_hit,
                                                                        backend=self.cache.status())
            return FinetuneResult(vector=stored.name, layer=made.layer, norm=stored.meta.norm,
                                  metrics=FinetuneMetrics.model_validate(made.metrics(options)),
                                  head_means_cache=cache)

        return self._submit("finetune", name, work)

    def _init_vector(self, init: InitKind, name: str | None) -> StoredVector | None:
        """The stored vector to start from; one made for another model is refused with the reason."""
        if (init == "vector") != (name is not None):
            raise InvalidInput("give init_vector (a stored vector's name) exactly when init is 'vector'",
                               param="init_vector")
        if name is None:
            return None
        check_name(name, param="init_vector")
        try:
            return self.registry.get(name, param="init_vector")
        except NotFound:
            refusal = self.registry.refusal(name)
            if refusal is not None:
                raise InvalidInput(f"init_vector {name!r} cannot be used: {refusal}", param="init_vector") from None
            raise

    def _submit(self, kind: str, name: str, work: Work) -> Job:
        """Queue a job that saves a vector named ``name``, holding the name until the job ends."""
        self._reserve(name)

        def guarded(ctx: JobContext) -> BaseModel:
            try:
                return work(ctx)
            finally:
                self._release(name)

        try:
            job = self.jobs.submit(kind, guarded)
        except BaseException:
            self._release(name)
            raise
        with self._names_lock:
            if name in self._pending_names:  # (a fast job may have released it already)
                self._pending_names[name] = job
        return job

    def _reserve(self, name: str) -> None:
        """Claim a vector name for a job until it ends, so a second job for the same name is a 409 at once."""
        with self._names_lock:
            holder = self._pending_names.get(name)
            if holder is not None and holder.state in TERMINAL:  # cancelled while queued: its work never ran
                del self._pending_names[name]
            taken = name in self._pending_names or any(stored.name == name for stored in self.registry.list())
            if taken:
                raise Conflict(f"a vector named {name!r} exists or is being made; pick another name", param="name")
            self._pending_names[name] = None

    def _release(self, name: str) -> None:
        with self._names_lock:
            self._pending_names.pop(name, None)

    def evaluate(self, name: str, spec: EvaluationInput, run: Runner[Any] = run_here) -> EvaluationResult:
        """Todd et al.'s five-way evaluation of a stored vector on held-out pairs.

        When the pairs are the vector's own dataset, its test split (same seed) is evaluated with
        demonstrations from its train split; otherwise every pair is a test item and its demonstrations
        come from the other pairs. ``run`` sends each forward to the model (:func:`~app.model.runner.offload`'s).
        """
        stored = self.registry.get(check_name(name))
        label, resolved = spec.source.resolve()
        if stored.meta.dataset_sha256 == dataset_sha256(resolved):
            split = split_pairs(resolved, int(stored.meta.metrics.get("seed", spec.seed)))
            demo_pool, test = split.train, split.test
        else:
            demo_pool, test = resolved, resolved
        handle = self.runner.handle
        adapter, tokenizer = handle.adapter, handle.tokenizer
        result = evaluate(
            adapter, tokenizer, Template(), bos_prefix(tokenizer, adapter.adds_bos), demo_pool, test,
            (stored.layer, stored.vector), seed=spec.seed, shots=spec.shots, run=run,
        )
        return EvaluationResult(
            vector=name, relation=label, layer=stored.layer, n=result.n, n_dropped=result.n_dropped,
            **{setting: Accuracy.model_validate(getattr(result, setting)) for setting in SETTINGS},
        )

    def decode(self, name: str, k: int, run: Runner[Any] = run_here) -> DecodedVector:
        """Logit lens of a stored vector; ``run`` as for :meth:`evaluate`."""
        stored = self.registry.get(check_name(name))
        handle, vector = self.runner.handle, stored.vector
        top = run(lambda: decode_vector(handle.adapter, handle.tokenizer, vector, k))
        assert isinstance(top, list)
        return DecodedVector(name=name, layer=stored.layer,
                             tokens=[DecodedToken(token=token, prob=prob) for token, prob in top])
