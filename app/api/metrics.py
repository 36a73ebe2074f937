"""Prometheus metrics: HTTP requests by route and status with latency histograms (recorded by the request
middleware), and the engine, cache and job counters read from the running services at scrape time.

Each app has its own registry, so several apps in one process (tests) never share counters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from app.errors import FvsteerError
from app.runtime import Runtime

# Seconds: from a cached probe (ms) to a long generation or an upload (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("fvsteer_http_requests", "HTTP requests answered, by route template and status.",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("fvsteer_http_request_duration_seconds",
                                 "Time from the request's arrival to the end of its response body.",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("fvsteer_http_in_flight", "Requests being answered now (probes excluded).",
                               registry=registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


class RuntimeCollector(Collector):
    """Reads the engine's, the cache's and the job manager's own counters when Prometheus scrapes."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        yield _gauge("fvsteer_ready", "1 when the model is loaded and warm and the server takes new work.",
                     int(runtime.state == "ready"))
        yield _gauge("fvsteer_draining", "1 after SIGTERM, while in-flight requests finish.", int(runtime.draining))
        services = runtime.loaded_services()
        if services is None:
            return
        stats = services.backend.stats
        batch_sizes = dict(stats.batch_sizes)  # one copy: the engine thread may add a size meanwhile
        steps = CounterMetricFamily("fvsteer_decode_steps", "Forward passes of the engine, by rows in the batch.",
                                    labels=["batch_size"])
        for size, count in sorted(batch_sizes.items()):
            steps.add_metric([str(size)], count)
        yield steps
        yield _batch_histogram(batch_sizes)
        yield _counter("fvsteer_tokens_generated", "Tokens generated.", stats.tokens_generated)
        finished = CounterMetricFamily("fvsteer_rows_finished", "Generation rows finished, by finish reason.",
                                       labels=["reason"])
        for reason in ("stop", "length", "timeout", "cancelled"):
            finished.add_metric([reason], stats.finished[reason])
        yield finished
        yield _counter("fvsteer_requests_finished", "Generation rows finished (any reason).", stats.requests_finished)
        yield _counter("fvsteer_queue_rejected", "Requests refused with 429 because the queue was full.",
                       stats.rejected)
        yield _counter("fvsteer_queue_timeouts", "Requests refused with 504 after waiting too long for a slot.",
                       stats.queue_timeouts)
        yield _counter("fvsteer_engine_failed_steps", "Engine steps that failed (their rows got an error).",
                       stats.failed_steps)
        yield _counter("fvsteer_engine_failed_rows", "Rows that failed alone while the rest of their batch went on.",
                       stats.failed_rows)
        yield _counter("fvsteer_engine_tasks", "Model forwards of jobs, evaluations and analogies run by the engine.",
                       stats.tasks_run)
        yield _gauge("fvsteer_queue_depth", "Requests waiting for a batch slot.", stats.queue_depth)
        yield _gauge("fvsteer_active_rows", "Rows in the running batch.", stats.active_rows)
        cache = services.cache
        outcomes = CounterMetricFamily("fvsteer_head_mean_cache", "Head-mean cache lookups by outcome.",
                                       labels=["outcome"])
        for outcome, value in (("hit", cache.stats.hits), ("miss", cache.stats.misses),
                               ("error", cache.stats.errors)):
            outcomes.add_metric([outcome], value)
        yield outcomes
        yield _gauge("fvsteer_head_mean_cache_degraded", "1 when Redis is configured but not answering.",
                     int(cache.status() == "degraded"))
        try:
            counts = services.jobs.counts()
        except FvsteerError:  # the job queue's Redis is not answering: no job figures in this scrape
            return
        jobs = GaugeMetricFamily("fvsteer_jobs", "Jobs by state.", labels=["state"])
        for state, count in counts.items():
            jobs.add_metric([state], count)
        yield jobs
        yield _gauge("fvsteer_job_queue_depth", "Jobs waiting for a worker (an autoscaling signal for workers).",
                     counts["queued"])


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _batch_histogram(batch_sizes: dict[int, int]) -> HistogramMetricFamily:
    """Rows per forward pass as a histogram (powers of two up to 512, the largest ``FVSTEER_MAX_BATCH``)."""
    bounds = [2**i for i in range(10)]
    buckets = [(str(bound), sum(n for size, n in batch_sizes.items() if size <= bound)) for bound in bounds]
    buckets.append(("+Inf", sum(batch_sizes.values())))
    total = sum(size * n for size, n in batch_sizes.items())
    return HistogramMetricFamily("fvsteer_batch_size", "Rows per forward pass of the engine.",
                                 buckets=buckets, sum_value=total)


def make_registry(runtime: Runtime) -> tuple[CollectorRegistry, HttpMetrics]:
    registry = CollectorRegistry(auto_describe=False)
    http = HttpMetrics(registry)
    registry.register(RuntimeCollector(runtime))
    return registry, http
