"""Both generation backends as servers on the embedded model, in one run: greedy, 32 new tokens, tokens/s.

    make bench-backends          # or: .venv/bin/python benchmarks/backends.py [--vllm-eager]

- hf and vllm: 1 client (requests one after another) and 16 concurrent clients, unsteered vs steered (antonym).
- vllm also: N concurrent requests, each with its own random composite of 2–5 of the 27 starter vectors
  (weights in ±1), against N unsteered requests, for N = 16, 64 and 256 (more than vLLM's ``max_num_seqs``: the
  rest wait at fvsteer's queue, as they would in service).

Each pair (unsteered, steered) runs back to back, twice, in alternating order; a figure is total completion tokens
over total wall time of its runs. The HF server is stopped before vLLM starts, so they never share the cores.
Ratios are from this run only (this machine is shared and noisy). The last line holds every figure as key=value.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from servers import ROOT, start_server, stop_server

TOKENS = 32
WORDS = ("hot", "big", "fast", "happy", "dark", "old", "strong", "early", "loud", "rich", "soft", "full", "cat",
         "dog", "walk", "run", "France", "Japan", "child", "mouse", "tree", "book", "king", "water")
STARTER = sorted(path.stem for path in (ROOT / "vectors" / "smollm2-135m-instruct").glob("*.safetensors"))
STEERED = {"antonym": 1.0}


def prompt(index: int) -> str:
    """Story openings: unsteered and steered alike run the whole 32 tokens (a "Q: x\nA:" prompt often ends at
    end-of-sequence unsteered and not steered, which would compare different amounts of work)."""
    return f"Write a story about something {WORDS[index % len(WORDS)]}:"


def composite(rng: random.Random) -> dict[str, float]:
    names = rng.sample(STARTER, rng.randint(2, 5))
    return {name: round(rng.uniform(-1.0, 1.0), 3) or 0.5 for name in names}


def run(url: str, bodies: list[dict[str, Any]], clients: int) -> tuple[int, float]:
    """Send ``bodies`` from ``clients`` concurrent clients (each takes the next when done); (tokens, seconds)."""

    async def go() -> int:
        queue = list(reversed(bodies))
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=1200, limits=limits) as client:
            async def worker() -> int:
                tokens = 0
                while queue:
                    response = await client.post("/complete", json={"max_new_tokens": TOKENS, **queue.pop()})
                    response.raise_for_status()
                    tokens += int(response.json()["usage"]["completion_tokens"])
                return tokens

            return sum(await asyncio.gather(*(worker() for _ in range(clients))))

    started = time.monotonic()
    tokens = asyncio.run(go())
    return tokens, time.monotonic() - started


def pair(url: str, make: Callable[[bool, int], list[dict[str, Any]]], clients: int, label: str
         ) -> dict[str, float]:
    """tokens/s unsteered and steered, two rounds in alternating order."""
    totals = {False: [0, 0.0], True: [0, 0.0]}
    for round_ in range(2):
        for steered in ((False, True) if round_ == 0 else (True, False)):
            tokens, seconds = run(url, make(steered, round_), clients)
            totals[steered][0] += tokens
            totals[steered][1] += seconds
    plain, steer = totals[False][0] / totals[False][1], totals[True][0] / totals[True][1]
    requests = 2 * len(make(False, 0))
    print(f"{label:<30} unsteered {plain:7.1f} tok/s   steered {steer:7.1f} tok/s   ratio {steer / plain:.3f}   "
          f"tokens/request {totals[False][0] / requests:.1f} / {totals[True][0] / requests:.1f}", flush=True)
    return {"unsteered": plain, "steered": steer, "ratio": steer / plain}


def clients_pair(url: str, clients: int, requests: int, label: str) -> dict[str, float]:
    def make(steered: bool, round_: int) -> list[dict[str, Any]]:
        return [{"prompt": prompt(i + round_ * requests), **({"relations": STEERED} if steered else {})}
                for i in range(requests)]

    return pair(url, make, clients, label)


def composites_pair(url: str, n: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)

    def make(steered: bool, round_: int) -> list[dict[str, Any]]:
        bodies = [{"prompt": prompt(i + round_ * n)} for i in range(n)]
        if steered:
            mixes = [composite(rng) for _ in range(n)]
            assert len({tuple(sorted(mix.items())) for mix in mixes}) == n  # all distinct
            bodies = [{**body, "relations": mix} for body, mix in zip(bodies, mixes, strict=True)]
        return bodies

    return pair(url, make, n, f"vllm {n} distinct composites")


def measure(url: str, backend: str, composites: bool, seed: int) -> dict[str, dict[str, float]]:
    figures = {"1": clients_pair(url, 1, 12, f"{backend} 1 client"),
               "16": clients_pair(url, 16, 32, f"{backend} 16 clients")}
    if composites:
        for n in (16, 64, 256):
            figures[f"mix{n}"] = composites_pair(url, n, seed + n)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-eager", action="store_true", help="vLLM with --enforce-eager (default: compiled)")
    parser.add_argument("--vllm-batch", type=int, default=64, help="vLLM's max_num_seqs (fvsteer's max batch)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for backend in ("hf", "vllm"):
            folder = Path(workdir) / backend
            folder.mkdir()
            env = {"FVSTEER_BACKEND": backend, "FVSTEER_MAX_BATCH": "16", "FVSTEER_MAX_QUEUE": "1024",
                   "FVSTEER_QUEUE_TIMEOUT_S": "1200", "FVSTEER_REQUEST_TIMEOUT_S": "1200"}
            if backend == "vllm":
                env["FVSTEER_MAX_BATCH"] = str(args.vllm_batch)
                env["FVSTEER_VLLM_EAGER"] = "1" if args.vllm_eager else "0"
            started = time.monotonic()
            process, url = start_server(folder, env)
            print(f"{backend} server ready in {time.monotonic() - started:.0f} s", flush=True)
            try:
                clients_pair(url, 4, 8, f"{backend} warm-up")
                results[backend] = measure(url, backend, backend == "vllm", args.seed)
            finally:
                stop_server(process)
    hf, vllm = results["hf"], results["vllm"]
    figures = {
        "hf_tps_1": hf["1"]["unsteered"], "hf_tps_1_steered": hf["1"]["steered"],
        "hf_tps_16": hf["16"]["unsteered"], "hf_tps_16_steered": hf["16"]["steered"],
        "vllm_tps_1": vllm["1"]["unsteered"], "vllm_tps_1_steered": vllm["1"]["steered"],
        "vllm_tps_16": vllm["16"]["unsteered"], "vllm_tps_16_steered": vllm["16"]["steered"],
        "vllm_ratio_1": vllm["1"]["ratio"], "vllm_ratio_16": vllm["16"]["ratio"],
        **{f"vllm_ratio_mix{n}": vllm[f"mix{n}"]["ratio"] for n in (16, 64, 256)},
        **{f"vllm_tps_mix{n}": vllm[f"mix{n}"]["steered"] for n in (16, 64, 256)},
        "hf_ratio_1": hf["1"]["ratio"], "hf_ratio_16": hf["16"]["ratio"],
        "vllm_over_hf_16": vllm["16"]["unsteered"] / hf["16"]["unsteered"],
        "vllm_over_hf_16_steered": vllm["16"]["steered"] / hf["16"]["steered"],
        "vllm_compiled": int(not args.vllm_eager),
    }
    print(" ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                   for key, value in figures.items()))


if __name__ == "__main__":
    main()
