"""The one load sequence: the served model, its vector registry and the head-mean cache, configured from the
settings. The server (:mod:`app.runtime`) and the offline tools (``make vectors``, ``fvsteer analogies``,
``fvsteer alignment``, the reports) all start here, so they see the same model, registry and cache."""

from __future__ import annotations

import os
from dataclasses import dataclass

from app.cache.head_means import MemoryHeadMeanCache, RedisHeadMeanCache, make_head_mean_cache
from app.model.adapter import adapt
from app.model.handle import ModelHandle
from app.model.loading import LoadedModel, load_model, model_fingerprint, model_slug
from app.registry.registry import ModelIdentity, VectorRegistry
from app.settings import Settings, vector_quota


@dataclass(frozen=True)
class ModelBundle:
    loaded: LoadedModel
    model: ModelHandle
    registry: VectorRegistry
    cache: MemoryHeadMeanCache | RedisHeadMeanCache


def load_bundle(settings: Settings | None = None) -> ModelBundle:
    """Model, registry (``FVSTEER_VECTORS_DIR``, read once) and head-mean cache as the settings configure them."""
    settings = settings or Settings()
    if settings.hf_offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    loaded = load_model(settings.model, settings.device, settings.dtype, settings.cache_dir)
    adapter = adapt(loaded.model, loaded.tokenizer)
    fingerprint = model_fingerprint(loaded.model)
    identity = ModelIdentity(loaded.name, model_slug(loaded.name), fingerprint, adapter.d_model, adapter.n_layers)
    registry = VectorRegistry(settings.vectors_dir, identity, max_vectors=vector_quota(settings))
    registry.load()
    model = ModelHandle(adapter, loaded.tokenizer, fingerprint, loaded.name)
    return ModelBundle(loaded, model, registry, make_head_mean_cache(settings.redis_url, settings.redis_ttl_s))
