"""Fine-tuning on the embedded model, through a real server: how long a 20-pair job takes, and what a training
job costs the completions that run beside it on the one engine.

It starts its own server (throwaway registry) and, side by side in one run:

  (a) times ``--requests`` unsteered greedy completions of ``--tokens`` tokens, one after another, engine idle;
  (b) runs a fine-tuning job on 20 pairs alone and reads its phase times (mediation init, training);
  (c) runs the same job again (another name) and, while it trains, times the same completions as (a).

(a) and (c) alternate over ``--rounds`` rounds so machine drift falls on both. The last line holds
``key=value`` figures: the job's seconds, and p50/p95 completion latency idle and during training, with ratios.

    .venv/bin/python benchmarks/finetune.py [--relation antonym] [--rounds 2]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import threading
import time
from pathlib import Path

from fv_report import start_server
from fvsteer_client import Client, Job

from app.fv.pairs import relation_pairs, split_pairs

PROMPTS = ["The weather today is", "My favourite book is about", "In the morning I usually", "The city at night",
           "A good teacher always", "The recipe needs", "On the weekend we", "The old house had"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latencies(client: Client, n: int, tokens: int, stop: threading.Event | None = None) -> list[float]:
    out: list[float] = []
    for index in range(n):
        if stop is not None and stop.is_set():
            break
        started = time.perf_counter()
        client.complete(PROMPTS[index % len(PROMPTS)], max_new_tokens=tokens)
        out.append(time.perf_counter() - started)
    return out


def wait_training(client: Client, job: Job) -> None:
    while client.get_job(job).phase != "training":
        time.sleep(0.05)


def follow(client: Client, job: Job, done: threading.Event) -> None:
    client.wait_for_job(job)
    done.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relation", default="antonym", help="20 of its training pairs are fine-tuned on")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    pairs = [{"input": p.input, "output": p.output} for p in split_pairs(relation_pairs(args.relation), 0).train[:20]]
    token = secrets.token_hex(8)
    idle: list[float] = []
    busy: list[float] = []
    job_seconds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as workdir:
        process, url = start_server(Path(workdir), token)
        try:
            with Client(url, admin_token=token, timeout=600) as client:
                latencies(client, 2, args.tokens)  # warm-up
                for round_ in range(args.rounds):
                    idle += latencies(client, args.requests, args.tokens)
                    started = time.perf_counter()
                    alone = client.wait_for_job(client.finetune(f"alone-{round_}", pairs=pairs))
                    wall = time.perf_counter() - started
                    seconds = (alone.result or {})["metrics"]["seconds"]
                    job_seconds.append({"wall": wall, **seconds})
                    print(f"round {round_}: job alone {wall:.1f} s {seconds}", flush=True)
                    job = client.finetune(f"busy-{round_}", pairs=pairs)
                    wait_training(client, job)
                    done = threading.Event()
                    waiter = threading.Thread(target=follow, args=(client, job, done))
                    waiter.start()
                    during = latencies(client, args.requests, args.tokens, stop=done)
                    busy += during
                    waiter.join()
                    print(f"round {round_}: {len(during)} completions while training", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    figures = {
        "pairs": len(pairs),
        "job_wall_s": statistics.mean(item["wall"] for item in job_seconds),
        "init_s": statistics.mean(item["init"] for item in job_seconds),
        "training_s": statistics.mean(item["training"] for item in job_seconds),
        "idle_p50_s": percentile(idle, 0.5), "idle_p95_s": percentile(idle, 0.95),
        "training_p50_s": percentile(busy, 0.5), "training_p95_s": percentile(busy, 0.95),
        "n_idle": len(idle), "n_training": len(busy),
    }
    figures["p50_ratio"] = figures["training_p50_s"] / figures["idle_p50_s"]
    figures["p95_ratio"] = figures["training_p95_s"] / figures["idle_p95_s"]
    print(" ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                   for key, value in figures.items()))


if __name__ == "__main__":
    main()
