"""The head-mean cache: one entry per (model, template, dataset, shots, N, seed), one field per head.

Redis layout: a hash per key, field ``"<layer>.<head>"`` → float32 bytes, plus a ``meta`` field (JSON).
A Redis that is down, slow or holding a corrupt value is never fatal: the cache reports a miss, logs
once, marks itself ``degraded`` and the caller recomputes.

The same store keeps *records* for the later phases of an extraction (``app/cache/extraction_results.py``: the AIE
matrix, the layer sweep): a hash of named byte fields under a key the caller derives, with the same
fault tolerance, TTL and backend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

KEY_PREFIX = "fvsteer:head-means:v1:"


@dataclass(frozen=True)
class HeadMeanKey:
    fingerprint: str
    template: str
    dataset_sha256: str
    shots: int
    n_prompts: int
    seed: int

    def digest(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True)
        return KEY_PREFIX + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    fields_read: int = 0


class HeadMeanCache(Protocol):
    stats: CacheStats

    def get(self, key: HeadMeanKey, shape: tuple[int, int, int]) -> Tensor | None: ...

    def put(self, key: HeadMeanKey, means: Tensor) -> None: ...

    def get_record(self, digest: str) -> dict[str, bytes] | None: ...

    def put_record(self, digest: str, fields: dict[str, bytes]) -> None: ...

    def status(self) -> str: ...


class MemoryHeadMeanCache:
    """In-process LRU, used when ``FVSTEER_REDIS_URL`` is unset."""

    def __init__(self, max_entries: int = 64) -> None:
        self.stats = CacheStats()
        self._entries: OrderedDict[str, Tensor] = OrderedDict()
        self._records: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, key: HeadMeanKey, shape: tuple[int, int, int]) -> Tensor | None:
        with self._lock:
            means = self._entries.get(key.digest())
            if means is None or tuple(means.shape) != shape:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key.digest())
            self.stats.hits += 1
            self.stats.fields_read += shape[0] * shape[1]
            return means.clone()

    def put(self, key: HeadMeanKey, means: Tensor) -> None:
        with self._lock:
            self._entries[key.digest()] = means.detach().to("cpu", torch.float32).clone()
            self._entries.move_to_end(key.digest())
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def get_record(self, digest: str) -> dict[str, bytes] | None:
        with self._lock:
            fields = self._records.get(digest)
            if fields is None:
                return None
            self._records.move_to_end(digest)
            return dict(fields)

    def put_record(self, digest: str, fields: dict[str, bytes]) -> None:
        with self._lock:
            self._records[digest] = dict(fields)
            self._records.move_to_end(digest)
            while len(self._records) > self._max:
                self._records.popitem(last=False)

    def status(self) -> str:
        return "memory"


PROBE_TIMEOUT_S = 0.25
PROBE_INTERVAL_S = 1.0


@dataclass
class RedisHeadMeanCache:
    """Redis-backed cache; every failure degrades to a miss (never a wrong answer, never a crash)."""

    url: str
    ttl_s: int | None = None
    socket_timeout_s: float = 2.0
    stats: CacheStats = field(default_factory=CacheStats)
    degraded: bool = False
    _warned: bool = False

    def __post_init__(self) -> None:
        import redis

        self._client = redis.Redis.from_url(
            self.url, socket_timeout=self.socket_timeout_s, socket_connect_timeout=self.socket_timeout_s
        )
        # Readiness probes must answer fast even when Redis hangs: a client with a short timeout of its own,
        # asked at most once per PROBE_INTERVAL_S however often the probe comes.
        timeout = min(self.socket_timeout_s, PROBE_TIMEOUT_S)
        self._probe = redis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._probed_at: float | None = None

    def _failed(self, action: str, exc: Exception) -> None:
        self.stats.errors += 1
        self.degraded = True
        if not self._warned:
            log.warning("head-mean cache degraded: Redis %s failed (%s); computing without it", action, exc)
            self._warned = True

    def _recovered(self) -> None:
        if self.degraded:
            log.info("head-mean cache: Redis reachable again")
        self.degraded = False
        self._warned = False

    def get(self, key: HeadMeanKey, shape: tuple[int, int, int]) -> Tensor | None:
        try:
            raw = self._client.hgetall(key.digest())
        except Exception as exc:  # redis errors, timeouts, refused connections
            self._failed("read", exc)
            self.stats.misses += 1
            return None
        self._recovered()
        means = self._decode(raw, shape) if raw else None
        if means is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self.stats.fields_read += shape[0] * shape[1]
        return means

    def _decode(self, raw: Any, shape: tuple[int, int, int]) -> Tensor | None:
        layers, heads, head_dim = shape
        means = np.empty(shape, dtype=np.float32)
        try:
            meta = json.loads(raw[b"meta"])
            if not isinstance(meta, dict):
                raise ValueError(f"meta is {type(meta).__name__}, not an object")
            if meta.get("shape") != list(shape):
                raise ValueError(f"cached shape {meta.get('shape')} != {list(shape)}")
            for layer in range(layers):
                for head in range(heads):
                    values = np.frombuffer(raw[f"{layer}.{head}".encode()], dtype=np.float32)
                    if values.shape != (head_dim,) or not np.isfinite(values).all():
                        raise ValueError(f"field {layer}.{head} is corrupt")
                    means[layer, head] = values
        except Exception as exc:  # whatever is wrong with a stored entry, it is a miss, never a crash
            log.warning("head-mean cache entry is corrupt (%s); recomputing", exc)
            self.stats.errors += 1
            return None
        return torch.from_numpy(means)

    def put(self, key: HeadMeanKey, means: Tensor) -> None:
        array = means.detach().to("cpu", torch.float32).numpy()
        mapping: dict[str, bytes] = {"meta": json.dumps({"shape": list(array.shape)}).encode()}
        for layer in range(array.shape[0]):
            for head in range(array.shape[1]):
                mapping[f"{layer}.{head}"] = array[layer, head].tobytes()
        self._replace(key.digest(), mapping)

    def _replace(self, digest: str, mapping: dict[str, bytes]) -> None:
        """Write one hash whole (delete, set, expire in one transaction); a failure degrades, never raises."""
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(digest)
            pipe.hset(digest, mapping=mapping)  # type: ignore[arg-type]
            if self.ttl_s:
                pipe.expire(digest, self.ttl_s)
            pipe.execute()
        except Exception as exc:
            self._failed("write", exc)
            return
        self._recovered()

    def get_record(self, digest: str) -> dict[str, bytes] | None:
        """The record's fields, or None when absent or Redis fails (the caller recomputes)."""
        try:
            raw = self._client.hgetall(digest)
        except Exception as exc:
            self._failed("read", exc)
            return None
        self._recovered()
        stored = cast(dict[bytes, bytes], raw)  # the client decodes nothing: names and values are bytes
        try:
            return {name.decode(): value for name, value in stored.items()} if stored else None
        except UnicodeDecodeError:  # not written by fvsteer: a miss (recomputed and overwritten), never a failure
            log.warning("cache record %s has a field name that is not UTF-8; recomputing", digest[:40])
            self.stats.errors += 1
            return None

    def put_record(self, digest: str, fields: dict[str, bytes]) -> None:
        self._replace(digest, fields)

    def status(self) -> str:
        return "degraded" if self.degraded else "redis"

    def ping(self) -> bool:
        """Probe Redis (for readiness) with a short timeout, at most once per ``PROBE_INTERVAL_S``; updates
        ``degraded``. Returns whether Redis answered (the last probe's answer when it is recent)."""
        now = time.monotonic()
        if self._probed_at is not None and now - self._probed_at < PROBE_INTERVAL_S:
            return not self.degraded
        self._probed_at = now
        try:
            self._probe.ping()
        except Exception as exc:
            self._failed("ping", exc)
            return False
        self._recovered()
        return True


def make_head_mean_cache(redis_url: str | None, ttl_s: int | None = None) -> MemoryHeadMeanCache | RedisHeadMeanCache:
    if not redis_url:
        return MemoryHeadMeanCache()
    return RedisHeadMeanCache(redis_url, ttl_s=ttl_s)
