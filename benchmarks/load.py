"""Load test: N concurrent clients mixing steered, unsteered and streamed completions for a fixed time against a
real server; prints throughput, latency percentiles and counts by status.

By default it starts its own server on the embedded model with the committed starter bank (so steered requests use
real relations), optionally with a small admission queue, and stops it at the end; ``--url`` targets a running
server instead.

    .venv/bin/python benchmarks/load.py --clients 32 --seconds 60
    .venv/bin/python benchmarks/load.py --clients 32 --seconds 60 --max-queue 4

Every request ends in one of: a 200 (a streamed one only counts as 200 when its ``done`` event arrived), a designed
refusal (429 queue full, 504 waited too long; the client then waits ``Retry-After``, at most 2 s, as a polite
client would), another status, or *lost* (no answer: a transport error, a client timeout, a stream cut short).
The server must give no 5xx and lose nothing. Latency is from sending to the whole answer; for streams also to the
first token. The last line printed holds the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from servers import start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("hot", "big", "fast", "happy", "dark", "old", "strong", "early", "loud", "rich", "soft", "full", "cat",
         "dog", "walk", "run", "France", "Japan", "child", "mouse")
RELATIONS = ("antonym", "singular-plural", "present-past", "country-capital", "capitalize", "synonym")
KINDS = ("unsteered", "steered", "streamed")
CLIENT_TIMEOUT_S = 300.0


@dataclass
class Outcome:
    kind: str
    status: int | str  # an HTTP status, or "lost"
    seconds: float
    first_token_s: float | None = None
    tokens: int = 0


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def by_status(self) -> dict[str, int]:
        return dict(sorted(Counter(str(outcome.status) for outcome in self.outcomes).items()))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def request_body(kind: str, rng: random.Random, max_new_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": f"Q: {rng.choice(WORDS)}\nA:", "max_new_tokens": max_new_tokens,
                            "stop": ["\n"]}
    if kind != "unsteered":
        body["relations"] = {rng.choice(RELATIONS): 1.0}
    if kind == "streamed":
        body["stream"] = True
    return body


async def one_request(client: httpx.AsyncClient, kind: str, body: dict[str, Any]) -> tuple[Outcome, float]:
    """Send one request; returns its outcome and how long the server asked us to wait (Retry-After)."""
    started = time.perf_counter()
    try:
        if kind != "streamed":
            response = await client.post("/complete", json=body)
            seconds = time.perf_counter() - started
            tokens = response.json()["usage"]["completion_tokens"] if response.status_code == 200 else 0
            return Outcome(kind, response.status_code, seconds, tokens=tokens), _retry_after(response)
        first: float | None = None
        async with client.stream("POST", "/complete", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return Outcome(kind, response.status_code, time.perf_counter() - started), _retry_after(response)
            event, done = None, None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                    if event == "token" and first is None:
                        first = time.perf_counter() - started
                elif line.startswith("data: ") and event in ("done", "error"):
                    done = (event, json.loads(line.removeprefix("data: ")))
        seconds = time.perf_counter() - started
        if done is None:
            return Outcome(kind, "lost", seconds, first), 0.0
        if done[0] == "error":
            return Outcome(kind, f"stream-error:{done[1]['error']['type']}", seconds, first), 0.0
        return Outcome(kind, 200, seconds, first, done[1]["usage"]["completion_tokens"]), 0.0
    except (httpx.HTTPError, ValueError, KeyError):
        return Outcome(kind, "lost", time.perf_counter() - started), 0.0


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("retry-after", 0))
    except ValueError:
        return 0.0


async def client_loop(index: int, url: str, until: float, tally: Tally, max_new_tokens: int) -> None:
    rng = random.Random(index)
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        while time.monotonic() < until:
            kind = rng.choice(KINDS)
            outcome, wait = await one_request(client, kind, request_body(kind, rng, max_new_tokens))
            tally.outcomes.append(outcome)
            if wait:
                await asyncio.sleep(min(wait, 2.0, max(0.0, until - time.monotonic())))


def summarize(tally: Tally, seconds: float, clients: int, metrics_text: str) -> dict[str, Any]:
    ok = [outcome for outcome in tally.outcomes if outcome.status == 200]
    latencies = [outcome.seconds for outcome in ok]
    statuses = tally.by_status()
    server_errors = sum(count for status, count in statuses.items() if status.isdigit() and int(status) >= 500)
    summary: dict[str, Any] = {
        "clients": clients, "seconds": round(seconds, 1), "requests": len(tally.outcomes), "by_status": statuses,
        "server_errors": server_errors, "lost": statuses.get("lost", 0),
        "throughput_rps": round(len(ok) / seconds, 2), "tokens_per_s": round(sum(o.tokens for o in ok) / seconds, 1),
        "latency_s": {f"p{q}": _round(percentile(latencies, q)) for q in (50, 95, 99)},
        "by_kind": {},
        "server": {name: _metric(metrics_text, name) for name in (
            "fvsteer_queue_rejected_total", "fvsteer_queue_timeouts_total",
            'fvsteer_rows_finished_total{reason="timeout"}',
            "fvsteer_engine_failed_steps_total")},
    }
    for kind in KINDS:
        mine = [outcome for outcome in tally.outcomes if outcome.kind == kind]
        done = [outcome.seconds for outcome in mine if outcome.status == 200]
        entry: dict[str, Any] = {"requests": len(mine), "ok": len(done),
                                 "latency_s": {f"p{q}": _round(percentile(done, q)) for q in (50, 95, 99)}}
        if kind == "streamed":
            firsts = [o.first_token_s for o in mine if o.status == 200 and o.first_token_s is not None]
            entry["first_token_s"] = {f"p{q}": _round(percentile(firsts, q)) for q in (50, 95)}
        summary["by_kind"][kind] = entry
    return summary


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


async def run(url: str, clients: int, seconds: float, max_new_tokens: int) -> dict[str, Any]:
    tally = Tally()
    started = time.monotonic()
    await asyncio.gather(*(client_loop(i, url, started + seconds, tally, max_new_tokens) for i in range(clients)))
    elapsed = time.monotonic() - started  # includes finishing the requests in flight at the end
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        metrics_text = (await client.get("/metrics")).text
    return summarize(tally, elapsed, clients, metrics_text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start one on the embedded model)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-queue", type=int, help="FVSTEER_MAX_QUEUE of the server started here")
    parser.add_argument("--max-batch", type=int, help="FVSTEER_MAX_BATCH of the server started here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        process = None
        url = args.url
        if url is None:
            env = {"FVSTEER_ADMIN_TOKEN": secrets.token_hex(8)}
            if args.max_queue is not None:
                env["FVSTEER_MAX_QUEUE"] = str(args.max_queue)
            if args.max_batch is not None:
                env["FVSTEER_MAX_BATCH"] = str(args.max_batch)
            process, url = start_server(Path(workdir), env)
        try:
            summary = asyncio.run(run(url, args.clients, args.seconds, args.max_new_tokens))
        finally:
            if process is not None:
                stop_server(process)
    summary["max_queue"] = args.max_queue
    print(f"{summary['requests']} requests from {args.clients} clients in {summary['seconds']} s: "
          f"{summary['throughput_rps']} answers/s, {summary['tokens_per_s']} tokens/s")
    print(f"by status: {summary['by_status']}  (5xx: {summary['server_errors']}, lost: {summary['lost']})")
    print(f"latency of 200s: {summary['latency_s']}")
    for kind, entry in summary["by_kind"].items():
        print(f"  {kind}: {entry}")
    print(f"server counters: {summary['server']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
