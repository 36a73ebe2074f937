"""The AIE and layer-sweep caches: keys that change with every option that changes the result, exact round trips
in memory and in a real Redis, corrupt records and a Redis that is down as misses, and extraction on a tiny model
that reuses them (a repeat gives a vector identical to the cold one)."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from dataclasses import replace

import pytest
import redis
import torch

from app.cache.extraction_results import (
    AIE_PREFIX,
    SWEEP_PREFIX,
    AieKey,
    LayerSweep,
    SweepKey,
    get_aie,
    get_sweep,
    heads_sha256,
    put_aie,
    put_sweep,
)
from app.cache.head_means import HeadMeanCache, HeadMeanKey, MemoryHeadMeanCache, RedisHeadMeanCache
from app.fv.extraction import ExtractionResult, ExtractionSpec, extract
from app.fv.pairs import relation_pairs
from app.model.adapter import adapt
from app.model.handle import ModelHandle
from tests.conftest import TEST_REDIS_URL, free_port
from tests.tiny_models import tiny_model, tiny_tokenizer

SHAPE = (4, 4)


def random_aie_key() -> AieKey:
    means = HeadMeanKey(f"test-{secrets.token_hex(8)}", '{"t": 1}', "ab" * 32, 3, 4, 0)
    return AieKey(means, 1, 2, heads_sha256([(0, 0), (0, 1)]))


def sweep_key(aie: AieKey) -> SweepKey:
    return SweepKey(aie, 3, (0, 1, 2, 3), 2, 24)


# --- keys ----------------------------------------------------------------------------------------------


def test_aie_key_depends_on_every_field() -> None:
    base = random_aie_key()
    assert base.digest().startswith(AIE_PREFIX) and base.digest() == replace(base).digest()
    variants = [replace(base, means=replace(base.means, n_prompts=5)), replace(base, means=replace(base.means, seed=9)),
                replace(base, trials_seed=2), replace(base, n_trials=3),
                replace(base, heads_sha256=heads_sha256([(0, 0)]))]
    digests = {variant.digest() for variant in variants}
    assert len(digests) == len(variants) and base.digest() not in digests


def test_sweep_key_depends_on_every_field() -> None:
    base = sweep_key(random_aie_key())
    assert base.digest().startswith(SWEEP_PREFIX) and base.digest() == replace(base).digest()
    variants = [replace(base, aie=replace(base.aie, n_trials=7)), replace(base, n_heads=4), replace(base, layers=(2,)),
                replace(base, pairs_seed=3), replace(base, train_pairs=10)]
    digests = {variant.digest() for variant in variants}
    assert len(digests) == len(variants) and base.digest() not in digests


def test_head_set_digest_follows_the_heads() -> None:
    assert heads_sha256([(0, 1), (2, 3)]) == heads_sha256([(0, 1), (2, 3)])
    assert heads_sha256([(0, 1), (2, 3)]) != heads_sha256([(2, 3), (0, 1)])
    assert heads_sha256([(0, 1)]) != heads_sha256([(1, 0)])


# --- round trips -----------------------------------------------------------------------------------------


def roundtrip(cache: HeadMeanCache) -> None:
    key = random_aie_key()
    aie = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    sweep = LayerSweep({0: 0.25, 1: 0.5, 2: 0.5, 3: 1 / 3}, 2, 0.125)
    assert get_aie(cache, key, SHAPE) is None and get_sweep(cache, sweep_key(key)) is None
    put_aie(cache, key, aie)
    put_sweep(cache, sweep_key(key), sweep)
    got = get_aie(cache, key, SHAPE)
    assert got is not None and got.dtype == torch.float32 and torch.equal(got, aie)
    assert get_aie(cache, key, (4, 5)) is None  # another model's shape
    assert get_sweep(cache, sweep_key(key)) == sweep
    assert get_sweep(cache, replace(sweep_key(key), n_heads=4)) is None


def test_memory_roundtrip_is_exact() -> None:
    roundtrip(MemoryHeadMeanCache())


def test_redis_roundtrip_is_exact(raw_redis: redis.Redis) -> None:
    roundtrip(RedisHeadMeanCache(TEST_REDIS_URL, ttl_s=60))


def test_redis_records_take_the_ttl(raw_redis: redis.Redis) -> None:
    key = random_aie_key()
    put_aie(RedisHeadMeanCache(TEST_REDIS_URL, ttl_s=60), key, torch.zeros(SHAPE))
    assert 0 < raw_redis.ttl(key.digest()) <= 60
    raw_redis.delete(key.digest())


def test_corrupt_records_are_misses(raw_redis: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisHeadMeanCache(TEST_REDIS_URL, ttl_s=60)
    key = random_aie_key()
    raw_redis.hset(key.digest(), mapping={"meta": b'{"shape": [4, 4]}', "aie": b"\x00" * 12})  # truncated
    raw_redis.hset(sweep_key(key).digest(), mapping={"sweep": b'{"scores": {"9": 1.0}, "best": 9, "baseline": 0}'})
    raw_redis.expire(key.digest(), 60)
    raw_redis.expire(sweep_key(key).digest(), 60)
    with caplog.at_level(logging.WARNING):
        assert get_aie(cache, key, SHAPE) is None
        assert get_sweep(cache, sweep_key(key)) is None  # layers that are not the key's
    assert "corrupt" in caplog.text
    nan = torch.full(SHAPE, float("nan"))
    put_aie(cache, key, nan)
    assert get_aie(cache, key, SHAPE) is None
    # A sweep with a NaN score used to be a hit, and its layer went into the vector file.
    put_sweep(cache, sweep_key(key), LayerSweep({0: 0.5, 1: float("nan"), 2: 0.1, 3: 0.0}, 1, 0.0))
    assert get_sweep(cache, sweep_key(key)) is None
    # A field name that is not UTF-8 used to fail every later extraction until the key was removed.
    raw_redis.hset(sweep_key(key).digest(), mapping={b"\xff\xfe": b"x"})
    assert get_sweep(cache, sweep_key(key)) is None and cache.stats.errors >= 1
    raw_redis.delete(key.digest(), sweep_key(key).digest())


def test_redis_down_is_a_miss_and_degrades() -> None:
    cache = RedisHeadMeanCache(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.5)
    key = random_aie_key()
    put_aie(cache, key, torch.zeros(SHAPE))
    assert cache.status() == "degraded"
    assert get_aie(cache, key, SHAPE) is None and get_sweep(cache, sweep_key(key)) is None
    assert cache.stats.errors >= 3


# --- extraction reuses them ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def handle() -> ModelHandle:
    tokenizer = tiny_tokenizer()
    return ModelHandle(adapt(tiny_model("llama", seed=3), tokenizer), tokenizer, "", "tiny-llama")


def spec(**changes: object) -> ExtractionSpec:
    base = ExtractionSpec(pairs=relation_pairs("antonym")[:24], n_prompts=4, n_trials=2, n_heads=3, shots=3)
    return dataclasses.replace(base, **changes)


def fresh(handle: ModelHandle) -> ModelHandle:
    """The tiny model under a fingerprint no earlier run used: every key is new."""
    return dataclasses.replace(handle, fingerprint=f"tiny-{secrets.token_hex(8)}")


def hits(result: ExtractionResult) -> tuple[bool, bool, bool]:
    return result.cache_hit, result.aie_cache_hit, result.sweep_cache_hit


def same_result(a: ExtractionResult, b: ExtractionResult) -> bool:
    return (torch.equal(a.vector, b.vector) and torch.equal(a.aie, b.aie) and a.heads == b.heads
            and a.layer == b.layer and a.sweep == b.sweep and a.metrics == b.metrics)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_repeat_hits_every_cache_and_gives_the_cold_vector(backend: str, handle: ModelHandle,
                                                             request: pytest.FixtureRequest) -> None:
    if backend == "redis":
        request.getfixturevalue("raw_redis")
    cache = MemoryHeadMeanCache() if backend == "memory" else RedisHeadMeanCache(TEST_REDIS_URL, ttl_s=120)
    model = fresh(handle)
    cold = extract(model, spec(), cache)
    assert hits(cold) == (False, False, False)
    again = extract(model, spec(), cache)
    assert hits(again) == (True, True, True)
    assert same_result(again, cold)
    uncached = extract(model, spec(), MemoryHeadMeanCache())  # computed from scratch once more: deterministic
    assert same_result(uncached, cold)


def test_another_n_heads_reuses_means_and_aie_and_sweeps_again(handle: ModelHandle) -> None:
    cache, model = MemoryHeadMeanCache(), fresh(handle)
    extract(model, spec(), cache)
    other = extract(model, spec(n_heads=5), cache)
    assert hits(other) == (True, True, False)
    assert same_result(other, extract(model, spec(n_heads=5), MemoryHeadMeanCache()))
    assert hits(extract(model, spec(n_heads=5), cache)) == (True, True, True)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"n_trials": 3}, (True, False, False)),
    ({"layer": 2}, (True, True, False)),
    ({"n_prompts": 5}, (False, False, False)),
    ({"seed": 1}, (False, False, False)),
    ({"shots": 2}, (False, False, False)),
    ({"pairs": relation_pairs("antonym")[1:25]}, (False, False, False)),
])
def test_a_changed_option_misses_what_it_changes(handle: ModelHandle, changes: dict[str, object],
                                                 expected: tuple[bool, bool, bool]) -> None:
    cache, model = MemoryHeadMeanCache(), fresh(handle)
    extract(model, spec(), cache)
    assert hits(extract(model, spec(**changes), cache)) == expected


def test_another_model_misses_everything(handle: ModelHandle) -> None:
    cache = MemoryHeadMeanCache()
    extract(fresh(handle), spec(), cache)
    assert hits(extract(fresh(handle), spec(), cache)) == (False, False, False)


def test_extraction_works_with_redis_down(handle: ModelHandle) -> None:
    cache = RedisHeadMeanCache(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.5)
    model = fresh(handle)
    down = extract(model, spec(), cache)
    assert hits(down) == (False, False, False) and cache.status() == "degraded"
    assert same_result(down, extract(model, spec(), MemoryHeadMeanCache()))
