"""The served model and its vector registry loaded in this process, for the offline tools (``make vectors``,
``fvsteer analogies``, ``fvsteer alignment``) that run thousands of forwards and need no HTTP in between."""

from __future__ import annotations

from dataclasses import dataclass

from app.cache.head_means import MemoryHeadMeanCache, RedisHeadMeanCache, make_head_mean_cache
from app.engine.adapter import adapt
from app.engine.loading import load_model, model_fingerprint, model_slug
from app.fv.extraction import ModelHandle
from app.registry.registry import ModelIdentity, VectorRegistry
from app.settings import Settings


@dataclass(frozen=True)
class LocalModel:
    model: ModelHandle
    registry: VectorRegistry
    cache: MemoryHeadMeanCache | RedisHeadMeanCache


def load_local(settings: Settings | None = None) -> LocalModel:
    """Model, registry (``FVSTEER_VECTORS_DIR``) and head-mean cache as the server would configure them."""
    settings = settings or Settings()
    loaded = load_model(settings.model, settings.device, settings.dtype, settings.cache_dir)
    adapter = adapt(loaded.model, loaded.tokenizer)
    fingerprint = model_fingerprint(loaded.model)
    identity = ModelIdentity(loaded.name, model_slug(loaded.name), fingerprint, adapter.d_model, adapter.n_layers)
    registry = VectorRegistry(settings.vectors_dir, identity)
    registry.load()
    model = ModelHandle(adapter, loaded.tokenizer, fingerprint, loaded.name)
    return LocalModel(model, registry, make_head_mean_cache(settings.redis_url, settings.redis_ttl_s))
