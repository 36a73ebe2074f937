"""Extraction jobs, evaluation and decoding of vectors: the seam between the HTTP layer and app/fv.

Every model forward runs on the engine thread (``engine.call``), interleaved with live completions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from app.cache.head_means import MemoryHeadMeanCache, RedisHeadMeanCache
from app.engine.engine import Engine
from app.errors import Conflict, InvalidInput, NotFound
from app.fv.evaluation import evaluate
from app.fv.extraction import ExtractionSpec, ModelHandle, check_spec, extract
from app.fv.finetuned import FinetuneOptions, InitKind, check_options, make_finetuned
from app.fv.forward import Runner
from app.fv.pairs import Pair, dataset_sha256, relation_pairs, split_pairs, validate_pairs
from app.fv.prompts import Template, bos_prefix
from app.fv.vector import decode_vector
from app.jobs.manager import TERMINAL, Job, JobContext, JobManager, Work
from app.registry.names import check_name
from app.registry.registry import VectorRegistry
from app.registry.vector_file import StoredVector


def resolve_pairs(relation: str | None, pairs: list[dict[str, Any]] | None) -> tuple[str, list[Pair]]:
    """Exactly one of a shipped relation name or inline pairs → (relation label, pairs)."""
    if (relation is None) == (pairs is None):
        raise InvalidInput("give exactly one of 'relation' (a shipped relation) or 'pairs' (a list)", param="relation")
    if relation is not None:
        return relation, relation_pairs(relation)
    return "custom", validate_pairs(pairs)


@dataclass
class VectorService:
    model: ModelHandle
    engine: Engine
    registry: VectorRegistry
    cache: MemoryHeadMeanCache | RedisHeadMeanCache
    jobs: JobManager
    _pending_names: dict[str, Job | None] = field(default_factory=dict)  # name → the job making it
    _names_lock: threading.Lock = field(default_factory=threading.Lock)

    def start_extraction(
        self,
        *,
        name: str,
        relation: str | None,
        pairs: list[dict[str, Any]] | None,
        n_prompts: int,
        n_trials: int,
        n_heads: int,
        layer: int | Literal["auto"],
        seed: int,
    ) -> dict[str, Any]:
        """Validate everything a user can get wrong, then queue the job (202)."""
        check_name(name)
        label, resolved = resolve_pairs(relation, pairs)
        spec = ExtractionSpec(resolved, n_prompts=n_prompts, n_trials=n_trials, n_heads=n_heads, layer=layer,
                              seed=seed)
        check_spec(spec, self.model.adapter)

        def work(ctx: JobContext) -> dict[str, Any]:
            result = extract(self.model, spec, self.cache, run=self.engine.call,
                             report=lambda phase, fraction: ctx.report(phase, fraction))
            ctx.check_cancelled()
            stored = self.registry.add(result.vector, result.metadata(name, label, spec))
            return {
                "vector": stored.name,
                "layer": result.layer,
                "norm": float(stored.metadata["norm"]),
                "heads": [[layer, head, aie] for layer, head, aie in result.heads],
                "metrics": result.metrics,
                "phase_seconds": {key: round(value, 3) for key, value in result.phase_seconds.items()},
                "head_means_cache": {"hit": result.cache_hit, "backend": self.cache.status()},
            }

        return self._submit("extract", name, work)

    def start_finetune(
        self,
        *,
        name: str,
        relation: str | None,
        pairs: list[dict[str, Any]] | None,
        init: InitKind,
        init_vector: str | None,
        layer: int | None,
        epochs: int,
        lr: float,
        l2: float,
        seed: int,
    ) -> dict[str, Any]:
        """Validate, then queue a fine-tuning job (202); its epochs report loss and hold-out accuracy."""
        check_name(name)
        label, resolved = resolve_pairs(relation, pairs)
        start = self._init_vector(init, init_vector)
        if start is not None and layer is None:  # continue training where the vector was trained
            layer = start.layer
        options = FinetuneOptions(init=init, init_vector=None if start is None else start.vector,
                                  init_name=init_vector, layer=layer, epochs=epochs,
                                  lr=lr, l2=l2, seed=seed)
        check_options(options, self.model.adapter.n_layers, self.model.adapter.d_model)

        def work(ctx: JobContext) -> dict[str, Any]:
            made = make_finetuned(self.model, resolved, options, self.cache, run=self.engine.call, report=ctx.report)
            ctx.check_cancelled()
            stored = self.registry.add(made.vector, made.metadata(name, label, resolved, options))
            return {
                "vector": stored.name,
                "layer": made.layer,
                "norm": float(stored.metadata["norm"]),
                "metrics": made.metrics(options),
                "head_means_cache": None if made.cache_hit is None else {
                    "hit": made.cache_hit, "backend": self.cache.status()},
            }

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

    def _submit(self, kind: str, name: str, work: Work) -> dict[str, Any]:
        """Queue a job that saves a vector named ``name``, holding the name until the job ends."""
        self._reserve(name)

        def guarded(ctx: JobContext) -> dict[str, Any]:
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
        return job.public()

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

    def evaluate(
        self, name: str, relation: str | None, pairs: list[dict[str, Any]] | None, seed: int, shots: int,
        run: Runner[Any] | None = None,
    ) -> dict[str, Any]:
        """Todd et al.'s five-way evaluation of a stored vector on held-out pairs.

        When the pairs are the vector's own dataset, its test split (same seed) is evaluated with
        demonstrations from its train split; otherwise every pair is a test item and its demonstrations
        come from the other pairs. ``run`` sends each forward to the engine (default: :meth:`Engine.call`).
        """
        stored = self.registry.get(check_name(name))
        label, resolved = resolve_pairs(relation, pairs)
        metrics = stored.describe()["metrics"]
        if stored.metadata.get("dataset_sha256") == dataset_sha256(resolved):
            split = split_pairs(resolved, int(metrics.get("seed", seed)))
            demo_pool, test = split.train, split.test
        else:
            demo_pool, test = resolved, resolved
        adapter, tokenizer = self.model.adapter, self.model.tokenizer
        result = evaluate(
            adapter, tokenizer, Template(), bos_prefix(tokenizer, adapter.adds_bos), demo_pool, test,
            (stored.layer, stored.vector), seed=seed, shots=shots, run=run or self.engine.call,
        )
        return {"vector": name, "relation": label, "layer": stored.layer, **result.as_dict()}

    def decode(self, name: str, k: int) -> dict[str, Any]:
        stored = self.registry.get(check_name(name))
        vector = stored.vector
        top = self.engine.call(lambda: decode_vector(self.model.adapter, self.model.tokenizer, vector, k))
        return {"name": name, "layer": stored.layer, "tokens": [{"token": t, "prob": p} for t, p in top]}

