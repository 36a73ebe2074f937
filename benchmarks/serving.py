"""Serving throughput of a running fvsteer server: steered vs unsteered, batched vs one at a time.

Run it against a server that is already up, on the embedded model:

    make serve                                               # in one shell
    FVSTEER_ADMIN_TOKEN=... .venv/bin/python benchmarks/serving.py   # in another

(the server must have been started with the same ``FVSTEER_ADMIN_TOKEN``: the benchmark uploads vectors).

What it measures, side by side in one run, as tokens/s = sum of ``usage.completion_tokens`` / wall time:

  (a) unsteered, one client, requests one after another;
  (b) steered, one client, the same prompts, each with a composite of three vectors;
  (c) ``--concurrency`` clients at once (one asyncio.gather), each request with its own weight mix;
  (d) the same requests as (c), one after another.

(a) and (b) alternate over ``--rounds`` rounds, as do (c) and (d), and their figures are summed, so that
drift of the machine (thermal, other load) falls on both sides alike. b/a is the cost of steering;
c/d is what batching concurrent requests buys.

The three vectors ``bench-a``, ``bench-b``, ``bench-c`` are seeded random directions of norm
``--vector-norm`` uploaded through ``POST /admin/vectors`` and deleted again at the end. They steer
towards nothing in particular: this benchmark measures throughput, not science.

Correctness on the fly: every request is greedy, so each concurrent (c) response must equal the same
request's (d) response, produced alone (docs/architecture.md, "Steering semantics": batch-vs-alone
identity). Differences are counted and reported as ``mismatches``.

The last line printed holds the figures as ``key=value`` pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from safetensors.numpy import save as save_safetensors

WORDS = (
    "hot", "big", "fast", "happy", "dark", "old", "strong", "early",
    "loud", "rich", "soft", "full", "wet", "high", "light", "young",
)  # fmt: skip
VECTOR_NAMES = ("bench-a", "bench-b", "bench-c")
STEERED_MIX = (1.0, 0.5, -0.5)
DEFAULT_D_MODEL = 576  # SmolLM2-135M
DEFAULT_LAYER = 9  # of its 30 blocks: about a third of the way in, where function vectors act


class BenchmarkError(RuntimeError):
    """The server refused or failed a request the benchmark needs."""


@dataclass
class Measure:
    """Requests, tokens and wall time of one kind of run, summed over rounds."""

    label: str
    requests: int = 0
    tokens: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def add(self, results: list[Completion], seconds: float) -> None:
        self.requests += len(results)
        self.tokens += sum(result.tokens for result in results)
        self.seconds += seconds
        self.latencies.extend(result.latency for result in results)

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_latency(self) -> float:
        return sum(self.latencies) / len(self.latencies) if self.latencies else 0.0


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    latency: float


def describe_error(response: httpx.Response) -> str:
    """The server's error envelope as one line, or the raw body when it is not one."""
    try:
        error = response.json()["error"]
        param = f" (param: {error['param']})" if error.get("param") else ""
        return f"HTTP {response.status_code} {error['type']}: {error['message']}{param}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:300]}"


def check(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code >= 400:
        raise BenchmarkError(f"{what}: {describe_error(response)}")
    return response


def wait_ready(client: httpx.Client, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = client.get("/readyz")
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1.0)
    raise BenchmarkError(f"server not ready after {timeout_s:.0f} s ({last}); is it running at {client.base_url}?")


def _items(payload: Any) -> list[Any]:
    """A listing's items, whether the server answers a bare list or wraps it in an object."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        for key in ("vectors", "data", "items"):
            if isinstance(payload.get(key), list):
                return list(payload[key])
    return []


def discover_d_model(client: httpx.Client) -> int | None:
    """The model's width from the metadata of any registered vector; None when there is none to read."""
    for path in ("/admin/vectors", "/vectors"):
        response = client.get(path)
        if response.status_code != 200:
            continue
        for item in _items(response.json()):
            meta = item.get("metadata", item) if isinstance(item, dict) else {}
            value = meta.get("d_model") if isinstance(meta, dict) else None
            if value is not None:
                return int(value)
    return None


def vector_file(name: str, d_model: int, norm: float, seed: int) -> bytes:
    """A safetensors file holding one float32 ``vector``: a seeded random direction scaled to ``norm``."""
    rng = np.random.default_rng([seed, VECTOR_NAMES.index(name)])
    vector = rng.standard_normal(d_model).astype(np.float32)
    vector *= np.float32(norm / float(np.linalg.norm(vector)))
    return save_safetensors({"vector": vector})


def delete_vectors(client: httpx.Client) -> None:
    for name in VECTOR_NAMES:
        response = client.delete(f"/admin/vectors/{name}")
        if response.status_code not in (200, 202, 204, 404):
            check(response, f"DELETE /admin/vectors/{name}")


def upload_vectors(client: httpx.Client, d_model: int, layer: int, norm: float, seed: int) -> None:
    for name in VECTOR_NAMES:
        blob = vector_file(name, d_model, norm, seed)
        response = client.post(
            "/admin/vectors",
            files={"file": (f"{name}.safetensors", blob, "application/octet-stream")},
            data={"name": name, "layer": str(layer), "relation": name},
        )
        check(response, f"POST /admin/vectors ({name}, d_model={d_model}, layer={layer})")


def request_body(word: str, mix: tuple[float, ...] | None, max_new_tokens: int) -> dict[str, Any]:
    relations = {} if mix is None else dict(zip(VECTOR_NAMES, mix, strict=True))
    return {
        "prompt": f"Q: {word}\nA:",
        "relations": relations,
        "max_new_tokens": max_new_tokens,
        "temperature": 0.0,
        "stop": [],
    }


def parse_completion(response: httpx.Response, body: dict[str, Any], latency: float) -> Completion:
    check(response, f"POST /complete ({body['prompt']!r}, relations={body['relations']})")
    payload = response.json()
    if body["relations"] and not payload.get("steering"):
        raise BenchmarkError(f"steering was asked for and the response reports none: {payload}")
    return Completion(payload["text"], int(payload["usage"]["completion_tokens"]), latency)


def complete(client: httpx.Client, body: dict[str, Any]) -> Completion:
    started = time.perf_counter()
    response = client.post("/complete", json=body)
    return parse_completion(response, body, time.perf_counter() - started)


async def complete_async(client: httpx.AsyncClient, body: dict[str, Any]) -> Completion:
    started = time.perf_counter()
    response = await client.post("/complete", json=body)
    return parse_completion(response, body, time.perf_counter() - started)


def run_sequential(client: httpx.Client, bodies: list[dict[str, Any]]) -> tuple[list[Completion], float]:
    started = time.perf_counter()
    results = [complete(client, body) for body in bodies]
    return results, time.perf_counter() - started


async def _gather(url: str, bodies: list[dict[str, Any]], timeout: httpx.Timeout) -> tuple[list[Completion], float]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, trust_env=False) as client:
        # Open the connections first so that (c) times generation, not TCP handshakes.
        await asyncio.gather(*(client.get("/healthz") for _ in bodies))
        started = time.perf_counter()
        results = await asyncio.gather(*(complete_async(client, body) for body in bodies))
        return list(results), time.perf_counter() - started


def run_concurrent(url: str, bodies: list[dict[str, Any]], timeout: httpx.Timeout) -> tuple[list[Completion], float]:
    return asyncio.run(_gather(url, bodies, timeout))


def weight_mixes(count: int, seed: int) -> list[tuple[float, ...]]:
    """One distinct weight mix per concurrent request, in [-1, 1], none of them zero."""
    rng = np.random.default_rng([seed, 1000])
    mixes: list[tuple[float, ...]] = []
    while len(mixes) < count:
        weights = tuple(round(float(w), 2) for w in rng.uniform(-1.0, 1.0, size=len(VECTOR_NAMES)))
        if all(abs(w) >= 0.05 for w in weights) and weights not in mixes:
            mixes.append(weights)
    return mixes


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def print_report(measures: list[Measure], mismatches: int, compared: int) -> None:
    unsteered, steered, concurrent, sequential = measures
    print()
    print(f"{'run':<40} {'requests':>8} {'tokens':>8} {'seconds':>9} {'tokens/s':>9} {'latency s':>10}")
    for m in measures:
        print(f"{m.label:<40} {m.requests:>8} {m.tokens:>8} {m.seconds:>9.2f} {m.tps:>9.2f} {m.mean_latency:>10.3f}")
    b_over_a = ratio(steered.tps, unsteered.tps)
    c_over_d = ratio(concurrent.tps, sequential.tps)
    print()
    print(f"steered / unsteered (b/a):       {b_over_a:.3f}")
    print(f"concurrent / sequential (c/d):   {c_over_d:.3f}")
    print(f"batch-vs-alone text mismatches:  {mismatches} of {compared}")
    if mismatches:
        print("WARNING: greedy outputs differed between batched and alone runs (a steering invariant)")
    print(
        f"unsteered_tps={unsteered.tps:.3f} steered_tps={steered.tps:.3f} "
        f"concurrent_tps={concurrent.tps:.3f} sequential_tps={sequential.tps:.3f} "
        f"steered_over_unsteered={b_over_a:.3f} concurrent_over_sequential={c_over_d:.3f} "
        f"mismatches={mismatches}"
    )


def benchmark(args: argparse.Namespace) -> None:
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    headers = {"Authorization": f"Bearer {args.token}"}
    with httpx.Client(base_url=args.url, timeout=timeout, headers=headers, trust_env=False) as client:
        wait_ready(client, args.ready_timeout)
        d_model = args.d_model or discover_d_model(client) or DEFAULT_D_MODEL
        print(f"server {args.url}: d_model={d_model}, vectors at layer {args.layer}, norm {args.vector_norm}")
        delete_vectors(client)
        try:
            upload_vectors(client, d_model, args.layer, args.vector_norm, args.seed)
            measures, mismatches, compared = measure(client, args, timeout)
        finally:
            delete_vectors(client)
    print_report(measures, mismatches, compared)


def measure(client: httpx.Client, args: argparse.Namespace, timeout: httpx.Timeout) -> tuple[list[Measure], int, int]:
    words = [WORDS[i % len(WORDS)] for i in range(args.requests)]
    unsteered_bodies = [request_body(word, None, args.max_new_tokens) for word in words]
    steered_bodies = [request_body(word, STEERED_MIX, args.max_new_tokens) for word in words]
    mixes = weight_mixes(args.concurrency, args.seed)
    mixed_bodies = [request_body(WORDS[i % len(WORDS)], mix, args.max_new_tokens) for i, mix in enumerate(mixes)]

    # Warm-up: first requests pay for lazy initialisation on both paths; they are not counted.
    complete(client, unsteered_bodies[0])
    complete(client, steered_bodies[0])

    unsteered = Measure(f"(a) unsteered, 1 client, {args.requests} req")
    steered = Measure(f"(b) steered (3 vectors), 1 client, {args.requests} req")
    concurrent = Measure(f"(c) {args.concurrency} clients at once")
    sequential = Measure(f"(d) the same {args.concurrency}, one by one")
    mismatches = compared = 0
    for round_index in range(args.rounds):
        # Alternate which side goes first, so that neither always runs on a warmer or cooler machine.
        flip = round_index % 2 == 1
        pair = [(unsteered_bodies, unsteered), (steered_bodies, steered)]
        for bodies, target in reversed(pair) if flip else pair:
            target.add(*run_sequential(client, bodies))
        if flip:
            together, together_s = run_concurrent(args.url, mixed_bodies, timeout)
            alone, alone_s = run_sequential(client, mixed_bodies)
        else:
            alone, alone_s = run_sequential(client, mixed_bodies)
            together, together_s = run_concurrent(args.url, mixed_bodies, timeout)
        concurrent.add(together, together_s)
        sequential.add(alone, alone_s)
        for index, (batched, single) in enumerate(zip(together, alone, strict=True)):
            compared += 1
            if batched.text != single.text:
                mismatches += 1
                print(
                    f"mismatch (round {round_index}, request {index}, mix {mixes[index]}): "
                    f"batched {batched.text!r} vs alone {single.text!r}"
                )
        print(
            f"round {round_index + 1}/{args.rounds}: a {unsteered.tps:.1f}, b {steered.tps:.1f}, "
            f"c {concurrent.tps:.1f}, d {sequential.tps:.1f} tokens/s (cumulative)"
        )
    return [unsteered, steered, concurrent, sequential], mismatches, compared


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the running server")
    parser.add_argument(
        "--token",
        default=os.environ.get("FVSTEER_ADMIN_TOKEN"),
        help="admin token for uploading the benchmark vectors (default: $FVSTEER_ADMIN_TOKEN)",
    )
    parser.add_argument("--requests", type=int, default=16, help="requests per round in (a) and (b)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests sent at once in (c)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (a)/(b) and (c)/(d), summed")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--layer", type=int, default=DEFAULT_LAYER, help="layer of the benchmark vectors")
    parser.add_argument(
        "--d-model",
        type=int,
        default=None,
        help=f"model width (default: read from the registry, else {DEFAULT_D_MODEL})",
    )
    parser.add_argument("--vector-norm", type=float, default=4.0, help="norm of each random benchmark vector")
    parser.add_argument("--seed", type=int, default=0, help="seed of the vectors and of the weight mixes")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one response")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for /readyz")
    args = parser.parse_args(argv)
    for name in ("requests", "concurrency", "rounds", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.token:
        parser.error("an admin token is needed to upload the benchmark vectors: set FVSTEER_ADMIN_TOKEN or --token")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        benchmark(args)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"benchmark failed: {args.url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
