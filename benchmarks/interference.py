"""How much a heavy scoring request slows an innocent completion: the latency of an 8-token completion alone,
then while the heaviest ``/score`` the limits allow runs (32 continuations, each as long as a prompt may be,
steered), then while a steered ``echo`` of the longest prompt runs, then once those were abandoned.

Scoring goes through the model in slices that the engine interleaves with decoding (app/model/logprobs.py,
CHUNK_TOKENS), so the completion should wait for one slice at most, not for the whole scoring; before that change a
steered echo moved an 8-token completion from 0.36 s to 10.7 s. Target: within 2x of alone.

    .venv/bin/python benchmarks/interference.py      # the embedded model and the committed starter bank; ~10 min

Figures are medians of ``--repeats`` completions, ratios from this one run (the machine is shared: absolute times
drift between runs). Results: benchmarks/results/interference.json and a key=value line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from servers import ROOT, start_server, stop_server

PROBE = {"prompt": "Q: hot\nA:", "max_new_tokens": 8, "temperature": 0.0}
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank. "


async def latency(client: httpx.AsyncClient, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = await client.post("/complete", json=PROBE)
        response.raise_for_status()
        times.append(time.perf_counter() - started)
    return times


async def longest_text(client: httpx.AsyncClient, budget: int) -> str:
    """Text that tokenizes to at most ``budget`` tokens, as close to it as whole sentences get."""
    per = len((await client.post("/tokenize", json={"prompt": SENTENCE})).json()["tokens"])
    return SENTENCE * (budget // per)


async def while_running(client: httpx.AsyncClient, heavy: Any, repeats: int) -> tuple[list[float], float]:
    """Latencies while ``heavy`` runs (started first, given 3 s to reach the engine), then abandoned; and how long
    the engine took to be free again after the abandonment (the first probe's latency)."""
    task = asyncio.ensure_future(heavy)
    await asyncio.sleep(3.0)
    if task.done():
        raise RuntimeError(f"the heavy request ended before the probes: {task.result().text[:300]}")
    times = await latency(client, repeats)
    assert not task.done(), "the heavy request finished during the probes: the figures are not under load"
    task.cancel()  # the client leaves: its slices stop at the next one
    await asyncio.sleep(0.5)
    after = await latency(client, 1)
    return times, after[0]


async def measure(url: str, repeats: int, max_prompt_tokens: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        alone = await latency(client, repeats)
        # The heaviest /score the limits allow: 32 continuations of up to 1,000 characters each after a prompt
        # that fills the rest of the prompt limit, so every row is as long as a prompt may be.
        continuation = SENTENCE * (990 // len(SENTENCE))
        per = len((await client.post("/tokenize", json={"prompt": continuation})).json()["tokens"])
        text = await longest_text(client, max_prompt_tokens - per - 16)
        score = {"prompt": text, "continuations": [f"{continuation}{i}" for i in range(32)],
                 "relations": {"antonym": 1.0}}
        info = (await client.get("/v1/models")).json()["data"][0]["id"]
        echo = {"model": f"{info}+antonym", "prompt": text, "max_tokens": 1, "echo": True, "logprobs": 1}
        async with httpx.AsyncClient(base_url=url, timeout=3600) as heavy_client:
            under_score, after_score = await while_running(client, heavy_client.post("/score", json=score), repeats)
        async with httpx.AsyncClient(base_url=url, timeout=3600) as heavy_client:
            under_echo, after_echo = await while_running(
                client, heavy_client.post("/v1/completions", json=echo), repeats)
    median = statistics.median
    return {
        "alone_s": median(alone), "under_score_s": median(under_score), "under_echo_s": median(under_echo),
        "score_ratio": median(under_score) / median(alone), "echo_ratio": median(under_echo) / median(alone),
        "after_abandoned_score_s": after_score, "after_abandoned_echo_s": after_echo,
        "repeats": repeats, "continuations": 32, "tokens_per_row_at_most": max_prompt_tokens,
        "samples": {"alone": alone, "under_score": under_score, "under_echo": under_echo},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "interference.json")
    args = parser.parse_args()
    max_prompt_tokens = 2048
    with tempfile.TemporaryDirectory() as workdir:
        process, url = start_server(Path(workdir), {"FVSTEER_MAX_PROMPT_TOKENS": str(max_prompt_tokens),
                                                    "FVSTEER_REQUEST_TIMEOUT_S": "3600"})
        try:
            figures = asyncio.run(measure(url, args.repeats, max_prompt_tokens))
        finally:
            stop_server(process)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(" ".join(f"{key}={value:.3f}" for key, value in figures.items() if isinstance(value, float)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
