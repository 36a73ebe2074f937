"""The head-mean cache: in-process LRU, and Redis (real server) that is never fatal when down, slow or corrupt."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import redis
import torch

from app.cache.head_means import (
    KEY_PREFIX,
    HeadMeanKey,
    MemoryHeadMeanCache,
    RedisHeadMeanCache,
    make_head_mean_cache,
)
from tests.conftest import TEST_REDIS_URL, free_port, start_redis

SHAPE = (3, 4, 5)


def random_key() -> HeadMeanKey:
    return HeadMeanKey(f"test-{secrets.token_hex(8)}", '{"t": 1}', "ab" * 32, 10, 100, 0)


def random_means(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def key(raw_redis: redis.Redis) -> Iterator[HeadMeanKey]:
    """A fresh key whose Redis entry is deleted after the test."""
    item = random_key()
    yield item
    raw_redis.delete(item.digest())


def test_key_digest_depends_on_every_field() -> None:
    base = random_key()
    assert base.digest().startswith(KEY_PREFIX)
    assert base.digest() == replace(base).digest()
    variants = [replace(base, fingerprint="x"), replace(base, template="{}"), replace(base, dataset_sha256="cd" * 32),
                replace(base, shots=5), replace(base, n_prompts=99), replace(base, seed=1)]
    digests = {variant.digest() for variant in variants}
    assert len(digests) == len(variants) and base.digest() not in digests


def test_factory_picks_the_backend() -> None:
    assert isinstance(make_head_mean_cache(None), MemoryHeadMeanCache)
    assert isinstance(make_head_mean_cache(""), MemoryHeadMeanCache)
    cache = make_head_mean_cache(TEST_REDIS_URL, ttl_s=30)
    assert isinstance(cache, RedisHeadMeanCache) and cache.ttl_s == 30


# --- in-process LRU ------------------------------------------------------------------------------------


def test_memory_roundtrip_and_misses() -> None:
    cache = MemoryHeadMeanCache()
    key, means = random_key(), random_means()
    assert cache.get(key, SHAPE) is None
    cache.put(key, means)
    got = cache.get(key, SHAPE)
    assert got is not None and torch.equal(got, means) and got.dtype == torch.float32
    assert cache.get(random_key(), SHAPE) is None
    assert cache.get(key, (3, 4, 6)) is None
    assert (cache.stats.hits, cache.stats.misses, cache.stats.errors) == (1, 3, 0)
    assert cache.stats.fields_read == SHAPE[0] * SHAPE[1]
    assert cache.status() == "memory"


def test_memory_lru_evicts_the_least_recently_used() -> None:
    cache = MemoryHeadMeanCache(max_entries=3)
    keys = [random_key() for _ in range(5)]
    for index in range(3):
        cache.put(keys[index], random_means(seed=index))
    assert cache.get(keys[0], SHAPE) is not None  # 0 is now the most recent; 1 the least
    cache.put(keys[3], random_means(seed=3))
    assert cache.get(keys[1], SHAPE) is None
    assert all(cache.get(keys[index], SHAPE) is not None for index in (0, 2, 3))
    # Order of use is now 0, 2, 3 → putting 4 evicts 0; re-putting an existing key evicts nothing.
    cache.put(keys[4], random_means(seed=4))
    assert cache.get(keys[0], SHAPE) is None
    cache.put(keys[2], random_means(seed=22))
    got = cache.get(keys[2], SHAPE)
    assert got is not None and torch.equal(got, random_means(seed=22))
    assert all(cache.get(keys[index], SHAPE) is not None for index in (3, 4))


def test_memory_entries_are_isolated_from_callers() -> None:
    cache = MemoryHeadMeanCache()
    key, means = random_key(), random_means()
    expected = means.clone()
    cache.put(key, means)
    means += 1.0  # the caller's tensor changes after put
    got = cache.get(key, SHAPE)
    assert got is not None and torch.equal(got, expected)
    got.zero_()  # the caller mutates what it got
    again = cache.get(key, SHAPE)
    assert again is not None and torch.equal(again, expected)


def test_memory_cache_stores_float32_on_cpu() -> None:
    cache = MemoryHeadMeanCache()
    key = random_key()
    cache.put(key, random_means().double())
    got = cache.get(key, SHAPE)
    assert got is not None and got.dtype == torch.float32 and torch.equal(got, random_means())


# --- Redis ---------------------------------------------------------------------------------------------


def test_redis_roundtrip_is_exact(raw_redis: redis.Redis, key: HeadMeanKey) -> None:
    cache = RedisHeadMeanCache(TEST_REDIS_URL)
    means = random_means()
    assert cache.get(key, SHAPE) is None
    cache.put(key, means)
    got = cache.get(key, SHAPE)
    assert got is not None and got.dtype == torch.float32 and tuple(got.shape) == SHAPE
    assert torch.equal(got, means)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.errors) == (1, 1, 0)
    assert cache.stats.fields_read == SHAPE[0] * SHAPE[1]
    assert cache.status() == "redis"
    # Another cache object (another server process) sees the same entry.
    other = RedisHeadMeanCache(TEST_REDIS_URL)
    shared = other.get(key, SHAPE)
    assert shared is not None and torch.equal(shared, means)


def test_redis_misses_on_other_key_and_shape(raw_redis: redis.Redis, key: HeadMeanKey) -> None:
    cache = RedisHeadMeanCache(TEST_REDIS_URL)
    cache.put(key, random_means())
    assert cache.get(replace(key, seed=key.seed + 1), SHAPE) is None
    assert cache.get(key, (3, 4, 6)) is None  # same head_dim count differs
    assert cache.get(key, (3, 5, 5)) is None
    assert cache.get(key, (4, 4, 5)) is None
    assert cache.stats.hits == 0 and cache.stats.misses == 4
    assert cache.status() == "redis"


def test_redis_layout(raw_redis: redis.Redis, key: HeadMeanKey) -> None:
    cache = RedisHeadMeanCache(TEST_REDIS_URL)
    means = random_means()
    cache.put(key, means)
    assert raw_redis.type(key.digest()) == b"hash"
    stored = raw_redis.hgetall(key.digest())
    expected_fields = {b"meta"} | {f"{layer}.{head}".encode() for layer in range(SHAPE[0]) for head in range(SHAPE[1])}
    assert set(stored) == expected_fields
    assert json.loads(stored[b"meta"])["shape"] == list(SHAPE)
    for layer in range(SHAPE[0]):
        for head in range(SHAPE[1]):
            value = stored[f"{layer}.{head}".encode()]
            assert value == means[layer, head].numpy().astype(np.float32).tobytes()
    assert raw_redis.ttl(key.digest()) == -1  # no TTL unless configured


def test_redis_put_replaces_the_whole_entry(raw_redis: redis.Redis, key: HeadMeanKey) -> None:
    cache = RedisHeadMeanCache(TEST_REDIS_URL)
    cache.put(key, random_means())
    smaller = random_means((2, 2, 5), seed=1)
    cache.put(key, smaller)
    assert len(raw_redis.hkeys(key.digest())) == 1 + 2 * 2  # no stale fields of the bigger entry
    assert cache.get(key, SHAPE) is None
    got = cache.get(key, (2, 2, 5))
    assert got is not None and torch.equal(got, smaller)


def test_redis_ttl_is_applied(raw_redis: redis.Redis, key: HeadMeanKey) -> None:
    cache = RedisHeadMeanCache(TEST_REDIS_URL, ttl_s=120)
    cache.put(key, random_means())
    ttl = raw_redis.ttl(key.digest())
    assert 0 < ttl <= 120
    short = RedisHeadMeanCache(TEST_REDIS_URL, ttl_s=1)
    short.put(key, random_means())
    assert raw_redis.pttl(key.digest()) <= 1000
    deadline = time.monotonic() + 5
    while raw_redis.exists(key.digest()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert short.get(key, SHAPE) is None  # expired


def _nan_field() -> bytes:
    return np.full(SHAPE[2], np.nan, dtype=np.float32).tobytes()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("1.2", b"\x00\x01\x02"),  # not a whole number of float32
        ("1.2", np.zeros(SHAPE[2] + 1, dtype=np.float32).tobytes()),  # wrong head_dim
        ("0.0", b""),
        ("2.3", None),  # field missing
        ("0.1", "nan"),
        ("meta", b"{not json"),
        ("meta", b"\xff\xfe"),  # not UTF-8
        ("meta", b"[3, 4, 5]"),  # JSON, but not an object
        ("meta", b"null"),
        ("meta", b'{"shape": "3,4,5"}'),
        ("meta", None),
    ],
)
def test_corrupt_entry_is_a_miss_never_an_exception(
    raw_redis: redis.Redis, key: HeadMeanKey, field: str, value: bytes | str | None
) -> None:
    cache = RedisHeadMeanCache(TEST_REDIS_URL)
    means = random_means()
    cache.put(key, means)
    if value is None:
        raw_redis.hdel(key.digest(), field)
    else:
        raw_redis.hset(key.digest(), field, _nan_field() if value == "nan" else value)
    assert cache.get(key, SHAPE) is None
    assert cache.stats.errors == 1 and cache.stats.misses == 1 and cache.stats.hits == 0
    assert cache.status() == "redis"  # a bad entry is not a Redis outage
    cache.put(key, means)  # recomputed means overwrite the corrupt entry
    got = cache.get(key, SHAPE)
    assert got is not None and torch.equal(got, means)


def test_redis_down_is_a_degraded_miss(caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisHeadMeanCache(f"redis://127.0.0.1:{free_port()}/15", socket_timeout_s=1.0)
    key = random_key()
    with caplog.at_level(logging.WARNING, logger="app.cache.head_means"):
        started = time.monotonic()
        assert cache.get(key, SHAPE) is None
        cache.put(key, random_means())
        assert cache.get(key, SHAPE) is None
        assert not cache.ping()
        assert time.monotonic() - started < 5
    assert cache.status() == "degraded" and cache.degraded
    assert cache.stats.errors == 4 and cache.stats.misses == 2 and cache.stats.hits == 0
    warnings = [record for record in caplog.records if "degraded" in record.getMessage()]
    assert len(warnings) == 1, "an outage is logged once, not on every call"


def test_degraded_cache_recovers_when_redis_answers(raw_redis: redis.Redis, key: HeadMeanKey) -> None:
    cache = RedisHeadMeanCache(f"redis://127.0.0.1:{free_port()}/15", socket_timeout_s=1.0)
    assert cache.get(key, SHAPE) is None and cache.status() == "degraded"
    # Same object, Redis now reachable (as after Redis comes back).
    cache._client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=1.0)
    means = random_means()
    cache.put(key, means)
    assert cache.status() == "redis"
    got = cache.get(key, SHAPE)
    assert got is not None and torch.equal(got, means)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary")
def test_redis_killed_mid_way_then_restarted(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    process = start_redis(port)
    try:
        cache = RedisHeadMeanCache(f"redis://127.0.0.1:{port}/0", socket_timeout_s=1.0)
        key, means = random_key(), random_means()
        cache.put(key, means)
        got = cache.get(key, SHAPE)
        assert got is not None and torch.equal(got, means) and cache.status() == "redis"

        process.kill()  # SIGKILL: the connection in the pool is now dead
        process.wait(timeout=10)
        with caplog.at_level(logging.INFO, logger="app.cache.head_means"):
            started = time.monotonic()
            assert cache.get(key, SHAPE) is None
            cache.put(key, means)
            assert cache.get(key, SHAPE) is None
            assert time.monotonic() - started < 5
            assert cache.status() == "degraded"
            assert cache.stats.errors == 3

            process = start_redis(port)  # back, empty (no persistence)
            assert cache.get(key, SHAPE) is None  # a plain miss now
            assert cache.status() == "redis"
            cache.put(key, means)
            got = cache.get(key, SHAPE)
            assert got is not None and torch.equal(got, means)
        assert cache.stats.errors == 3
        messages = [record.getMessage() for record in caplog.records]
        assert sum("degraded" in message for message in messages) == 1
        assert any("reachable again" in message for message in messages)
    finally:
        process.kill()
        process.wait(timeout=10)


def test_slow_redis_times_out_into_a_degraded_miss(hung_redis: int) -> None:
    timeout = 0.4
    cache = RedisHeadMeanCache(f"redis://127.0.0.1:{hung_redis}/15", socket_timeout_s=timeout)
    key = random_key()
    started = time.monotonic()
    assert cache.get(key, SHAPE) is None
    elapsed = time.monotonic() - started
    assert timeout * 0.8 <= elapsed < timeout * 4, elapsed
    assert cache.status() == "degraded" and cache.stats.errors == 1
    started = time.monotonic()
    cache.put(key, random_means())  # doesn't raise, doesn't hang
    assert time.monotonic() - started < timeout * 4
    assert cache.stats.errors == 2
