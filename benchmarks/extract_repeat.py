"""What a repeat extraction costs: ``extract`` cold, again with the same options, and with another ``n_heads``, in one
run on the embedded model, with the Redis cache (head means, AIE matrix, layer sweep).

    .venv/bin/python benchmarks/extract_repeat.py                      # antonym, Todd's defaults (~2 min on 2 cores)
    .venv/bin/python benchmarks/extract_repeat.py --redis-url redis://127.0.0.1:6379/14 --other-n-heads 20

The cold run's keys are fresh (the model fingerprint gets a random suffix for this run only, and the entries expire
after an hour), so it misses whatever an earlier run stored. The script prints each run's phase times, its cache
hits, the speed-up over cold, and whether the repeat's vector is identical to the cold one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import secrets
import time

import torch

from app.cache.head_means import RedisHeadMeanCache
from app.fv.extraction import ExtractionResult, ExtractionSpec, extract
from app.fv.pairs import relation_pairs
from app.model.adapter import adapt
from app.model.handle import ModelHandle
from app.model.loading import load_model, model_fingerprint
from app.settings import Settings


def timed(label: str, model: ModelHandle, spec: ExtractionSpec, cache: RedisHeadMeanCache) -> tuple[
    ExtractionResult, float
]:
    started = time.perf_counter()
    result = extract(model, spec, cache)
    seconds = time.perf_counter() - started
    phases = ", ".join(f"{name} {value:.2f}" for name, value in result.phase_seconds.items())
    hits = (f"means {'hit' if result.cache_hit else 'miss'}, AIE {'hit' if result.aie_cache_hit else 'miss'}, "
            f"sweep {'hit' if result.sweep_cache_hit else 'miss'}")
    print(f"{label:<16}{seconds:>8.2f} s   phases: {phases}   cache: {hits}   layer {result.layer}", flush=True)
    return result, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relation", default="antonym")
    parser.add_argument("--n-heads", type=int, default=10)
    parser.add_argument("--other-n-heads", type=int, default=20)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    settings = Settings()
    loaded = load_model("embedded:smollm2-135m-instruct", "cpu", "float32", settings.cache_dir)
    fingerprint = f"{model_fingerprint(loaded.model)}+bench-{secrets.token_hex(6)}"
    model = ModelHandle(adapt(loaded.model, loaded.tokenizer), loaded.tokenizer, fingerprint, loaded.name)
    cache = RedisHeadMeanCache(args.redis_url, ttl_s=3600)
    spec = ExtractionSpec(pairs=relation_pairs(args.relation), n_heads=args.n_heads)
    print(f"{loaded.name}: extract {args.relation} (n_prompts={spec.n_prompts}, n_trials={spec.n_trials}, "
          f"n_heads={spec.n_heads}, layer={spec.layer}), Redis {args.redis_url}", flush=True)

    cold, cold_s = timed("cold", model, spec, cache)
    same, same_s = timed("same options", model, spec, cache)
    other, other_s = timed(f"n_heads={args.other_n_heads}", model,
                           dataclasses.replace(spec, n_heads=args.other_n_heads), cache)
    identical = torch.equal(same.vector, cold.vector) and same.layer == cold.layer and same.heads == cold.heads
    print()
    print(f"same options:  {cold_s / same_s:.1f}x faster than cold; vector, layer and heads identical: {identical}")
    print(f"other n_heads: {cold_s / other_s:.1f}x faster than cold; AIE reused: {other.aie_cache_hit}")
    print(f"cold_s={cold_s:.2f} same_s={same_s:.2f} other_s={other_s:.2f} same_ratio={cold_s / same_s:.2f} "
          f"other_ratio={cold_s / other_s:.2f} identical={identical} backend={cache.status()}")


if __name__ == "__main__":
    main()
