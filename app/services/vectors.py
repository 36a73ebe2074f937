"""Extraction, fine-tuning and contrastive jobs, evaluation and decoding of vectors: between the HTTP layer and app/fv.

Every model forward goes through the science seam (a :class:`~app.model.runner.ModelRunner`: the HF engine's
thread, interleaved with live completions). Inputs are typed (the request models build them); results are the
pydantic models of :mod:`app.services.results`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from app.cache.head_means import MemoryHeadMeanCache, RedisHeadMeanCache
from app.errors import InvalidInput, NotFound
from app.fv.contrast import ContrastOptions, contrast_vectors
from app.fv.evaluation import SETTINGS, evaluate
from app.fv.extraction import ExtractionSpec, check_prompt_lengths, check_spec, extract
from app.fv.finetuned import check_options, default_layer, init_spec, make_finetuned
from app.fv.options import InitKind
from app.fv.pairs import dataset_sha256, split_pairs
from app.fv.prompts import Template, bos_prefix, check_prompt_bound, icl_prompt_bound
from app.fv.vector import decode_vector
from app.jobs.manager import Job, JobContext, Work
from app.jobs.queue import Jobs, Payload
from app.model.runner import ModelRunner, Runner, run_here
from app.registry.names import check_name
from app.registry.registry import VectorRegistry
from app.registry.vector_file import StoredVector, vector_norm
from app.services.inputs import ContrastInput, EvaluationInput, ExtractionInput, FinetuneInput
from app.services.results import (
    Accuracy,
    ContrastResult,
    DecodedToken,
    DecodedVector,
    EvaluationResult,
    ExtractMetrics,
    ExtractResult,
    FinetuneMetrics,
    FinetuneResult,
    HeadMeansCache,
    ScoringCache,
)


def _payload(job: ExtractionInput | FinetuneInput) -> Payload:
    """A job's input as JSON-able data (a fine-tune's options before any start vector is attached)."""
    options = {key: value for key, value in dataclasses.asdict(job.options).items()
               if key not in ("init_vector", "init_name")}
    payload: Payload = {"name": job.name, "source": dataclasses.asdict(job.source), "options": options}
    if isinstance(job, FinetuneInput):
        payload["init_vector"] = job.init_vector
    return payload


def _stored_norm(vector: Tensor) -> float:
    """The norm as the registry stores it (six significant digits), so a result reads the same as the file."""
    return float(f"{vector_norm(vector):.6g}")


@dataclass
class VectorService:
    """Jobs go to ``jobs`` as data (:meth:`payload` of the input); whichever process runs one turns it back into work
    with :meth:`work_for`, so the same code runs in this process or on a worker."""

    runner: ModelRunner
    registry: VectorRegistry
    cache: MemoryHeadMeanCache | RedisHeadMeanCache
    jobs: Jobs
    # In-context prompts a job or evaluation builds obey the completions' prompt limit (None: not checked).
    max_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        self.jobs.bind(self.work_for)

    def start_extraction(self, job: ExtractionInput) -> Job:
        """Validate everything a user can get wrong, then queue the job (202)."""
        self._extraction(job)
        self.registry.check_room()  # before the work: a job whose vector cannot be saved is refused now
        return self.jobs.submit("extract", job.name, _payload(job))

    def start_finetune(self, job: FinetuneInput) -> Job:
        """Validate, then queue a fine-tuning job (202); its epochs report loss and hold-out accuracy."""
        self._finetune(job)
        self.registry.check_room()
        return self.jobs.submit("finetune", job.name, _payload(job))

    def start_contrast(self, job: ContrastInput) -> Job:
        """Validate, then queue a contrastive job (202): two forwards per pair, progress per batch."""
        self._contrast(job)
        self.registry.check_room()
        return self.jobs.submit("contrast", job.name, job.payload())

    def work_for(self, kind: str, payload: Payload) -> Work:
        """A queued job's work, validated again here (the registry may have changed since it was queued)."""
        kinds: dict[str, Callable[[Payload], Work]] = {
            "extract": lambda data: self._extraction(ExtractionInput.from_payload(data)),
            "finetune": lambda data: self._finetune(FinetuneInput.from_payload(data)),
            "contrast": lambda data: self._contrast(ContrastInput.from_payload(data)),
        }
        if kind not in kinds:
            raise InvalidInput(f"unknown job kind {kind!r}", param="kind")
        return kinds[kind](payload)

    def _contrast(self, job: ContrastInput) -> Work:
        name = check_name(job.name)
        handle = self.runner.handle
        adapter, tokenizer = handle.adapter, handle.tokenizer
        if not 0 <= job.layer < adapter.n_layers:
            raise InvalidInput(f"layer {job.layer} is outside the model's 0..{adapter.n_layers - 1}", param="layer")
        if self.max_prompt_tokens is not None:
            for side, prompts in (("positive", job.positives), ("negative", job.negatives)):
                for index, prompt in enumerate(prompts):
                    if len(tokenizer(prompt).input_ids) > self.max_prompt_tokens:
                        raise InvalidInput(f"pair {index}'s {side} prompt has more than {self.max_prompt_tokens} "
                                           "tokens (FVSTEER_MAX_PROMPT_TOKENS)", param=f"pairs.{index}.{side}")
        options = ContrastOptions((job.layer,), job.method, job.normalize)

        def work(ctx: JobContext) -> ContrastResult:
            started = time.perf_counter()
            made = contrast_vectors(adapter, tokenizer, job.positives, job.negatives, options, run=self.runner.call,
                                    on_batch=lambda done, total: ctx.report("activations", done / total))
            ctx.check_cancelled()
            vector, separation = made.vectors[job.layer], made.separation[job.layer]
            outcome = ContrastResult(vector=name, layer=job.layer, norm=_stored_norm(vector), method=job.method,
                                     normalize=job.normalize, n_pairs=len(job.positives), separation=separation,
                                     seconds=round(time.perf_counter() - started, 3))
            ctx.stage(outcome)
            pairs = [{"positive": pos, "negative": neg} for pos, neg in zip(job.positives, job.negatives, strict=True)]
            metrics = {"method": job.method, "normalize": job.normalize, "separation": separation}
            self.registry.add(vector, {
                "name": name, "layer": str(job.layer), "relation": job.relation or name, "method": "contrast",
                "n_pairs": str(len(pairs)), "metrics": json.dumps(metrics), "job": ctx.job_id,
                "dataset_sha256": hashlib.sha256(json.dumps(pairs, sort_keys=True).encode()).hexdigest(),
            })
            return outcome

        return work

    def _extraction(self, job: ExtractionInput) -> Work:
        name = check_name(job.name)
        label, resolved = job.source.resolve()
        spec = ExtractionSpec.of(resolved, job.options)
        check_spec(spec, self.runner.handle.adapter)
        if self.max_prompt_tokens is not None:
            check_prompt_lengths(spec, self.runner.handle, self.max_prompt_tokens)

        def work(ctx: JobContext) -> ExtractResult:
            result = extract(self.runner.handle, spec, self.cache, run=self.runner.call,
                             report=lambda phase, fraction: ctx.report(phase, fraction))
            ctx.check_cancelled()
            outcome = ExtractResult(
                vector=name, layer=result.layer, norm=_stored_norm(result.vector),
                heads=[(layer, head, aie) for layer, head, aie in result.heads],
                metrics=ExtractMetrics.model_validate(result.metrics),
                phase_seconds={key: round(value, 3) for key, value in result.phase_seconds.items()},
                head_means_cache=HeadMeansCache(hit=result.cache_hit, backend=self.cache.status()),
                scoring_cache=ScoringCache(aie_hit=result.aie_cache_hit, layer_sweep_hit=result.sweep_cache_hit,
                                           backend=self.cache.status()),
            )
            ctx.stage(outcome)
            self.registry.add(result.vector, {**result.metadata(name, label, spec), "job": ctx.job_id})
            return outcome

        return work

    def _finetune(self, job: FinetuneInput) -> Work:
        name = check_name(job.name)
        label, resolved = job.source.resolve()
        options = job.options
        start = self._init_vector(options.init, job.init_vector)
        if start is not None:  # continue training where the vector was trained, unless told otherwise
            options = dataclasses.replace(options, init_vector=start.vector, init_name=start.name,
                                          layer=start.layer if options.layer is None else options.layer)
        adapter = self.runner.handle.adapter
        check_options(options, adapter.n_layers, adapter.d_model)
        if options.init == "mediation" and self.max_prompt_tokens is not None:
            layer = default_layer(adapter.n_layers) if options.layer is None else options.layer
            check_prompt_lengths(init_spec(resolved, options, layer), self.runner.handle, self.max_prompt_tokens)

        def work(ctx: JobContext) -> FinetuneResult:
            made = make_finetuned(self.runner.handle, resolved, options, self.cache, run=self.runner.call,
                                  report=ctx.report)
            ctx.check_cancelled()
            cache = None if made.cache_hit is None else HeadMeansCache(hit=made.cache_hit,
                                                                        backend=self.cache.status())
            outcome = FinetuneResult(vector=name, layer=made.layer, norm=_stored_norm(made.vector),
                                     metrics=FinetuneMetrics.model_validate(made.metrics(options)),
                                     head_means_cache=cache)
            ctx.stage(outcome)
            self.registry.add(made.vector, {**made.metadata(name, label, resolved, options), "job": ctx.job_id})
            return outcome

        return work

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
        if self.max_prompt_tokens is not None:
            check_prompt_bound(icl_prompt_bound(tokenizer, Template(), bos_prefix(tokenizer, adapter.adds_bos),
                                                demo_pool, test, spec.shots), self.max_prompt_tokens, spec.shots)
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
