"""bf16 against float32 on the hf engine with the embedded model and the committed starter bank.

Speed: completion tokens per second, unsteered and steered (``antonym`` at weight 1), at 1 and 16 concurrent rows,
greedy, 32 new tokens each, both dtypes loaded at once and run alternately (two rounds, the order swapped), so the
ratio comes from one run. Parity: the 32 parity prompts (``Q: <word>\\nA:``) × {unsteered, one vector, a three-vector
composite, ``positions: all``}, greedy 16 tokens in each dtype: how many texts agree, how many first tokens agree,
and the first step's log-probability drift over float32's 20 likeliest tokens (those bf16 also ranks in its top 20).
Science (``--science``): what bf16 changes in the jobs, each run in both dtypes on the same data — every bank
vector's test top-1 (evaluate's zero-shot FV measure), the mediation FV of ``antonym`` (chosen layer, cosine, test
top-1) and a 40-epoch fine-tune from the float32 mediation FV (hold-out and test top-1, cosine of the results).

Target (issue 32): the engine keeps at least 1.8x of float32's speed in bf16, as plain ``generate`` does on this CPU
(AMD EPYC with avx512_bf16); bf16 becomes the CPU default only if it wins without losing parity.

    .venv/bin/python benchmarks/dtype.py [--science]     # ~10 minutes on a quiet 2-core machine (+~8 science)

Results: benchmarks/results/dtype.json and a key=value line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.bundle import ModelBundle, load_bundle  # noqa: E402  (after the path: run as a script)
from app.engine.bank import VectorBank  # noqa: E402
from app.engine.engine import Engine  # noqa: E402
from app.engine.requests import BankSteering, GenerationRequest, GenerationResult, SamplingParams  # noqa: E402
from app.fv.evaluation import ranks_of_answers  # noqa: E402
from app.fv.extraction import ExtractionSpec, extract  # noqa: E402
from app.fv.finetune import FinetuneSpec, finetune  # noqa: E402
from app.fv.options import DEFAULT_LR  # noqa: E402
from app.fv.pairs import Pair, relation_pairs, shipped_relations, split_pairs  # noqa: E402
from app.fv.prompts import Template, bos_prefix, zero_shot_prompts  # noqa: E402
from app.settings import Settings  # noqa: E402

WORDS = ["hot", "big", "fast", "happy", "dark", "old", "up", "high", "cat", "child", "run", "eat", "France",
         "Japan", "apple", "water", "teacher", "book", "king", "walk", "small", "light", "good", "begin", "mouse",
         "Spain", "tree", "open", "sing", "winter", "strong", "early"]
PARITY_PROMPTS = [f"Q: {word}\nA:" for word in WORDS]
STEERING: dict[str, BankSteering | None] = {
    "unsteered": None,
    "one": BankSteering({"antonym": 1.0}),
    "composite": BankSteering({"antonym": 1.0, "synonym": -0.5, "singular-plural": 0.7}),
    "all": BankSteering({"present-past": 1.0}, positions="all"),
}
STORY = "Once upon a time, in a small village by the sea, there lived"
OUT = ROOT / "benchmarks" / "results" / "dtype.json"


def make_engine(bundle: ModelBundle) -> Engine:
    adapter = bundle.model.adapter
    bank = VectorBank(adapter.n_layers, adapter.d_model, bundle.loaded.device, bundle.model.name)
    bundle.registry.subscribe(bank.apply)
    engine = Engine(bundle.loaded, bundle.model, bank, max_batch=32, max_queue=256, max_prompt_tokens=512)
    engine.start()
    return engine


def run(engine: Engine, prompts: list[str], params: SamplingParams, steering: list[BankSteering | None]
        ) -> tuple[list[GenerationResult], float]:
    requests = [GenerationRequest(engine.encode(prompt, params.max_new_tokens), params, steering=steer)
                for prompt, steer in zip(prompts, steering, strict=True)]
    started = time.perf_counter()
    engine.submit(requests)
    wait([request.future for request in requests])
    return [request.future.result() for request in requests], time.perf_counter() - started


def speed(engines: dict[str, Engine], rounds: int) -> dict[str, float]:
    """tok/s per (dtype, rows, steered), the mean of ``rounds`` runs taken alternately."""
    params = SamplingParams(max_new_tokens=32)
    samples: dict[str, list[float]] = {}
    for round_index in range(rounds):
        order = list(engines) if round_index % 2 == 0 else list(reversed(engines))
        for dtype in order:
            for rows in (1, 16):
                for steered in (False, True):
                    steer = STEERING["one"] if steered else None
                    results, seconds = run(engines[dtype], [STORY] * rows, params, [steer] * rows)
                    key = f"{dtype}_{rows}{'_steered' if steered else ''}"
                    samples.setdefault(key, []).append(sum(r.completion_tokens for r in results) / seconds)
    return {key: statistics.mean(values) for key, values in samples.items()}


def parity(engines: dict[str, Engine]) -> dict[str, Any]:
    params = SamplingParams(max_new_tokens=16, logprobs=20)
    texts: dict[str, dict[tuple[str, str], GenerationResult]] = {}
    for dtype, engine in engines.items():
        cases = [(prompt, kind) for prompt in PARITY_PROMPTS for kind in STEERING]
        results, _ = run(engine, [prompt for prompt, _ in cases], params, [STEERING[kind] for _, kind in cases])
        texts[dtype] = dict(zip(cases, results, strict=True))
    f32, b16 = texts["float32"], texts["bfloat16"]
    drift = []
    for case, reference in f32.items():
        assert reference.logprobs is not None and b16[case].logprobs is not None
        ours = dict(b16[case].logprobs[0].top)
        drift += [abs(ours[token] - logprob) for token, logprob in reference.logprobs[0].top if token in ours]
    differing = [f"{kind} {prompt!r}: {f32[(prompt, kind)].text!r} vs {b16[(prompt, kind)].text!r}"
                 for prompt, kind in f32 if f32[(prompt, kind)].text != b16[(prompt, kind)].text]
    return {
        "cases": len(f32),
        "texts_equal": sum(f32[case].text == b16[case].text for case in f32),
        "first_tokens_equal": sum(f32[case].token_ids[:1] == b16[case].token_ids[:1] for case in f32),
        "first_step_drift_max": max(drift),
        "first_step_drift_mean": statistics.mean(drift),
        "differing": differing,
    }


def test_top1(bundle: ModelBundle, pairs: list[Pair], vector: tuple[int, torch.Tensor]) -> float:
    """evaluate's zero-shot FV measure: the best accepted answer's first token is the top-1 with the vector added."""
    model = bundle.model
    prefix = bos_prefix(model.tokenizer, model.adapter.adds_bos)
    prompts = zero_shot_prompts(model.tokenizer, Template(), prefix, pairs)
    return float((ranks_of_answers(model.adapter, model.tokenizer, prompts, vector) == 0).float().mean())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))


def science(bundles: dict[str, ModelBundle], relation: str = "antonym", epochs: int = 40) -> dict[str, Any]:
    """The jobs in both dtypes: the bank's test top-1 per relation, one extraction and one fine-tune."""
    evaluation: dict[str, dict[str, float]] = {}
    for name in shipped_relations():
        stored = bundles["float32"].registry.get(name)
        test = split_pairs(relation_pairs(name), 0).test
        evaluation[name] = {dtype: test_top1(bundle, test, (stored.layer, stored.vector))
                            for dtype, bundle in bundles.items()}
    pairs = relation_pairs(relation)
    split = split_pairs(pairs, 0)
    extracted, tuned = {}, {}
    for dtype, bundle in bundles.items():
        started = time.perf_counter()
        extracted[dtype] = extract(bundle.model, ExtractionSpec(pairs=pairs), bundle.cache)
        extracted_s = time.perf_counter() - started
        tuned_at = extracted["float32"]
        started = time.perf_counter()
        spec = FinetuneSpec(split.train + split.valid, tuned_at.layer, epochs=epochs, lr=DEFAULT_LR)  # as the product
        tuned[dtype] = (finetune(bundle.model, spec, tuned_at.vector), extracted_s, time.perf_counter() - started)
    top1 = {dtype: {"mediation": test_top1(bundle, split.test, (extracted[dtype].layer, extracted[dtype].vector)),
                    "finetuned": test_top1(bundle, split.test, (extracted["float32"].layer, tuned[dtype][0].vector))}
            for dtype, bundle in bundles.items()}
    means = {dtype: statistics.mean(row[dtype] for row in evaluation.values()) for dtype in bundles}
    return {
        "bank_test_top1_mean": means,
        "bank_relations_equal": sum(row["float32"] == row["bfloat16"] for row in evaluation.values()),
        "bank_relations": len(evaluation),
        "bank_test_top1": evaluation,
        "relation": relation,
        "extraction": {dtype: {"layer": result.layer, "test_top1": top1[dtype]["mediation"],
                               "seconds": round(tuned[dtype][1], 1)} for dtype, result in extracted.items()},
        "extraction_cosine": cosine(extracted["float32"].vector, extracted["bfloat16"].vector),
        "finetune": {dtype: {"epochs": epochs, "holdout_before": result.holdout_before,
                             "holdout_after": result.holdout_after, "best_epoch": result.best_epoch,
                             "test_top1": top1[dtype]["finetuned"], "seconds": round(seconds, 1)}
                     for dtype, (result, _, seconds) in tuned.items()},
        "finetune_cosine": cosine(tuned["float32"][0].vector, tuned["bfloat16"][0].vector),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--science", action="store_true", help="also run the jobs in both dtypes (~8 minutes)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    bundles = {dtype: load_bundle(Settings(dtype=dtype)) for dtype in ("float32", "bfloat16")}  # type: ignore[arg-type]
    engines = {dtype: make_engine(bundle) for dtype, bundle in bundles.items()}
    try:
        run(engines["float32"], [STORY] * 2, SamplingParams(max_new_tokens=4), [None, None])  # warm-up
        run(engines["bfloat16"], [STORY] * 2, SamplingParams(max_new_tokens=4), [None, None])
        tps = speed(engines, args.rounds)
        same = parity(engines)
    finally:
        for engine in engines.values():
            engine.stop()
    jobs = science(bundles) if args.science else None
    ratios = {f"bf16_over_f32_{rows}{suffix}": tps[f"bfloat16_{rows}{suffix}"] / tps[f"float32_{rows}{suffix}"]
              for rows in (1, 16) for suffix in ("", "_steered")}
    result = {"measured": time.strftime("%Y-%m-%d"), "tokens_per_s": tps, "ratios": ratios, "parity": same,
              **({"science": jobs} if jobs else {})}
    OUT.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    for line in same["differing"]:
        print(line)
    flat = {**{f"tps_{key}": value for key, value in tps.items()}, **ratios,
            **{key: value for key, value in same.items() if key != "differing"},
            **({key: value for key, value in jobs.items() if key != "bank_test_top1"} if jobs else {})}
    print(" ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                   for key, value in flat.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
